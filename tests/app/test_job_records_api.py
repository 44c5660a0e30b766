"""What a job produced: events (JSON pages and server-sent events), checkpoints, and the
adapter's files (streamed from the local store, presigned on S3)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.db.base import utcnow
from app.db.models import Artifact, Checkpoint
from app.db.session import session_scope
from app.domain.ids import new_id
from app.services import events
from app.services.job_status import transition_job
from app.domain.job_state import JobStatus
from app.storage import keys
from app.storage.factory import open_store
from tests.app.helpers import Tenant, make_settings
from tests.factories import insert_job

pytestmark = pytest.mark.integration


def _job(pg_url: str, tenant: Tenant, **values) -> str:
    with session_scope(pg_url) as session:
        return insert_job(session, account_id=tenant.account_id, **values).id


def _events(pg_url: str, job_id: str, n: int, start: int = 0) -> None:
    with session_scope(pg_url) as session:
        for step in range(start, start + n):
            events.record_event(session, job_id=job_id, message=f"step {step}", type="metrics",
                                data={"step": step, "train_loss": 1.0 / (step + 1)},
                                dedupe_key=f"metrics:step:{step}")


def test_events_page_newest_first(client: TestClient, tenant: Tenant, pg_url: str) -> None:
    job_id = _job(pg_url, tenant)
    _events(pg_url, job_id, 5)
    url = f"/v1/fine_tuning/jobs/{job_id}/events"
    first = client.get(url + "?limit=2", headers=tenant.headers).json()
    assert [e["message"] for e in first["data"]] == ["step 4", "step 3"] and first["has_more"]
    event = first["data"][0]
    assert event["object"] == "fine_tuning.job.event" and event["type"] == "metrics"
    assert event["data"] == {"step": 4, "train_loss": 0.2} and event["id"].startswith("ftevent-")
    rest = client.get(f"{url}?after={first['data'][1]['id']}", headers=tenant.headers).json()
    assert [e["message"] for e in rest["data"]] == ["step 2", "step 1", "step 0"]
    assert client.get(f"{url}?after=ftevent-x", headers=tenant.headers).status_code == 400


def _read_sse(response: httpx.Response) -> list[tuple[str, str]]:
    received, kind = [], None
    for line in response.iter_lines():
        if line.startswith("event:"):
            kind = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            received.append((kind, line.split(":", 1)[1].strip()))
            if kind == "done":
                break
    return received


def test_sse_follows_new_events_until_terminal(live_server, tenant: Tenant, pg_url: str) -> None:
    job_id = _job(pg_url, tenant, status="running", attempt=1)
    _events(pg_url, job_id, 2)

    def finish_later() -> None:
        time.sleep(0.8)
        _events(pg_url, job_id, 2, start=2)
        time.sleep(0.6)
        with session_scope(pg_url) as session:
            events.record_event(session, job_id=job_id, message="Job succeeded.")
            transition_job(session, job_id=job_id, to=JobStatus.SUCCEEDED,
                           expected=[JobStatus.RUNNING], attempt=1)

    worker = threading.Thread(target=finish_later)
    worker.start()
    with httpx.stream("GET", f"{live_server.url}/v1/fine_tuning/jobs/{job_id}/events",
                      headers={**tenant.headers, "Accept": "text/event-stream"},
                      timeout=20) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        received = _read_sse(response)
    worker.join()
    messages = [json.loads(d)["message"] for k, d in received if k == "fine_tuning.job.event"]
    assert messages == [
        "step 0", "step 1", "step 2", "step 3", "Job succeeded."]
    assert received[-1] == ("done", "succeeded")  # the stream ended with the job


def test_sse_resumes_after_last_event_id(client: TestClient, tenant: Tenant,
                                         pg_url: str) -> None:
    job_id = _job(pg_url, tenant, status="failed")
    _events(pg_url, job_id, 4)
    listed = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", headers=tenant.headers).json()
    step1 = next(e["id"] for e in listed["data"] if e["message"] == "step 1")
    with client.stream("GET", f"/v1/fine_tuning/jobs/{job_id}/events", headers={
            **tenant.headers, "Accept": "text/event-stream", "Last-Event-ID": step1}) as response:
        received = _read_sse(response)
    assert [json.loads(d)["message"] for k, d in received if k != "done"] == ["step 2", "step 3"]


def test_checkpoints_latest_first(client: TestClient, tenant: Tenant, pg_url: str) -> None:
    job_id = _job(pg_url, tenant, suffix="ck")
    with session_scope(pg_url) as session:
        for step in (100, 200, 300):
            session.add(Checkpoint(id=new_id("checkpoint"), job_id=job_id, step=step, attempt=1,
                                   storage_prefix=keys.checkpoint_prefix(tenant.account_id,
                                                                         job_id, step),
                                   metrics={"train_loss": 3.0 - step / 100},
                                   created_at=utcnow()))
    url = f"/v1/fine_tuning/jobs/{job_id}/checkpoints"
    page = client.get(url + "?limit=2", headers=tenant.headers).json()
    assert [c["step_number"] for c in page["data"]] == [300, 200] and page["has_more"]
    ckpt = page["data"][0]
    assert ckpt["object"] == "fine_tuning.job.checkpoint" and ckpt["fine_tuning_job_id"] == job_id
    assert ckpt["fine_tuned_model_checkpoint"].endswith(":ck:" + job_id + ":ckpt-step-300")
    # OpenAI's metrics object: every name present, null where nothing was measured.
    assert ckpt["metrics"] == {"step": 300, "train_loss": 0.0, "train_mean_token_accuracy": None,
                               "valid_loss": None, "valid_mean_token_accuracy": None,
                               "full_valid_loss": None, "full_valid_mean_token_accuracy": None,
                               "trained_tokens": None}
    assert (page["first_id"], page["last_id"]) == (ckpt["id"], page["data"][1]["id"])
    rest = client.get(f"{url}?after={page['last_id']}", headers=tenant.headers).json()
    assert [c["step_number"] for c in rest["data"]] == [100] and not rest["has_more"]


def _publish(settings, pg_url: str, account_id: str, owner_id: str,
             files: dict[str, bytes]) -> None:
    import hashlib

    store = open_store(settings)
    with session_scope(pg_url) as session:
        for name, data in files.items():
            key = keys.artifact_key(account_id, owner_id, name)
            store.put_bytes(key, data)
            session.add(Artifact(owner_id=owner_id, account_id=account_id, name=name,
                                 bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                 storage_key=key, created_at=utcnow()))


ADAPTER = {"lora/adapter_config.json": b'{"r": 16}', "crma.safetensors": b"\x00" * 1000,
           "metrics.jsonl": b'{"step": 1}\n'}


def test_local_artifacts_stream_through_the_api(client: TestClient, tenant: Tenant,
                                                pg_url: str, api_settings) -> None:
    job_id = _job(pg_url, tenant, status="succeeded")
    _publish(api_settings, pg_url, tenant.account_id, job_id, ADAPTER)
    listed = client.get(f"/v1/fine_tuning/jobs/{job_id}/artifacts", headers=tenant.headers).json()
    assert listed["object"] == "list"
    assert [a["name"] for a in listed["data"]] == sorted(ADAPTER)
    for item in listed["data"]:
        assert item["url"] == f"/v1/fine_tuning/jobs/{job_id}/artifacts/{item['name']}"
        assert item["bytes"] == len(ADAPTER[item["name"]])
        download = client.get(item["url"], headers=tenant.headers)
        assert download.status_code == 200 and download.content == ADAPTER[item["name"]]
        assert download.headers["content-disposition"].startswith("attachment")
    missing = client.get(f"/v1/fine_tuning/jobs/{job_id}/artifacts/lora/nope.bin",
                         headers=tenant.headers)
    assert missing.status_code == 404
    assert client.get(listed["data"][0]["url"]).status_code == 401


def test_s3_artifacts_are_presigned(tmp_path: Path, pg_url: str, tenant: Tenant,
                                    s3_endpoint: str, s3_bucket: str) -> None:
    from app.main import create_app

    settings = make_settings(tmp_path, pg_url, storage_url=f"s3://{s3_bucket}/svc",
                             s3_endpoint_url=s3_endpoint, s3_access_key_id="testing",
                             s3_secret_access_key="testing", presign_ttl_s=120)
    job_id = _job(pg_url, tenant, status="succeeded")
    _publish(settings, pg_url, tenant.account_id, job_id, ADAPTER)
    with TestClient(create_app(settings)) as s3_client:
        listed = s3_client.get(f"/v1/fine_tuning/jobs/{job_id}/artifacts",
                               headers=tenant.headers).json()
        for item in listed["data"]:
            assert item["url"].startswith(s3_endpoint) and "X-Amz-Expires=120" in item["url"]
            fetched = httpx.get(item["url"])
            assert fetched.content == ADAPTER[item["name"]]
            assert fetched.headers["content-disposition"].startswith("attachment")
        redirect = s3_client.get(f"/v1/fine_tuning/jobs/{job_id}/artifacts/metrics.jsonl",
                                 headers=tenant.headers, follow_redirects=False)
        assert redirect.status_code == 307 and redirect.headers["location"].startswith(s3_endpoint)
        assert s3_client.get("/readyz").json()["checks"]["storage"] == "ok"
