"""What a job trains on, fetched onto this machine: the base model, the data files and, for a
resumed attempt, the checkpoint to resume from.

Base models: the local model store (`resolved_model_store_dir/<id>/`, what `crma models
import` writes) first; otherwise `models/<id>/...` from the object store, downloaded once into
`resolved_worker_cache_dir/models/<id>/` and reused by later jobs (a `.complete` marker is
written last, so a download killed half-way is redone, never used)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from app.settings import Settings
from app.storage.base import ObjectStore
from app.storage.keys import MODEL_STORE_PREFIX

COMPLETE = ".complete"


class ModelUnavailable(Exception):
    """The base model is neither in the local model store nor in the object store."""


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def resolve_model_dir(*, settings: Settings, store: ObjectStore, model_id: str) -> Path:
    local = settings.resolved_model_store_dir / model_id
    if _is_model_dir(local):
        return local
    cached = settings.resolved_worker_cache_dir / "models" / model_id
    if (cached / COMPLETE).is_file():
        return cached
    prefix = f"{MODEL_STORE_PREFIX}{model_id}/"
    keys = store.list_keys(prefix)
    if not keys:
        raise ModelUnavailable(f"The base model {model_id!r} is not installed on this service.")
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{model_id}-", dir=cached.parent))
    try:
        download_prefix(store, prefix, partial)
        if not _is_model_dir(partial):
            raise ModelUnavailable(f"The stored base model {model_id!r} has no config.json.")
        (partial / COMPLETE).write_text("ok\n")
        shutil.rmtree(cached, ignore_errors=True)
        partial.rename(cached)  # atomic: another worker sees all of it or none
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return cached


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
