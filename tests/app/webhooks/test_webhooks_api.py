"""The webhook API on PostgreSQL, and the relay's delivery loop against a local receiver:
registration (URL policy, secret shown once, limits, tenant isolation), the test event, the
lifecycle's events, retries with the same webhook-id, and the endpoint disabled after the
retry budget (a schedule of a fraction of a second stands in for the day-long one)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from standardwebhooks import Webhook

from app.db.models import Job, WebhookDelivery, WebhookEndpoint
from app.db.session import session_scope
from app.domain.job_state import JobStatus
from app.domain.secret_box import SEALED_PREFIX, new_key
from app.services import job_lifecycle
from app.services.webhook_delivery import DeliveryLoop
from app.settings import Settings
from tests.app.helpers import make_settings
from tests.app.webhooks.receiver import Receiver, Reply
from tests.factories import PRICES, insert_continual_run, insert_job

FAST = [0.05, 0.05]  # two retries, a twentieth of a second apart
SEALING_KEY = new_key()  # the secrets are sealed at rest, as in production


@pytest.fixture
def dev_settings(tmp_path, pg_url) -> Settings:
    return make_settings(tmp_path, pg_url, webhook_allow_private_urls=True,
                         webhook_retry_schedule_s=FAST, webhook_timeout_s=3.0,
                         webhook_max_endpoints=3, webhook_secret_keys=SEALING_KEY)


@pytest.fixture
def dev_client(dev_settings) -> TestClient:
    from app.main import create_app

    with TestClient(create_app(dev_settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


def deliver(settings: Settings) -> int:
    return asyncio.run(DeliveryLoop(settings).run_once())


def register(client, tenant, url, **extra) -> dict:
    response = client.post("/v1/webhooks", headers=tenant.headers, json={"url": url, **extra})
    assert response.status_code == 201, response.text
    return response.json()


def deliveries(client, tenant, webhook_id) -> list[dict]:
    response = client.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=tenant.headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_loopback_and_metadata_urls_are_refused_outside_dev(client, tenant):
    for url, why in [("https://127.0.0.1:8443/hook", "127.0.0.1 is a loopback address"),
                     ("https://169.254.169.254/latest", "169.254.169.254 is link-local"),
                     ("http://hooks.example.com/x", "must use https"),
                     ("https://[::ffff:10.0.0.1]/x", "IPv4-mapped"),
                     ("https://localhost:8443/x", "loopback address")]:
        response = client.post("/v1/webhooks", headers=tenant.headers, json={"url": url})
        assert response.status_code == 400, (url, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_webhook_url" and error["param"] == "url"
        assert why in error["message"]


def test_metadata_is_refused_even_in_dev(dev_client, tenant):
    response = dev_client.post("/v1/webhooks", headers=tenant.headers,
                               json={"url": "http://169.254.169.254/latest/meta-data"})
    assert response.status_code == 400 and "link-local" in response.json()["error"]["message"]


def test_register_list_retrieve_delete(dev_client, tenant, other_tenant, receiver):
    created = register(dev_client, tenant, receiver.url + "/hook",
                       event_types=["fine_tuning.job.succeeded"], description="ci")
    assert created["secret"].startswith("whsec_") and created["status"] == "enabled"
    assert created["id"].startswith("wh-") and created["event_types"] == \
        ["fine_tuning.job.succeeded"]
    webhook_id = created["id"]
    shown = dev_client.get(f"/v1/webhooks/{webhook_id}", headers=tenant.headers).json()
    assert "secret" not in shown and shown["secret_hint"].endswith(created["secret"][-4:])
    listed = dev_client.get("/v1/webhooks", headers=tenant.headers).json()
    assert [w["id"] for w in listed["data"]] == [webhook_id] and not listed["has_more"]
    assert dev_client.get("/v1/webhooks", headers=other_tenant.headers).json()["data"] == []

    # Another account's endpoint is the same 404 as a missing one, on every route.
    for method, path in [("get", ""), ("delete", ""), ("get", "/deliveries"),
                         ("post", "/test"), ("post", "/enable"), ("post", "/disable")]:
        for wid in (webhook_id, "wh-doesnotexist"):
            response = getattr(dev_client, method)(f"/v1/webhooks/{wid}{path}",
                                                   headers=other_tenant.headers)
            assert response.status_code == 404, (method, path, response.text)
    assert dev_client.get(f"/v1/webhooks/{webhook_id}", headers=tenant.headers).status_code \
        == 200

    gone = dev_client.delete(f"/v1/webhooks/{webhook_id}", headers=tenant.headers)
    assert gone.json() == {"id": webhook_id, "object": "webhook_endpoint", "deleted": True}
    assert dev_client.get(f"/v1/webhooks/{webhook_id}", headers=tenant.headers).status_code \
        == 404


def test_bad_requests_say_why(dev_client, tenant, receiver):
    cases = [
        ({"url": receiver.url, "event_types": ["fine_tuning.job.done"]}, 400,
         "invalid_event_type", "'fine_tuning.job.done'"),
        ({"url": receiver.url, "event_types": []}, 400, "invalid_event_type", "at least one"),
        ({"url": "ftp://example.com/x"}, 400, "invalid_webhook_url", "scheme must be https"),
        ({"url": "https://no-such-host.invalid/x"}, 400, "invalid_webhook_url",
         "does not resolve"),
        ({"url": receiver.url, "secret": "mine"}, 422, None, "secret"),
    ]
    for body, status, code, words in cases:
        response = dev_client.post("/v1/webhooks", headers=tenant.headers, json=body)
        assert response.status_code == status, (body, response.text)
        if code:
            assert response.json()["error"]["code"] == code
        assert words in response.text
    for _ in range(3):
        register(dev_client, tenant, receiver.url)
    response = dev_client.post("/v1/webhooks", headers=tenant.headers, json={"url": receiver.url})
    assert response.status_code == 400 and response.json()["error"]["code"] == \
        "too_many_webhooks"


def test_test_event_is_signed_and_logged(dev_client, dev_settings, tenant, receiver):
    created = register(dev_client, tenant, receiver.url + "/in")
    response = dev_client.post(f"/v1/webhooks/{created['id']}/test", headers=tenant.headers)
    assert response.status_code == 202 and response.json()["status"] == "pending"
    assert deliver(dev_settings) == 1
    [request] = receiver.wait_for(1)
    event = Webhook(created["secret"]).verify(request.body, request.headers)
    assert event["type"] == "webhook.test" and event["object"] == "event"
    assert event["data"] == {"id": created["id"]} and request.headers["webhook-id"] == event["id"]
    [logged] = deliveries(dev_client, tenant, created["id"])
    assert logged["status"] == "succeeded" and logged["attempts"] == 1
    assert logged["last_status_code"] == 200 and logged["last_response_excerpt"] == "ok"
    assert logged["event_id"] == event["id"] and logged["finished_at"] is not None
    assert deliver(dev_settings) == 0  # at most once per success


def test_the_secret_is_sealed_at_rest_and_a_missing_key_holds_deliveries(
        dev_client, dev_settings, tenant, receiver, caplog):
    """The row keeps the secret sealed (never the secret itself); a relay whose keys cannot
    open it sends nothing and leaves the delivery pending with its attempts unspent, and
    the relay with the key delivers it, signed with the secret shown at registration."""
    created = register(dev_client, tenant, receiver.url + "/sealed")
    with session_scope(dev_settings.resolved_database_url) as session:
        row = session.get(WebhookEndpoint, created["id"])
        assert row.secret.startswith(SEALED_PREFIX)
        assert created["secret"].removeprefix("whsec_") not in row.secret
        assert row.secret_hint == "whsec_…" + created["secret"][-4:]
    assert dev_client.post(f"/v1/webhooks/{created['id']}/test",
                           headers=tenant.headers).status_code == 202
    rotated_away = dev_settings.model_copy(update={"webhook_secret_keys": new_key()})
    assert deliver(rotated_away) == 1  # claimed, not sent
    assert "cannot be signed" in caplog.text
    with session_scope(dev_settings.resolved_database_url) as session:
        held = session.query(WebhookDelivery).filter_by(endpoint_id=created["id"]).one()
        assert (held.status, held.attempts) == ("pending", 0)
        held.next_attempt_at = held.created_at  # its claim lapsed
    assert receiver.requests == []
    assert deliver(dev_settings) == 1
    [request] = receiver.wait_for(1)
    assert Webhook(created["secret"]).verify(request.body, request.headers)["type"] == \
        "webhook.test"


def test_job_events_from_the_lifecycle_retry_with_the_same_id(dev_client, dev_settings, tenant,
                                                            receiver):
    created = register(dev_client, tenant, receiver.url,
                       event_types=["fine_tuning.job.succeeded", "fine_tuning.job.cancelled"])
    with session_scope(dev_settings.resolved_database_url) as session:
        job = insert_job(session, account_id=tenant.account_id, status="running", attempt=1)
        queued = insert_job(session, account_id=tenant.account_id)
        failed = insert_job(session, account_id=tenant.account_id, status="running", attempt=1)
    with session_scope(dev_settings.resolved_database_url) as session:
        assert job_lifecycle.finish_job(session, job_id=job.id, attempt=1,
                                        to=JobStatus.SUCCEEDED, prices=PRICES)
        # Not subscribed: no delivery at all.
        assert job_lifecycle.finish_job(session, job_id=failed.id, attempt=1,
                                        to=JobStatus.FAILED, prices=PRICES)
        assert job_lifecycle.cancel_job(session, job=queued, prices=PRICES)
    receiver.replies.append(Reply(500, b"try later"))
    assert deliver(dev_settings) == 2
    receiver.wait_for(2)
    by_type = {d["event_type"]: d for d in deliveries(dev_client, tenant, created["id"])}
    assert set(by_type) == {"fine_tuning.job.succeeded", "fine_tuning.job.cancelled"}
    failed_first = [d for d in by_type.values() if d["last_status_code"] == 500]
    assert len(failed_first) == 1 and failed_first[0]["status"] == "pending"
    assert failed_first[0]["last_response_excerpt"] == "try later"
    time.sleep(0.2)
    assert deliver(dev_settings) == 1
    requests = receiver.wait_for(3)
    retried = [r for r in requests if r.headers["webhook-id"] == failed_first[0]["event_id"]]
    assert len(retried) == 2 and retried[0].body == retried[1].body
    for request in requests:
        event = Webhook(created["secret"]).verify(request.body, request.headers)
        assert event["data"]["id"] in (job.id, queued.id)
    assert {json.loads(r.body)["data"]["id"] for r in requests} == {job.id, queued.id}
    log = {d["event_type"]: d for d in deliveries(dev_client, tenant, created["id"])}
    assert all(d["status"] == "succeeded" for d in log.values())
    retried_log = log[failed_first[0]["event_type"]]
    assert [a["status_code"] for a in retried_log["attempt_log"]] == [500, 200]


def test_a_receiver_that_is_down_disables_the_endpoint(dev_client, dev_settings, tenant):
    with Receiver() as gone:
        url = gone.url + "/hook"
    created = register(dev_client, tenant, url)  # registered while it listened
    dev_client.post(f"/v1/webhooks/{created['id']}/test", headers=tenant.headers)
    for _ in range(3):  # the first try and two retries
        assert deliver(dev_settings) == 1
        time.sleep(0.15)
    assert deliver(dev_settings) == 0
    [logged] = deliveries(dev_client, tenant, created["id"])
    assert logged["status"] == "failed" and logged["attempts"] == 3
    assert logged["last_status_code"] is None and "ConnectError" in logged["last_error"]
    assert len(logged["attempt_log"]) == 3
    endpoint = dev_client.get(f"/v1/webhooks/{created['id']}", headers=tenant.headers).json()
    assert endpoint["status"] == "disabled" and "3 attempts" in endpoint["disabled_reason"]
    refused = dev_client.post(f"/v1/webhooks/{created['id']}/test", headers=tenant.headers)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "webhook_disabled"
    enabled = dev_client.post(f"/v1/webhooks/{created['id']}/enable", headers=tenant.headers)
    assert enabled.json()["status"] == "enabled" and enabled.json()["disabled_reason"] is None


def test_continual_run_events(dev_client, dev_settings, tenant, receiver):
    created = register(dev_client, tenant, receiver.url)
    with session_scope(dev_settings.resolved_database_url) as session:
        run_id, stages = insert_continual_run(session, account_id=tenant.account_id, stages=2)
    for stage in stages:
        with session_scope(dev_settings.resolved_database_url) as session:
            session.execute(update(Job).where(Job.id == stage).values(status="running",
                                                                      attempt=1))
            assert job_lifecycle.finish_job(session, job_id=stage, attempt=1,
                                            to=JobStatus.SUCCEEDED, prices=PRICES)
    assert deliver(dev_settings) == 3
    events = [json.loads(r.body) for r in receiver.wait_for(3)]
    assert sorted(e["type"] for e in events) == [
        "continual.run.stage.succeeded", "continual.run.stage.succeeded",
        "continual.run.succeeded"]
    assert all(e["data"]["id"] == run_id for e in events)
    assert sorted(e["data"].get("stage_index", -1) for e in events) == [-1, 0, 1]
    assert [d["status"] for d in deliveries(dev_client, tenant, created["id"])] == \
        ["succeeded"] * 3
