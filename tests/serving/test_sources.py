"""Adapter sources: a local directory tree (paths stay inside the root) and a remote store
(the object store the workers publish bundles to) copied into a local cache once."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from serving.errors import AdapterNotFound, InvalidRequest
from serving.requests import AdapterSpec
from serving.sources import DownloadingAdapterSource, LocalAdapterSource


def _spec(**fields) -> AdapterSpec:
    return AdapterSpec(**{"id": "ad", "location": "a1", **fields})


def test_local_source_finds_lora_and_crma(adapter_root):
    source = LocalAdapterSource(adapter_root)
    files = source.resolve(_spec())
    assert files.lora_dir == (adapter_root / "a1" / "lora").resolve()
    assert files.crma_dir == (adapter_root / "a1").resolve()
    assert source.resolve(_spec(location="lora-only")).crma_dir is None
    assert source.resolve(_spec(crma=None)).crma_dir is None
    absolute = source.resolve(_spec(location=str(adapter_root / "a2")))
    assert absolute.lora_dir == (adapter_root / "a2" / "lora").resolve()


@pytest.mark.parametrize("fields,param", [
    ({"location": "../outside"}, "adapter.location"),
    ({"location": "/etc"}, "adapter.location"),
    ({"lora": "../../etc"}, "adapter.lora"),
    ({"lora": "/etc"}, "adapter.lora"),
    ({"crma": "../.."}, "adapter.crma"),
])
def test_local_source_refuses_paths_that_leave_the_root(adapter_root, fields, param):
    with pytest.raises(InvalidRequest) as info:
        LocalAdapterSource(adapter_root).resolve(_spec(**fields))
    assert info.value.param == param


def test_an_explicit_crma_path_must_hold_a_crma_state(adapter_root):
    source = LocalAdapterSource(adapter_root)
    with pytest.raises(AdapterNotFound):
        source.resolve(_spec(location="lora-only", crma="."))
    assert source.resolve(_spec(location="lora-only")).crma_dir is None  # default: optional


def _publish(store, adapter_root: Path, prefix: str) -> None:
    """Upload a bundle the way the worker does (one object per file) plus unrelated files."""
    for path in sorted((adapter_root / "a1").rglob("*")):
        if path.is_file():
            store.put_file(prefix + path.relative_to(adapter_root / "a1").as_posix(), path)
    store.put_bytes(prefix + "plots/loss.png", b"not fetched")


def _check_download(store, adapter_root, tmp_path):
    prefix = "tenants/acct-1/artifacts/ftjob-abc/"
    _publish(store, adapter_root, prefix)
    calls = []

    class Counting:
        def list_keys(self, prefix):
            return store.list_keys(prefix)

        def get_to_file(self, key, path):
            calls.append(key)
            store.get_to_file(key, path)

    source = DownloadingAdapterSource(tmp_path / "cache", Counting())
    spec = _spec(id="ft:abc", location=prefix.rstrip("/"))
    files = source.resolve(spec)
    assert (files.lora_dir / "adapter_model.safetensors").read_bytes() == \
        (adapter_root / "a1" / "lora" / "adapter_model.safetensors").read_bytes()
    assert files.crma_dir is not None and (files.crma_dir / "crma.safetensors").is_file()
    assert not any(key.endswith(".png") for key in calls)  # only the LoRA and CRMA files
    fetched = len(calls)
    assert source.resolve(spec) == files and len(calls) == fetched  # cached on disk
    with pytest.raises(AdapterNotFound):
        source.resolve(_spec(id="ft:gone", location="tenants/acct-1/artifacts/ftjob-gone"))
    assert not any(p.name.startswith(".") for p in (tmp_path / "cache").iterdir())
    return files


def test_downloading_source_over_the_local_object_store(adapter_root, tmp_path):
    from app.storage.local import LocalObjectStore

    _check_download(LocalObjectStore(tmp_path / "objects"), adapter_root, tmp_path)


@pytest.mark.integration
def test_downloading_source_over_s3(adapter_root, tmp_path, s3_endpoint, s3_bucket):
    from app.storage.s3 import S3ObjectStore

    store = S3ObjectStore(bucket=s3_bucket, prefix="", endpoint_url=s3_endpoint,
                          region="us-east-1", access_key_id="testing",
                          secret_access_key="testing")
    _check_download(store, adapter_root, tmp_path)


def test_crma_engine_builds_the_store_source_from_settings(adapter_root, tmp_path, monkeypatch):
    """`crma engine` (the composition root) reads adapters through CRMA_STORAGE_URL."""
    from app.settings import get_settings
    from app.storage.local import LocalObjectStore
    from crma_cli.engine import build_source

    objects = tmp_path / "objects"
    _publish(LocalObjectStore(objects), adapter_root, "tenants/a/artifacts/ftjob-x/")
    monkeypatch.setenv("CRMA_STORAGE_URL", objects.as_uri())
    get_settings.cache_clear()
    try:
        args = argparse.Namespace(adapter_source="store", adapter_root=None,
                                  cache_dir=str(tmp_path / "cache"))
        source = build_source(args, get_settings())
        files = source.resolve(_spec(location="tenants/a/artifacts/ftjob-x"))
        assert files.crma_dir is not None
        local = build_source(argparse.Namespace(adapter_source="local",
                                                adapter_root=str(adapter_root),
                                                cache_dir=None), get_settings())
        assert local.resolve(_spec()).lora_dir.is_dir()
    finally:
        get_settings.cache_clear()
    shutil.rmtree(tmp_path / "cache")
