"""Both object-store backends against real servers: S3 through moto's HTTP server, local
directory on disk. Same behaviour from both; keys never escape the store."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import httpx
import pytest

from app.storage import keys
from app.storage.base import verify_object
from app.storage.local import LocalObjectStore
from app.storage.s3 import S3ObjectStore

pytestmark = pytest.mark.integration


def _s3(endpoint: str, bucket: str, prefix: str = "svc") -> S3ObjectStore:
    return S3ObjectStore(bucket=bucket, prefix=prefix, endpoint_url=endpoint, region="us-east-1",
                         access_key_id="testing", secret_access_key="testing")


@pytest.fixture(params=["s3", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "s3":
        return _s3(request.getfixturevalue("s3_endpoint"), request.getfixturevalue("s3_bucket"))
    return LocalObjectStore(tmp_path / "objects")


def test_put_head_get_round_trip(store, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    key = keys.file_key("acct-a", "file-1")
    info = store.put_bytes(key, data)
    assert (info.bytes, info.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert store.head(key).bytes == len(data)
    assert b"".join(store.iter_chunks(key, chunk_size=65536)) == data
    store.get_to_file(key, tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == data
    assert verify_object(store, key, sha256=info.sha256, size=len(data))
    assert not verify_object(store, key, sha256="0" * 64, size=len(data))


def test_missing_objects(store, tmp_path: Path) -> None:
    assert store.head("tenants/acct-a/files/none.jsonl") is None
    with pytest.raises(FileNotFoundError):
        list(store.iter_chunks("tenants/acct-a/files/none.jsonl"))
    with pytest.raises(FileNotFoundError):
        store.get_to_file("tenants/acct-a/files/none.jsonl", tmp_path / "x")


def test_list_and_delete_prefix(store) -> None:
    prefix = keys.job_prefix("acct-a", "ftjob-1")
    for i in range(5):
        store.put_bytes(f"{prefix}checkpoints/{i}.bin", b"x")
    store.put_bytes(keys.job_prefix("acct-a", "ftjob-10") + "other.bin", b"y")
    listed = store.list_keys(prefix)
    assert listed == sorted(f"{prefix}checkpoints/{i}.bin" for i in range(5))
    store.delete(listed[0])
    assert len(store.list_keys(prefix)) == 4
    store.delete_prefix(prefix)
    assert store.list_keys(prefix) == []
    assert store.list_keys(keys.job_prefix("acct-a", "ftjob-10")) != []


def test_ping(store) -> None:
    store.ping()


def test_s3_multipart_upload_streams_large_objects(s3_endpoint: str, s3_bucket: str) -> None:
    store = _s3(s3_endpoint, s3_bucket)
    data = os.urandom(20 * 1024 * 1024 + 5)  # above the 8 MiB multipart threshold
    info = store.put_stream("tenants/acct-a/big.bin", io.BytesIO(data))
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    head = store.client.head_object(Bucket=s3_bucket, Key="svc/tenants/acct-a/big.bin")
    assert head["ContentLength"] == len(data) and "-" in head["ETag"]  # a multipart ETag


def test_s3_paginated_list_and_batch_delete(s3_endpoint: str, s3_bucket: str) -> None:
    store = _s3(s3_endpoint, s3_bucket)
    store.list_page_size, store.delete_batch_size = 3, 4  # small pages, same code path
    calls: list[str] = []
    store.client.meta.events.register(
        "before-call.s3.*", lambda model, **_: calls.append(model.name)
    )
    for i in range(10):
        store.put_bytes(f"tenants/acct-p/k/{i:05d}", b"")
    calls.clear()
    assert store.list_keys("tenants/acct-p/") == [f"tenants/acct-p/k/{i:05d}" for i in range(10)]
    assert calls.count("ListObjectsV2") == 4
    calls.clear()
    store.delete_prefix("tenants/acct-p/")
    assert calls.count("DeleteObjects") == 3
    assert store.list_keys("tenants/acct-p/") == []


def test_s3_presigned_get_downloads_as_attachment(s3_endpoint: str, s3_bucket: str) -> None:
    store = _s3(s3_endpoint, s3_bucket)
    store.put_bytes("tenants/acct-a/artifacts/ftjob-1/lora/adapter_config.json", b"{}")
    url = store.presigned_get_url("tenants/acct-a/artifacts/ftjob-1/lora/adapter_config.json",
                                  ttl_s=60, filename='adapter_config.json"\r\nx')
    assert "X-Amz-Expires=60" in url and "X-Amz-Signature" in url
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == b"{}"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment;") and "\r" not in disposition


def test_s3_prefix_isolates_services(s3_endpoint: str, s3_bucket: str) -> None:
    one, two = _s3(s3_endpoint, s3_bucket, "one"), _s3(s3_endpoint, s3_bucket, "two")
    one.put_bytes("tenants/acct-a/x", b"1")
    assert two.head("tenants/acct-a/x") is None and two.list_keys("tenants/") == []
    with pytest.raises(ValueError):
        one.put_bytes("../two/tenants/acct-a/x", b"evil")


def test_s3_unreachable_ping_raises() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = S3ObjectStore(bucket="b", endpoint_url=f"http://127.0.0.1:{port}",
                          access_key_id="x", secret_access_key="y")
    with pytest.raises(Exception):
        store.ping()


@pytest.mark.parametrize(
    "bad", ["../outside", "tenants/../../etc/passwd", "/etc/passwd", "a/../../b"]
)
def test_local_keys_cannot_escape_the_root(tmp_path: Path, bad: str) -> None:
    store = LocalObjectStore(tmp_path / "root")
    with pytest.raises(ValueError):
        store.put_bytes(bad, b"x")
    with pytest.raises(ValueError):
        store.head(bad)
    assert not (tmp_path / "outside").exists()


@pytest.mark.parametrize(
    "component", ["..", "../acct-b", "acct-a/../acct-b", "", "/abs", "a b", ".hidden", "x" * 200]
)
def test_key_builders_reject_unsafe_components(component: str) -> None:
    with pytest.raises(ValueError):
        keys.tenant_prefix(component)
    with pytest.raises(ValueError):
        keys.file_key("acct-a", component)
    with pytest.raises(ValueError):
        keys.artifact_key("acct-a", "ftjob-1", f"lora/{component}")


def test_keys_stay_under_the_tenant_prefix() -> None:
    prefix = keys.tenant_prefix("acct-a")
    built = [
        keys.file_key("acct-a", "file-1"), keys.job_prefix("acct-a", "ftjob-1"),
        keys.checkpoint_prefix("acct-a", "ftjob-1", 7),
        keys.artifact_key("acct-a", "ftjob-1", "lora/adapter_config.json"),
        keys.continual_state_prefix("acct-a", "clrun-1"),
    ]
    assert all(k.startswith(prefix) for k in built)
