"""POST/GET /v1/fine_tuning/jobs/{id}/exports on PostgreSQL: the CRMA rule (409 for a plain
merge of a CRMA job), idempotency, the free plan's daily limit, the pro plan's fee held,
tenant isolation, and an outbox row for the worker task."""

from __future__ import annotations

from sqlalchemy import select

from app.db.models import LedgerTransaction, ModelExport, OutboxMessage
from app.db.session import session_scope
from app.domain.job_settings import AdapterSettings, JobSettings
from tests.app.helpers import create_tenant
from tests.factories import TEST_SETTINGS, account_row, insert_job

FEE = TEST_SETTINGS.export_prices_micros["smollm2-135m-instruct"]


def finished_job(pg_url: str, account_id: str, *, crma: bool, status: str = "succeeded") -> str:
    with session_scope(pg_url) as session:
        return insert_job(session, account_id=account_id, status=status,
                          job_settings=JobSettings(adapter=AdapterSettings(crma=crma))).id


def export(client, tenant, job_id, **body):
    return client.post(f"/v1/fine_tuning/jobs/{job_id}/exports", headers=tenant.headers,
                       json=body)


def test_a_lora_job_exports_once_and_holds_the_fee(client, tenant, pg_url):
    job_id = finished_job(pg_url, tenant.account_id, crma=False)
    with session_scope(pg_url) as session:
        before = account_row(session, tenant.account_id).credit_available_micros
    first = export(client, tenant, job_id, format="merged", dtype="bfloat16")
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["id"].startswith("ftexp-") and body["status"] == "queued"
    assert body["object"] == "fine_tuning.job.export" and body["files"] == []
    assert body["price"] == "0.01" and body["cost"] == "0.00"
    again = export(client, tenant, job_id, format="merged", dtype="bfloat16")
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    other_dtype = export(client, tenant, job_id, format="merged", dtype="float32")
    assert other_dtype.status_code == 201 and other_dtype.json()["id"] != body["id"]
    with session_scope(pg_url) as session:
        assert account_row(session, tenant.account_id).credit_available_micros == \
            before - 2 * FEE
        hold = session.scalars(select(LedgerTransaction).where(
            LedgerTransaction.source_id == body["id"], LedgerTransaction.kind == "hold")).one()
        assert hold.account_id == tenant.account_id
        payloads = [m.payload for m in session.scalars(select(OutboxMessage).where(
            OutboxMessage.task == "crma.export_job"))]
        assert {"export_id": body["id"]} in payloads
    listed = client.get(f"/v1/fine_tuning/jobs/{job_id}/exports", headers=tenant.headers)
    assert [e["id"] for e in listed.json()["data"]] == [other_dtype.json()["id"], body["id"]]
    one = client.get(f"/v1/fine_tuning/jobs/{job_id}/exports/{body['id']}",
                     headers=tenant.headers)
    assert one.status_code == 200 and one.json()["dtype"] == "bfloat16"


def test_crma_cannot_be_merged_plainly(client, tenant, pg_url):
    crma_job = finished_job(pg_url, tenant.account_id, crma=True)
    refused = export(client, tenant, crma_job, format="merged")
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "crma_not_foldable" and error["param"] == "format"
    assert "merged_crma" in error["message"] and "trust_remote_code" in error["message"]
    assert export(client, tenant, crma_job, format="merged_crma").status_code == 201
    lora_job = finished_job(pg_url, tenant.account_id, crma=False)
    wrong = export(client, tenant, lora_job, format="merged_crma")
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "invalid_format"


def test_bad_requests(client, tenant, other_tenant, pg_url):
    running = finished_job(pg_url, tenant.account_id, crma=False, status="running")
    response = export(client, tenant, running)
    assert response.status_code == 409 and response.json()["error"]["code"] == \
        "job_not_succeeded"
    mine = finished_job(pg_url, tenant.account_id, crma=False)
    for job_id in (mine, "ftjob-missing"):
        assert export(client, other_tenant, job_id).status_code == 404
        assert client.get(f"/v1/fine_tuning/jobs/{job_id}/exports",
                          headers=other_tenant.headers).status_code == 404
    made = export(client, tenant, mine).json()["id"]
    assert client.get(f"/v1/fine_tuning/jobs/{mine}/exports/{made}",
                      headers=other_tenant.headers).status_code == 404
    assert client.get(f"/v1/fine_tuning/jobs/{mine}/exports/{made}/files/config.json",
                      headers=other_tenant.headers).status_code == 404
    for body in ({"format": "gguf"}, {"dtype": "int8"}, {"format": "merged", "extra": 1}):
        response = export(client, tenant, mine, **body)
        assert response.status_code == 422, (body, response.text)


def test_the_free_plan_has_a_daily_limit(client, pg_url):
    tenant = create_tenant(pg_url, plan="free")
    jobs = [finished_job(pg_url, tenant.account_id, crma=False) for _ in range(4)]
    for job_id in jobs[:3]:
        response = export(client, tenant, job_id)
        assert response.status_code == 201, response.text
        assert response.json()["price"] == "0.00"
    refused = export(client, tenant, jobs[3])
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "export_quota_exceeded"
    assert int(refused.headers["retry-after"]) > 0
    # A repeat of an export already made is not a new one: still answered.
    assert export(client, tenant, jobs[0]).status_code == 200
    with session_scope(pg_url) as session:
        assert session.scalar(select(ModelExport.id).where(ModelExport.job_id == jobs[3])) \
            is None


def test_insufficient_credit_is_a_402(client, pg_url):
    broke = create_tenant(pg_url, plan="pro", credit_micros=0)
    job_id = finished_job(pg_url, broke.account_id, crma=False)
    response = export(client, broke, job_id)
    assert response.status_code == 402, response.text
    assert "export" in response.json()["error"]["message"]


def test_an_export_whose_worker_vanished_is_offered_again_then_failed(client, tenant, pg_url,
                                                                     api_settings):
    from datetime import timedelta

    from sqlalchemy import update

    from app.db.base import utcnow
    from app.services import exports

    job_id = finished_job(pg_url, tenant.account_id, crma=False)
    made = export(client, tenant, job_id).json()["id"]
    with session_scope(pg_url) as session:
        available = account_row(session, tenant.account_id).credit_available_micros
    for attempts, expected in ((1, "queued"), (api_settings.max_attempts, "failed")):
        with session_scope(pg_url) as session:
            session.execute(update(ModelExport).where(ModelExport.id == made).values(
                status="running", attempts=attempts, started_at=utcnow() - timedelta(hours=3)))
        assert exports.recover_stale(api_settings) >= 1
        with session_scope(pg_url) as session:
            row = session.get(ModelExport, made)
            assert row.status == expected
    assert row.error["code"] == "worker_lost"
    with session_scope(pg_url) as session:
        assert account_row(session, tenant.account_id).credit_available_micros == \
            available + FEE  # the hold went back
        offers = [m for m in session.scalars(select(OutboxMessage).where(
            OutboxMessage.task == "crma.export_job")) if m.payload == {"export_id": made}]
        assert len(offers) == 2  # at creation, and once by the recovery
