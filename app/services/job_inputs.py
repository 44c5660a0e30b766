"""What a job trains on, fetched onto the worker's machine: the base model and the data files
(checkpoints: app/services/attempts.py; a continual run's state: app/services/stages.py).

Base models: the local model store (`resolved_model_store_dir/<id>/`, what `crma models
import` writes) first; otherwise `models/<id>/...` from the object store, downloaded once into
`resolved_worker_cache_dir/models/<id>/` (itself a crma_core ModelStore) and reused by later
jobs. The download lands in a hidden directory renamed into place, so a download killed
half-way is redone, never used; the weights are checked against store.json's sha256."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from app.settings import Settings
from app.storage.base import ObjectStore, download_prefix
from app.storage.keys import MODEL_STORE_PREFIX


class ModelUnavailable(Exception):
    """The base model is neither in the local model store nor in the object store."""


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
