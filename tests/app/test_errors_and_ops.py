"""One error envelope everywhere, request ids, auth failures, a database outage as 503,
health/readiness/metrics."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.db.models import WorkerHeartbeat
from app.db.session import session_scope
from app.services import accounts
from app.services.health import retire_workers
from tests.app.helpers import Tenant, create_tenant, make_settings
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def _is_envelope(body: dict) -> bool:
    return set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])


def test_unknown_malformed_revoked_and_missing_keys(client: TestClient, pg_url: str) -> None:
    tenant = create_tenant(pg_url)
    assert client.get("/v1/files", headers=tenant.headers).status_code == 200
    with session_scope(pg_url) as session:
        key_id = accounts.list_keys(session, account_id=tenant.account_id)[0].id
        accounts.revoke_key(session, key_id=key_id)
    bodies = set()
    for key in (tenant.key, "sk-crma-" + "A" * 40, "garbage", tenant.key[:-1] + "?"):
        response = client.get("/v1/files", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        bodies.add(response.text)
    assert len(bodies) == 1 and _is_envelope(json.loads(bodies.pop()))
    missing = client.get("/v1/files")
    assert missing.status_code == 401 and _is_envelope(missing.json())
    basic = client.get("/v1/files", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401
    query = client.get(f"/v1/files?api_key={tenant.key}")
    assert query.status_code == 401  # keys are accepted in the header only


def test_request_ids_are_echoed_or_generated(client: TestClient, tenant: Tenant) -> None:
    echoed = client.get("/v1/files", headers={**tenant.headers, "x-request-id": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    generated = client.get("/healthz")
    assert generated.headers["x-request-id"].startswith("req_")
    unsafe = client.get("/healthz", headers={"x-request-id": "bad id\twith spaces"})
    assert unsafe.headers["x-request-id"].startswith("req_")
    for response in (client.get("/nope"), client.get("/v1/files")):
        assert response.headers["x-request-id"]


def test_framework_errors_use_the_envelope(client: TestClient, tenant: Tenant) -> None:
    not_found = client.get("/v1/nothing-here", headers=tenant.headers)
    assert not_found.status_code == 404 and _is_envelope(not_found.json())
    wrong_method = client.put("/v1/files", headers=tenant.headers)
    assert wrong_method.status_code == 405 and _is_envelope(wrong_method.json())
    bad_json = client.post("/v1/fine_tuning/jobs", headers={**tenant.headers,
                           "content-type": "application/json"}, content=b"{not json")
    assert bad_json.status_code == 422 and _is_envelope(bad_json.json())
    not_object = client.post("/v1/fine_tuning/jobs", headers=tenant.headers, json=[1, 2])
    assert not_object.status_code == 422 and _is_envelope(not_object.json())
    nested = client.post("/v1/continual/runs", headers=tenant.headers, json={
        "model": "m", "domains": [{"name": "a", "training_file": "f", "validation_file": 3}]})
    assert nested.json()["error"]["param"] == "domains[0].validation_file"
    too_big = client.post("/v1/fine_tuning/jobs", headers={**tenant.headers,
                          "content-type": "application/json"}, content=b" " * (2 * 1024 * 1024))
    assert too_big.status_code == 413 and _is_envelope(too_big.json())


def test_unexpected_errors_are_500_without_a_trace(
    api_settings, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    from app.main import create_app

    app = create_app(api_settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internal detail")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert response.status_code == 500 and _is_envelope(response.json())
    assert "secret" not in response.text and "Traceback" not in response.text
    assert response.json()["error"]["code"] == "internal_error"
    assert response.headers["x-request-id"]


def test_database_down_is_503_with_retry_after(tmp_path: Path) -> None:
    from app.main import create_app

    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    settings = make_settings(tmp_path, dead, db_timeout_s=1.0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.get("/v1/files", headers={"Authorization": "Bearer sk-crma-" + "b" * 40})
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "2"
        assert response.json()["error"]["code"] == "database_unavailable"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"]
        assert ready.json()["checks"]["database"].startswith("error")
        assert client.get("/healthz").json() == {"status": "ok"}


def test_readiness_and_broker_checks(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    from app.main import create_app

    good = make_settings(tmp_path, pg_url, broker_url=redis_url)
    worker = f"ready-test-{free_port()}@here"
    with session_scope(pg_url) as session:  # a worker consuming the training queues
        session.add(WorkerHeartbeat(worker_id=worker, queues="large,small", device="cpu"))
    try:
        with TestClient(create_app(good)) as client:
            response = client.get("/readyz")
            assert response.status_code == 200
            assert response.json() == {"status": "ok", "checks": {
                "database": "ok", "broker": "ok", "storage": "ok", "workers": "ok"}}
    finally:
        retire_workers(pg_url, worker_ids=[worker])
    bad = make_settings(tmp_path, pg_url, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app(bad)) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        checks = response.json()["checks"]
        assert checks["database"] == "ok" and checks["broker"].startswith("error")


def test_metrics_are_exposed(client: TestClient, tenant: Tenant) -> None:
    client.get("/v1/files", headers=tenant.headers)
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "http_requests_total" in metrics.text and 'handler="/v1/files"' in metrics.text


def test_access_log_is_json_with_request_and_account(client: TestClient,
                                                     tenant: Tenant) -> None:
    import io

    from app.api.logs import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("app.access")
    access.addHandler(handler)
    try:
        client.get("/v1/files", headers={**tenant.headers, "x-request-id": "log-check-1"})
        client.get("/v1/files", headers={"Authorization": f"Bearer {tenant.key}x"})
    finally:
        access.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    entry = next(e for e in lines if e.get("request_id") == "log-check-1")
    assert entry["account_id"] == tenant.account_id and entry["status"] == 200
    assert entry["path"] == "/v1/files" and entry["duration_ms"] >= 0
    assert entry["level"] == "info" and entry["logger"] == "app.access"
    assert lines[-1]["status"] == 401 and lines[-1]["account_id"] is None
    assert tenant.key not in stream.getvalue()


@pytest.mark.parametrize("junk", ["%00", "ftjob-%00x", "x" * 5000, "..%2F..%2Fetc", "ftjob-ä"])
def test_malformed_ids_are_plain_404s(client: TestClient, tenant: Tenant, junk: str) -> None:
    for path in (f"/v1/files/{junk}", f"/v1/fine_tuning/jobs/{junk}",
                 f"/v1/fine_tuning/jobs/{junk}/events", f"/v1/continual/runs/{junk}",
                 f"/v1/fine_tuning/jobs/{junk}/artifacts/lora/{junk}"):
        response = client.get(path, headers=tenant.headers)
        assert response.status_code == 404, (path, response.text)
        assert _is_envelope(response.json())


def test_nul_characters_and_junk_never_reach_the_database(client: TestClient,
                                                         tenant: Tenant) -> None:
    nul_metadata = client.post("/v1/fine_tuning/jobs", headers=tenant.headers, json={
        "model": "tinyllama-1.1b-chat", "training_file": "file-x", "metadata": {"k": "a\x00b"}})
    assert nul_metadata.status_code == 422
    assert nul_metadata.json()["error"]["param"] == "metadata"
    nul_model = client.post("/v1/continual/runs", headers=tenant.headers, json={
        "model": "\x00" + "m" * 300,
        "domains": [{"name": "a", "training_file": "f", "validation_file": "g"}]})
    assert nul_model.status_code == 422
    long_model = client.post("/v1/continual/runs", headers=tenant.headers, json={
        "model": "m" * 300,
        "domains": [{"name": "a", "training_file": "f", "validation_file": "g"}]})
    assert long_model.status_code == 400
    assert long_model.json()["error"]["code"] == "model_not_found"
    for url in ("/v1/files?after=%00", "/v1/fine_tuning/jobs?after=%00",
                "/v1/continual/runs?after=" + "z" * 3000):
        response = client.get(url, headers=tenant.headers)
        assert response.status_code == 400 and response.json()["error"]["param"] == "after"
    assert client.get("/v1/files?purpose=%00", headers=tenant.headers).status_code == 422


def test_a_server_app_freezes_its_startup_heap_and_an_app_in_tests_does_not(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    from app import main

    frozen: list[int] = []
    # Not for real: what the test process holds now would never be collected afterwards.
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(1))
    settings = make_settings(tmp_path, pg_url)
    with TestClient(main.create_app(settings)):
        assert frozen == []
    monkeypatch.setattr(main, "get_settings", lambda: settings)
    server_app = main.create_server_app()
    assert server_app.state.freeze_gc is True
    with TestClient(server_app) as client:
        assert frozen == [1]
        assert client.get("/healthz").status_code == 200
