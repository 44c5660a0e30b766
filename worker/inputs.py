"""What a job trains on, fetched onto this machine: the base model, the data files and, for a
resumed attempt, the checkpoint to resume from.

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
from app.storage.base import ObjectStore
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


def download_prefix(store: ObjectStore, prefix: str, directory: Path) -> list[Path]:
    """Every object under `prefix` into `directory`, keeping the relative paths."""
    paths = []
    for key in store.list_keys(prefix):
        relative = key[len(prefix):]
        if not relative or relative.startswith("/") or ".." in relative.split("/"):
            continue
        target = directory / relative
        store.get_to_file(key, target)
        paths.append(target)
    return paths


def upload_directory(store: ObjectStore, directory: Path, prefix: str) -> list[tuple[str, int, str]]:
    """Every file of `directory` under `prefix`; returns (relative name, bytes, sha256)."""
    uploaded = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix()
        info = store.put_file(prefix + name, path)
        uploaded.append((name, info.bytes, info.sha256 or ""))
    return uploaded
