"""Continuing from an earlier job: a new job's `model` may be one of the account's
`fine_tuned_model` names (a succeeded job's final adapter) or `fine_tuned_model_checkpoint`
names (a checkpoint of a job), as with OpenAI. The base model and the adapter's shape come
from that job; the worker starts the new job's LoRA (and CRMA) from those weights with a
fresh optimizer (crma_core.warm_start), and the new job trains, and is billed for, its own
tokens only.

Another account's job is the same 404 `model_not_found` as a name that does not exist."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Artifact, Checkpoint, Job
from app.db.session import session_scope
from app.domain.errors import InvalidRequest, NotFound
from app.domain.job_options import (
    checkpoint_model_name,
    fine_tuned_model_name,
    parse_fine_tuned_model,
)
from app.domain.job_settings import AdapterSettings, StartingAdapter, load_job_settings
from app.services.pagination import find_owned
from app.storage.base import ObjectStore, download_prefix

# The bundle files that make the trained model (not the plots, metrics or model card).
ADAPTER_FILES = ("lora/adapter_config.json", "lora/adapter_model.safetensors",
                  "crma.safetensors", "crma_config.json")


@dataclass(frozen=True)
class AdapterSource:
    start: StartingAdapter
    base_model: str
    adapter: AdapterSettings


def names_a_fine_tuned_model(model: str) -> bool:
    return model.startswith("ft:")


def _not_found(model: str) -> NotFound:
    return NotFound(f"The model {model!r} does not exist, or is not one of your fine-tuned "
                    "models or checkpoints.", param="model", code="model_not_found")


def resolve_source(session: Session, *, account_id: str, model: str) -> AdapterSource:
    """The job (and checkpoint) that `model` names, checked to be the caller's and usable."""
    parsed = parse_fine_tuned_model(model)
    if parsed is None:
        raise _not_found(model)
    job_id, step = parsed
    job = find_owned(session, Job, account_id, job_id)
    if job is None or job.kind != "fine_tune":
        raise _not_found(model)
    name = job.fine_tuned_model or fine_tuned_model_name(
        model=job.model, account_id=job.account_id, suffix=job.suffix, job_id=job.id)
    if model != (name if step is None else checkpoint_model_name(name, step)):
        raise _not_found(model)
    if step is None and job.status != "succeeded":
        raise InvalidRequest(
            f"{model} is the fine-tuned model of job {job.id}, which is {job.status}: it "
            "exists once the job succeeded. Continue from one of its checkpoints instead "
            f"(GET /v1/fine_tuning/jobs/{job.id}/checkpoints).",
            param="model", code="model_not_ready")
    if step is not None and session.scalar(select(Checkpoint.id).where(
            Checkpoint.job_id == job.id, Checkpoint.step == step)) is None:
        raise _not_found(model)
    return AdapterSource(
        start=StartingAdapter(name=model, job_id=job.id, checkpoint_step=step),
        base_model=job.model, adapter=load_job_settings(job.settings).adapter)


def adapter_for(source: AdapterSource, requested: Mapping[str, Any] | None) -> dict[str, Any]:
    """The continued job's adapter: the source's. Fields the request sets explicitly must
    equal the source's (a 400 names the first that differs)."""
    inherited = source.adapter.model_dump()
    for field, value in (requested or {}).items():
        if field in inherited and value != inherited[field]:
            raise InvalidRequest(
                f"adapter.{field}={value!r} differs from {inherited[field]!r}, the adapter of "
                f"{source.start.name}: a job continued from it keeps its adapter (omit "
                "`adapter`, or repeat its values).",
                param=f"adapter.{field}", code="adapter_mismatch")
    return inherited


def download_start(store: ObjectStore, *, database_url: str, account_id: str,
                   start: StartingAdapter, target: Path) -> Path:
    """The starting adapter's files in `target`: the checkpoint's directory, or the source
    job's published adapter (lora/ and the CRMA files)."""
    if start.checkpoint_step is None:
        return download_adapter(store, database_url=database_url, account_id=account_id,
                                job_id=start.job_id, target=target)
    with session_scope(database_url) as session:
        prefix = session.scalar(select(Checkpoint.storage_prefix).where(
            Checkpoint.job_id == start.job_id, Checkpoint.step == start.checkpoint_step))
    if prefix is None:
        raise FileNotFoundError(f"the checkpoint of {start.name} is no longer stored")
    download_prefix(store, prefix, target)
    return target


def download_adapter(store: ObjectStore, *, database_url: str, account_id: str, job_id: str,
                     target: Path) -> Path:
    """A job's published adapter, the files of its bundle that make the model (lora/ and the
    CRMA files, not the plots or metrics), in `target`."""
    with session_scope(database_url) as session:
        rows = session.execute(select(Artifact.name, Artifact.storage_key).where(
            Artifact.account_id == account_id, Artifact.owner_id == job_id,
            Artifact.name.in_(ADAPTER_FILES))).all()
    if not any(row.name == "lora/adapter_model.safetensors" for row in rows):
        raise FileNotFoundError(f"the adapter of {job_id} is no longer stored")
    for row in rows:
        path = target / row.name
        path.parent.mkdir(parents=True, exist_ok=True)
        store.get_to_file(row.storage_key, path)
    return target
