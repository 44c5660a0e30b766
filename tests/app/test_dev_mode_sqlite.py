"""The embedded dev mode: the same API on SQLite + the local object store (no servers)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db.models import OutboxMessage
from app.db.session import session_scope
from tests.app.helpers import create_tenant, jsonl, make_settings, upload, upload_id


def test_full_flow_on_sqlite(tmp_path: Path, sqlite_url: str) -> None:
    from app.main import create_app

    tenant = create_tenant(sqlite_url, plan="pro", credit_micros=5_000_000)
    free = create_tenant(sqlite_url, plan="free")
    with TestClient(create_app(make_settings(tmp_path, sqlite_url))) as client:
        file_id = upload_id(client, tenant, jsonl(12))
        content = client.get(f"/v1/files/{file_id}/content", headers=tenant.headers).content
        assert content == jsonl(12)
        assert upload(client, tenant, b"{oops\n").status_code == 400

        headers = {**tenant.headers, "Idempotency-Key": "k1"}
        body = {"model": "tinyllama-1.1b-chat", "training_file": file_id,
                "metadata": {"mode": "dev"}}
        created = client.post("/v1/fine_tuning/jobs", headers=headers, json=body)
        replay = client.post("/v1/fine_tuning/jobs", headers=headers, json=body)
        assert created.status_code == 201 and replay.json() == created.json()
        job_id = created.json()["id"]
        second = client.post("/v1/fine_tuning/jobs", headers=tenant.headers, json=body).json()
        page = client.get("/v1/fine_tuning/jobs?limit=1", headers=tenant.headers).json()
        assert [j["id"] for j in page["data"]] == [second["id"]] and page["has_more"]
        after = client.get(f"/v1/fine_tuning/jobs?after={second['id']}",
                           headers=tenant.headers).json()
        assert [j["id"] for j in after["data"]] == [job_id]
        events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", headers=tenant.headers)
        assert events.json()["data"][0]["message"].startswith("Created fine-tuning job")
        cancelled = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=tenant.headers)
        assert cancelled.json()["status"] == "cancelled"
        assert client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel",
                           headers=tenant.headers).status_code == 409

        domains = [{"name": n, "training_file": file_id, "validation_file": file_id}
                   for n in ("a", "b")]
        run = client.post("/v1/continual/runs", headers=tenant.headers,
                          json={"model": "tinyllama-1.1b-chat", "domains": domains}).json()
        assert [s["status"] for s in run["stages"]] == ["queued", "queued"]
        assert client.post(f"/v1/continual/runs/{run['id']}/cancel",
                           headers=tenant.headers).json()["status"] == "cancelled"

        free_file = upload_id(client, free)
        statuses = [client.post("/v1/fine_tuning/jobs", headers=free.headers, json={
            "model": "tinyllama-1.1b-chat", "training_file": free_file}).status_code
            for _ in range(4)]
        assert statuses == [201, 201, 201, 429]
        assert client.get("/readyz").json()["checks"] == {
            "database": "ok", "broker": "ok", "storage": "ok",
            "workers": "error: no live worker consumes queue small, large (none seen in the "
                       "last 180 s); jobs there wait until one does"}
    with session_scope(sqlite_url) as session:
        queued = [o.payload["job_id"] for o in session.scalars(select(OutboxMessage))]
    assert job_id in queued and second["id"] in queued
