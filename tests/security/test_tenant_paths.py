"""Paths and names from users never escape their tenant's prefix: object keys built from any
string either raise or stay under tenants/<account>/, the local store refuses keys that
resolve outside its root, and through HTTP a traversal filename is stored under the tenant's
prefix and a traversal artifact name reads nothing of another tenant's."""

from __future__ import annotations

import hashlib
import posixpath
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.db.base import utcnow
from app.db.models import Artifact
from app.db.session import session_scope
from app.storage import keys
from app.storage.local import LocalObjectStore
from tests.app.helpers import Tenant, upload
from tests.factories import insert_job

ACCOUNT = "acct-ABCDEFGHIJKLMNOPQRSTUVWX"
PREFIX = keys.tenant_prefix(ACCOUNT)

hostile_text = st.one_of(
    st.text(max_size=60),
    st.lists(st.sampled_from(["..", ".", "", "a", "lora", "%2e%2e", "\\", "..\\..", "/",
                              "\x00", "~", "tenants", "acct-OTHER", " ", "a..b"]),
             max_size=8).map("/".join),
)


def _stays_in_prefix(key: str) -> bool:
    normal = posixpath.normpath(key)
    return (key.startswith(PREFIX) and normal.startswith(PREFIX.rstrip("/"))
            and ".." not in key.split("/") and "\\" not in key and "\x00" not in key
            and "//" not in key)


@settings(max_examples=400, deadline=None)
@given(hostile_text)
def test_every_key_builder_stays_in_the_tenant_prefix_or_refuses(value: str) -> None:
    builders = [
        lambda v: keys.file_key(ACCOUNT, v),
        lambda v: keys.job_prefix(ACCOUNT, v),
        lambda v: keys.artifact_key(ACCOUNT, "ftjob-x", v),
        lambda v: keys.artifact_key(ACCOUNT, v, "lora/adapter_config.json"),
        lambda v: keys.continual_state_prefix(ACCOUNT, v),
    ]
    for build in builders:
        try:
            key = build(value)
        except ValueError:
            continue
        assert _stays_in_prefix(key), (value, key)
    try:
        prefix = keys.tenant_prefix(value)
    except ValueError:
        return
    assert prefix.startswith("tenants/") and posixpath.normpath(prefix).count("/") == 1


@settings(max_examples=200, deadline=None)
@given(hostile_text)
def test_local_store_never_touches_a_path_outside_its_root(tmp_path_factory, value: str) -> None:
    root = tmp_path_factory.mktemp("store")
    store = LocalObjectStore(root / "objects")
    (root / "outside.txt").write_bytes(b"secret")
    for key in (f"{PREFIX}files/{value}", f"../{value}", f"{value}/../../outside.txt",
                f"{PREFIX}{value}/../../../../outside.txt"):
        try:
            store.put_bytes(key, b"x")
        except (ValueError, OSError):
            pass
        try:
            data = b"".join(store.iter_chunks(key))
        except (ValueError, OSError):
            data = b""
        assert data != b"secret", key
    assert (root / "outside.txt").read_bytes() == b"secret"
    written = [p for p in root.rglob("*") if p.is_file()]
    assert all(p == root / "outside.txt" or (root / "objects") in p.parents for p in written)


def test_traversal_filename_is_stored_under_the_tenant_prefix(
        client, tenant: Tenant, tmp_path: Path) -> None:
    response = upload(client, tenant, filename="../../../../tenants/acct-victim/files/x.jsonl")
    assert response.status_code == 201, response.text
    assert response.json()["filename"] == "x.jsonl"
    objects = tmp_path / "objects"
    stored = [p.relative_to(objects).as_posix() for p in objects.rglob("*") if p.is_file()]
    assert stored and all(s.startswith(keys.tenant_prefix(tenant.account_id)) for s in stored)


def _raw_get(app, path: str, headers: dict[str, str]) -> tuple[int, bytes]:  # noqa: ANN001
    """GET `path` exactly as given (no URL normalisation), straight through the ASGI app."""
    import asyncio
    from urllib.parse import unquote

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": unquote(path), "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "server": ("testserver", 80), "client": ("127.0.0.1", 1),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.mark.integration
def test_traversal_artifact_names_read_nothing_of_another_tenant(
        client, pg_url: str, tenant: Tenant, other_tenant: Tenant) -> None:
    victim_file = upload(client, other_tenant).json()["id"]
    victim_key = keys.file_key(other_tenant.account_id, victim_file)
    store = client.app.state.store
    victim_bytes = b"".join(store.iter_chunks(victim_key))
    data = b'{"adapter": true}'
    with session_scope(pg_url) as session:
        job = insert_job(session, account_id=tenant.account_id, status="succeeded",
                         finished_at=utcnow())
        key = keys.artifact_key(tenant.account_id, job.id, "lora/adapter_config.json")
        info = store.put_bytes(key, data)
        session.add(Artifact(account_id=tenant.account_id, owner_id=job.id,
                             name="lora/adapter_config.json", storage_key=key, bytes=info.bytes,
                             sha256=hashlib.sha256(data).hexdigest(), created_at=utcnow()))
        job_id = job.id
    base = f"/v1/fine_tuning/jobs/{job_id}/artifacts/"
    assert client.get(base + "lora/adapter_config.json", headers=tenant.headers).content == data
    relative = f"tenants/{other_tenant.account_id}/files/{victim_file}.jsonl"
    for name in (f"../../../../{relative}", f"lora/../../../../../{relative}",
                 "%2e%2e/%2e%2e/%2e%2e/%2e%2e/" + relative, f"..%2f..%2f..%2f..%2f{relative}",
                 f"/{relative}", "%2e%2e", "lora/..%00", "lora%2f..%2f..%2fx", "..",
                 "lora/../lora/adapter_config.json"):
        # Sent as raw ASGI paths: an HTTP client would normalise the dot segments away.
        status, body = _raw_get(client.app, base + name, tenant.headers)
        assert status == 404, (name, status)
        assert victim_bytes not in body


@pytest.mark.integration
@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "x\\..\\y", "a\x00b"])
def test_continual_domain_names_cannot_carry_paths(client, tenant: Tenant, name: str) -> None:
    body = {"model": "smollm2-135m-instruct", "mode": "modular",
            "domains": [{"name": name, "training_file": "file-000000000000000000000000"}]}
    response = client.post("/v1/continual/runs", headers=tenant.headers, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"].startswith("domains[0].name")
