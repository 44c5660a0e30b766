"""Fetching a job's inputs: base models from the model store or, when a worker host lacks
them, from the object store into the worker's cache (once, verified)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import Settings
from app.storage.keys import MODEL_STORE_PREFIX
from app.storage.local import LocalObjectStore
from tests.worker.stack import MODEL_ID
from app.services.job_inputs import ModelUnavailable, resolve_model_dir
from app.storage.base import upload_directory


def _settings(tmp_path: Path, model_store: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", model_store_dir=model_store,
                    worker_cache_dir=tmp_path / "cache")


def test_a_model_in_the_local_store_is_used_in_place(tmp_path, tiny_model_store) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    path = resolve_model_dir(settings=_settings(tmp_path, tiny_model_store), store=store,
                             model_id=MODEL_ID)
    assert path == tiny_model_store / MODEL_ID


def test_a_model_only_in_the_object_store_is_downloaded_once_and_verified(
        tmp_path, tiny_model_store) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    upload_directory(store, tiny_model_store / MODEL_ID, f"{MODEL_STORE_PREFIX}{MODEL_ID}/")
    settings = _settings(tmp_path, tmp_path / "empty-store")
    path = resolve_model_dir(settings=settings, store=store, model_id=MODEL_ID)
    assert path == tmp_path / "cache" / "models" / MODEL_ID
    assert (path / "config.json").read_bytes() == \
        (tiny_model_store / MODEL_ID / "config.json").read_bytes()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no leftovers
    # The second job on this host reads the cache, not the object store.
    store.delete_prefix(f"{MODEL_STORE_PREFIX}{MODEL_ID}/")
    assert resolve_model_dir(settings=settings, store=store, model_id=MODEL_ID) == path


def test_a_corrupted_download_is_discarded(tmp_path, tiny_model_store) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    prefix = f"{MODEL_STORE_PREFIX}{MODEL_ID}/"
    upload_directory(store, tiny_model_store / MODEL_ID, prefix)
    weights = next(k for k in store.list_keys(prefix) if k.endswith(".safetensors"))
    store.put_bytes(weights, b"not the weights")
    settings = _settings(tmp_path, tmp_path / "empty-store")
    with pytest.raises(Exception, match="checksum"):
        resolve_model_dir(settings=settings, store=store, model_id=MODEL_ID)
    assert not (tmp_path / "cache" / "models" / MODEL_ID).exists()


def test_a_model_nowhere_is_model_unavailable(tmp_path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    with pytest.raises(ModelUnavailable):
        resolve_model_dir(settings=_settings(tmp_path, tmp_path / "none"), store=store,
                          model_id=MODEL_ID)
