"""What a completion's `model` names, and where the engine finds its adapter.

- a catalog id: the base model (no adapter);
- a succeeded job's `fine_tuned_model` (ft:<base>:<org>[:<suffix>]:<job id>): the LoRA and
  CRMA of its published bundle;
- a checkpoint's `fine_tuned_model_checkpoint` (...:ckpt-step-<n>): the serving export the
  worker writes into every checkpoint (`serving/lora` + `serving/crma.*`);
- a continual run's `fine_tuned_model` (ft:<base>:<org>:<run id>): one adapter per domain,
  read from the run's bundle manifest (each domain's LoRA and the CRMA state that serves
  it); a request's `domain` picks one, otherwise the engine routes among them.

An adapter is given to the engine as {id, location, lora, crma}: `location` is the owner's
artifact prefix in the object store, `lora` / `crma` the directories inside it (the bundle
files of the latest attempt), and `id` includes the sha256 of the weights, so one id always
means one content (the engine caches adapters by id). Another account's model is the same
404 `model_not_found` as one that does not exist. Torch-free."""

from __future__ import annotations

import hashlib
import json
import posixpath
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Artifact, Checkpoint, ContinualRun, ContinualStage, Job
from app.domain.errors import Conflict, InvalidRequest, NotFound
from app.domain.job_options import (
    checkpoint_model_name,
    fine_tuned_model_name,
    parse_fine_tuned_model,
    run_model_name,
)
from app.services.pagination import find_owned
from app.storage import keys
from app.storage.base import ObjectStore
from crma_core.catalog import CATALOG, CatalogModel

# Where a checkpoint keeps the adapter the engine serves (worker/training.py writes it).
CHECKPOINT_SERVING_DIR = "serving"
LORA_WEIGHTS = "adapter_model.safetensors"
LORA_CONFIG = "adapter_config.json"
CRMA_WEIGHTS = "crma.safetensors"
# A continual domain's routing centroid, in its LoRA folder (crma_core.continual_state's
# CENTROID_FILE; named again here because the API does not import torch).
ROUTE_CENTROID = "route_centroid.safetensors"


@dataclass(frozen=True)
class EngineAdapter:
    """An AdapterSpec of the engine (serving/requests.py), as JSON."""

    id: str
    location: str
    lora: str
    crma: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "location": self.location, "lora": self.lora, "crma": self.crma}


@dataclass(frozen=True)
class Target:
    """What a request runs on: `adapter`, or `routes` (domain -> adapter: the engine picks),
    or neither (the base model)."""

    name: str
    kind: str  # "base" | "fine_tune" | "checkpoint" | "continual_run"
    base_model: CatalogModel
    owned_by: str
    created_at: datetime | None = None
    adapter: EngineAdapter | None = None
    domain: str | None = None
    routes: tuple[tuple[str, EngineAdapter], ...] = field(default_factory=tuple)
    domains: tuple[str, ...] = field(default_factory=tuple)
    source_id: str | None = None  # the job or run

    def engine_fields(self) -> dict[str, Any]:
        if self.adapter is not None:
            return {"adapter": self.adapter.to_dict()}
        if self.routes:
            return {"routes": [{"domain": d, "adapter": a.to_dict()} for d, a in self.routes]}
        return {}


def not_found(model: str) -> NotFound:
    return NotFound(f"The model {model!r} does not exist or you do not have access to it.",
                    param="model", code="model_not_found")


def resolve(session: Session, *, account_id: str, model: str, store: ObjectStore,
            domain: str | None = None) -> Target:
    """The Target of `model` for `account_id` (see the module docstring). Raises NotFound
    (404 model_not_found), Conflict (409 model_not_ready: a job or run with nothing to serve
    yet, naming its status) or InvalidRequest (a `domain` it does not have)."""
    base = CATALOG.get(model)
    if base is not None:
        if domain is not None:
            raise InvalidRequest(f"{model} is a base model: it has no domains (domain is for "
                                 "a continual run's model).", param="domain")
        return Target(name=model, kind="base", base_model=base, owned_by="crma")
    parsed = parse_fine_tuned_model(model)
    if parsed is None:
        raise not_found(model)
    owner_id, step = parsed
    if owner_id.startswith("clrun-") and step is None:
        return _run_target(session, account_id=account_id, model=model, run_id=owner_id,
                           store=store, domain=domain)
    if domain is not None:
        raise InvalidRequest(f"{model} is not a continual run's model: it has no domains.",
                             param="domain")
    job = find_owned(session, Job, account_id, owner_id)
    if job is None or job.kind != "fine_tune" or job.model not in CATALOG:
        raise not_found(model)
    name = job.fine_tuned_model or fine_tuned_model_name(
        model=job.model, account_id=job.account_id, suffix=job.suffix, job_id=job.id)
    common = {"base_model": CATALOG[job.model], "owned_by": job.account_id,
              "source_id": job.id}
    if step is None:
        if model != name:
            raise not_found(model)
        return Target(name=model, kind="fine_tune", created_at=job.finished_at,
                      adapter=_job_adapter(session, job, model), **common)
    if model != checkpoint_model_name(name, step):
        raise not_found(model)
    checkpoint = session.execute(select(Checkpoint).where(
        Checkpoint.job_id == job.id, Checkpoint.step == step)).scalar_one_or_none()
    if checkpoint is None:
        raise not_found(model)
    prefix = checkpoint.storage_prefix.rstrip("/")
    adapter = EngineAdapter(id=f"{job.id}.ckpt-{step}.a{checkpoint.attempt}", location=prefix,
                            lora=f"{CHECKPOINT_SERVING_DIR}/lora", crma=CHECKPOINT_SERVING_DIR)
    return Target(name=model, kind="checkpoint", created_at=checkpoint.created_at,
                  adapter=adapter, **common)


def _not_ready(model: str, what: str, status: str) -> Conflict:
    return Conflict(f"{model} is the model of {what}, which is {status}: it can be called once "
                    "its job succeeded (or call one of its checkpoints).",
                    param="model", code="model_not_ready")


def _job_adapter(session: Session, job: Job, model: str) -> EngineAdapter:
    if job.status != "succeeded":
        raise _not_ready(model, f"job {job.id}", job.status)
    files = _artifact_keys(session, job.account_id, job.id, [
        f"lora/{LORA_CONFIG}", f"lora/{LORA_WEIGHTS}", CRMA_WEIGHTS, "crma_config.json"])
    return _adapter(job.account_id, job.id, files, lora="lora", crma=".", id_prefix=job.id)


def _artifact_keys(session: Session, account_id: str, owner_id: str,
                   names: list[str]) -> dict[str, tuple[str, str]]:
    """name -> (storage key, sha256) of the owner's published files among `names`."""
    rows = session.execute(select(Artifact.name, Artifact.storage_key, Artifact.sha256).where(
        Artifact.account_id == account_id, Artifact.owner_id == owner_id,
        Artifact.name.in_(names))).all()
    return {row.name: (row.storage_key, row.sha256) for row in rows}


def _adapter(account_id: str, owner_id: str, files: dict[str, tuple[str, str]], *, lora: str,
             crma: str | None, id_prefix: str) -> EngineAdapter:
    """The spec of the bundle files `lora`/... and `crma`/... among `files`. Their keys are
    `<owner prefix>/attempt-<n>/<name>`: the directories are given relative to the owner's
    prefix, so a LoRA and a CRMA published by different attempts still resolve."""
    location = keys.artifact_key(account_id, owner_id, "x")[:-2]
    weights = files.get(_join(lora, LORA_WEIGHTS))
    config = files.get(_join(lora, LORA_CONFIG))
    if weights is None or config is None:
        raise Conflict(f"The adapter of {owner_id} is no longer stored.", param="model",
                       code="model_not_ready")
    crma_file = files.get(_join(crma, CRMA_WEIGHTS)) if crma is not None else None
    content = f"{weights[1]}:{crma_file[1] if crma_file else ''}"
    centroid = files.get(_join(lora, ROUTE_CENTROID))
    if centroid is not None:  # the engine caches by id: one id, one content
        content += f":{centroid[1]}"
    digest = hashlib.sha256(content.encode())
    return EngineAdapter(
        id=f"{id_prefix}.{digest.hexdigest()[:16]}", location=location,
        lora=_relative_dir(location, config[0]),
        crma=_relative_dir(location, crma_file[0]) if crma_file else None)


def _join(directory: str, name: str) -> str:
    return name if directory in (".", "") else f"{directory}/{name}"


def _relative_dir(location: str, key: str) -> str:
    return posixpath.dirname(key[len(location) + 1:]) or "."


# -- continual runs --------------------------------------------------------------------------
_manifests: dict[str, dict[str, Any]] = {}
_manifests_lock = threading.Lock()


def _manifest(store: ObjectStore, key: str, sha256: str) -> dict[str, Any]:
    """A run's bundle manifest, cached by its sha256 (a stage that publishes a new one
    overwrites the key but not the digest)."""
    with _manifests_lock:
        hit = _manifests.get(sha256)
    if hit is not None:
        return hit
    data = json.loads(b"".join(store.iter_chunks(key)))
    with _manifests_lock:
        if len(_manifests) > 1024:
            _manifests.clear()
        _manifests[sha256] = data
    return data


def _run_target(session: Session, *, account_id: str, model: str, run_id: str,
                store: ObjectStore, domain: str | None) -> Target:
    run = find_owned(session, ContinualRun, account_id, run_id)
    if run is None or run.model not in CATALOG or model != run_model_name(
            model=run.model, account_id=run.account_id, run_id=run.id):
        raise not_found(model)
    served = _served_domains(session, run, store)
    if not served:
        status = session.scalars(select(Job.status).join(
            ContinualStage, ContinualStage.job_id == Job.id).where(
            ContinualStage.run_id == run.id, ContinualStage.index == 0)).first() or run.status
        raise _not_ready(model, f"continual run {run.id} (its first stage)", status)
    common = {"name": model, "kind": "continual_run", "base_model": CATALOG[run.model],
              "owned_by": run.account_id, "created_at": run.created_at, "source_id": run.id,
              "domains": tuple(served)}
    if domain is not None:
        if domain not in served:
            raise InvalidRequest(
                f"{model} has no domain {domain!r}; its domains are "
                f"{', '.join(repr(d) for d in served)}.", param="domain",
                code="domain_not_found")
        return Target(adapter=served[domain], domain=domain, **common)
    adapters = {a.id for a in served.values()}
    if len(adapters) == 1:  # one adapter for every domain (naive mode, one stage)
        only = next(iter(served))
        return Target(adapter=served[only], domain=only if len(served) == 1 else None,
                      **common)
    return Target(routes=tuple(served.items()), **common)


def _served_domains(session: Session, run: ContinualRun,
                    store: ObjectStore) -> dict[str, EngineAdapter]:
    """domain name -> adapter, from the run's latest published manifest (stages that
    succeeded; a later stage's bundle lists every domain so far)."""
    manifest_row = _artifact_keys(session, run.account_id, run.id, ["manifest.json"])
    if "manifest.json" not in manifest_row:
        return {}
    key, sha = manifest_row["manifest.json"]
    manifest = _manifest(store, key, sha)
    entries = manifest.get("domains") or []
    wanted = []
    for entry in entries:
        wanted += [_join(entry["lora"], name)
                   for name in (LORA_WEIGHTS, LORA_CONFIG, ROUTE_CENTROID)]
        if entry.get("crma"):
            wanted.append(_join(entry["crma"], CRMA_WEIGHTS))
    files = _artifact_keys(session, run.account_id, run.id, wanted)
    return {entry["name"]: _adapter(run.account_id, run.id, files, lora=entry["lora"],
                                    crma=entry.get("crma"),
                                    id_prefix=f"{run.id}.{entry['index']}")
            for entry in entries}


# -- listing -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FineTunedModel:
    id: str
    kind: str  # "fine_tune" | "continual_run"
    base_model: str
    owned_by: str
    created_at: datetime | None
    source_id: str


MAX_LISTED = 1000


def list_fine_tuned(session: Session, *, account_id: str) -> list[FineTunedModel]:
    """The account's callable models: succeeded jobs and continual runs with a succeeded
    stage, newest first (at most MAX_LISTED of each)."""
    jobs = session.execute(
        select(Job.id, Job.model, Job.account_id, Job.suffix, Job.fine_tuned_model,
               Job.finished_at)
        .where(Job.account_id == account_id, Job.kind == "fine_tune",
               Job.status == "succeeded")
        .order_by(Job.finished_at.desc()).limit(MAX_LISTED)).all()
    found = [FineTunedModel(
        id=j.fine_tuned_model or fine_tuned_model_name(
            model=j.model, account_id=j.account_id, suffix=j.suffix, job_id=j.id),
        kind="fine_tune", base_model=j.model, owned_by=j.account_id,
        created_at=j.finished_at, source_id=j.id) for j in jobs]
    runs = session.execute(
        select(ContinualRun.id, ContinualRun.model, ContinualRun.created_at)
        .where(ContinualRun.account_id == account_id,
               ContinualRun.id.in_(select(Job.continual_run_id).where(
                   Job.account_id == account_id, Job.kind == "continual_stage",
                   Job.status == "succeeded")))
        .order_by(ContinualRun.created_at.desc()).limit(MAX_LISTED)).all()
    found += [FineTunedModel(
        id=run_model_name(model=r.model, account_id=account_id, run_id=r.id),
        kind="continual_run", base_model=r.model, owned_by=account_id,
        created_at=r.created_at, source_id=r.id) for r in runs]
    return found
