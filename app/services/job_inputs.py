"""What a job trains on, fetched onto the worker's machine: the base model and the data files
(checkpoints: app/services/attempts.py; a continual run's state: app/services/stages.py).

Base models: the local model store (`resolved_model_store_dir/<id>/`, what `crma models
import` writes) first; otherwise `models/<id>/...` from the object store, downloaded once into
`resolved_worker_cache_dir/models/<id>/` (itself a crma_core ModelStore) and reused by later
jobs. The download lands in a hidden directory renamed into place, so a download killed
half-way is redone, never used; the weights are checked against store.json's sha256.

`model_readiness` is what a worker asks before it claims a job: whether the base model can be
had now, is being installed (the job waits: app/services/model_installs.py), or cannot be
installed."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.base import db_now
from app.db.models import Job
from app.db.session import session_scope
from app.domain.job_state import JobStatus
from app.services import leases, model_installs
from app.services.events import record_event
from app.settings import Settings
from app.storage.base import ObjectStore, download_prefix
from app.storage.factory import open_store
from app.storage.keys import MODEL_STORE_PREFIX


class ModelUnavailable(Exception):
    """The base model is neither in the local model store nor in the object store."""


@dataclass(frozen=True)
class Readiness:
    """`ready` (installed here, cached, or published in the object store), `installing`
    (wait for it), `failed` (its install failed: `error`) or `missing` (nobody installs it)."""

    status: str
    error: str | None = None


def model_readiness(session: Session, *, settings: Settings, store: ObjectStore,
                    model_id: str) -> Readiness:
    from crma_core.model_store import STORE_FILE, ModelStore

    if (ModelStore(settings.resolved_model_store_dir).is_installed(model_id)
            or ModelStore(settings.resolved_worker_cache_dir / "models").is_installed(model_id)
            or store.head(f"{MODEL_STORE_PREFIX}{model_id}/{STORE_FILE}") is not None):
        return Readiness("ready")
    install = model_installs.state(session, model_id=model_id)
    if install is None:
        return Readiness("missing")
    if install.status == model_installs.INSTALLED:
        return Readiness("missing", "it was installed once but is no longer in the store")
    return Readiness(install.status, install.error)


def await_model(settings: Settings, *, job_id: str) -> str | None:
    """Before a worker claims a queued job: None when its base model can be had (or the job
    is not queued: the claim decides), else "waiting" (the model is being installed: a
    `model_wait` event and a delayed re-offer; no attempt is spent) or "failed" (the install
    failed: the job fails with model_unavailable and is not charged)."""
    with session_scope(settings.resolved_database_url) as session:
        job = session.execute(select(Job.model, Job.queue, Job.status)
                              .where(Job.id == job_id)).one_or_none()
        if job is None or job.status != JobStatus.QUEUED.value:
            return None
        readiness = model_readiness(session, settings=settings, store=open_store(settings),
                                    model_id=job.model)
        if readiness.status == model_installs.INSTALLING:
            record_event(
                session, job_id=job_id, dedupe_key="model_wait",
                data={"model": job.model, "model_status": readiness.status},
                message=f"Waiting for the base model {job.model} to be installed on this "
                        "service; the job starts when the install finishes.")
            leases.offer_job(session, job_id=job_id, queue=job.queue,
                             delay_s=settings.model_wait_retry_s,
                             only_if_offered_before=db_now(session))
            return "waiting"
        if readiness.status == model_installs.FAILED:
            model_installs.fail_waiting_job(session, job_id=job_id, model_id=job.model,
                                            error=readiness.error,
                                            prices=settings.prices_micros_per_mtok)
            return "failed"
    return None


def resolve_model_dir(*, settings: Settings, store: ObjectStore, model_id: str) -> Path:
    from crma_core.model_store import STORE_FILE, ModelStore

    local = ModelStore(settings.resolved_model_store_dir)
    if local.is_installed(model_id):
        return local.path(model_id)
    cache = ModelStore(settings.resolved_worker_cache_dir / "models")
    if cache.is_installed(model_id):
        return cache.path(model_id)
    prefix = f"{MODEL_STORE_PREFIX}{model_id}/"
    if store.head(prefix + STORE_FILE) is None:
        raise ModelUnavailable(f"The base model {model_id!r} is not installed on this service.")
    cache.root.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{model_id}-", dir=cache.root))
    try:
        download_prefix(store, prefix, partial)
        try:
            partial.rename(cache.root / model_id)  # atomic: all of the model or none
        except OSError:
            if not cache.is_installed(model_id):  # not another worker's finished copy
                raise
        try:
            cache.verify(model_id)
        except Exception:
            shutil.rmtree(cache.root / model_id, ignore_errors=True)
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return cache.path(model_id)


def fetch_data_files(*, store: ObjectStore, training_key: str, validation_key: str | None,
                     workdir: Path) -> tuple[Path, Path | None]:
    """The job's training file (and validation file, if any) in `workdir`."""
    train_file = workdir / "training.jsonl"
    store.get_to_file(training_key, train_file)
    validation_file = None
    if validation_key:
        validation_file = workdir / "validation.jsonl"
        store.get_to_file(validation_key, validation_file)
    return train_file, validation_file
