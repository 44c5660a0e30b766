"""Fine-tuning jobs over HTTP on PostgreSQL: creation writes job + admission + event + outbox
in one transaction; validation, quotas, credit, listing, cancellation."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db.models import Account, Job, JobEvent, OutboxMessage
from app.db.session import session_scope
from tests.app.helpers import Tenant, create_tenant, jsonl, upload_id
from tests.factories import insert_job

pytestmark = pytest.mark.integration

MODEL = "tinyllama-1.1b-chat"


def _create(client: TestClient, tenant: Tenant, **body):
    return client.post("/v1/fine_tuning/jobs", headers=tenant.headers, json=body)


def test_create_writes_job_admission_event_and_outbox(
    client: TestClient, tenant: Tenant, pg_url: str
) -> None:
    file_id = upload_id(client, tenant, jsonl(40))
    response = _create(client, tenant, model=MODEL, training_file=file_id, suffix="bot",
                       metadata={"team": "nlp"}, seed=7,
                       hyperparameters={"n_epochs": 2, "batch_size": "auto"},
                       adapter={"n_streams": 8, "lora_r": 8})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["object"] == "fine_tuning.job" and job["status"] == "queued"
    assert job["organization_id"] == tenant.account_id and job["training_file"] == file_id
    hp = job["hyperparameters"]
    assert (hp["n_epochs"], hp["batch_size"], hp["learning_rate_multiplier"]) == (2, 1, 1.0)
    # The rest at crma_core's defaults; a checkpoint per epoch, no validation file to score.
    assert (hp["lr_scheduler_type"], hp["packing"], hp["n_checkpoints"], hp["n_evals"]) == (
        "linear", False, 2, 0)
    assert job["method"] == {"type": "supervised", "supervised": {"hyperparameters": hp}}
    assert job["adapter"] == {"crma": True, "n_streams": 8, "rank": 1, "lora_r": 8,
                              "lora_alpha": 32, "lora_dropout": 0.0,
                              "lora_trainable_modules": "all-linear", "quantization": None}
    assert (job["seed"], job["suffix"], job["metadata"]) == (7, "bot", {"team": "nlp"})
    assert job["usage"]["estimated_tokens"] > 0 and job["usage"]["hold_micros"] > 0
    assert response.headers["location"] == f"/v1/fine_tuning/jobs/{job['id']}"
    with session_scope(pg_url) as session:
        row = session.get(Job, job["id"])
        assert (row.queue, row.kind, row.offered_at is not None) == ("small", "fine_tune", True)
        outbox = session.scalars(select(OutboxMessage).where(
            OutboxMessage.payload["job_id"].as_string() == job["id"])).all()
        assert [(o.task, o.queue) for o in outbox] == [("crma.run_job", "small")]
        events = session.scalars(select(JobEvent).where(JobEvent.job_id == job["id"])).all()
        assert [e.message for e in events] == [f"Created fine-tuning job: {job['id']}"]
        held = session.get(Account, tenant.account_id).credit_held_micros
        assert held >= job["usage"]["hold_micros"]


def test_auto_epochs_and_queue_for_large_models(client: TestClient, tenant: Tenant,
                                                pg_url: str) -> None:
    file_id = upload_id(client, tenant, jsonl(10))
    job = _create(client, tenant, model="mistral-7b-v0.3", training_file=file_id).json()
    assert job["hyperparameters"]["n_epochs"] == 10  # 10 examples -> 100 example-passes
    with session_scope(pg_url) as session:
        assert session.get(Job, job["id"]).queue == "large"


@pytest.mark.parametrize("field", ["status", "account_id", "trained_tokens", "cost",
                                   "organization_id", "fine_tuned_model", "attempt"])
def test_server_owned_fields_are_rejected(client: TestClient, tenant: Tenant, field: str) -> None:
    file_id = upload_id(client, tenant)
    response = _create(client, tenant, model=MODEL, training_file=file_id, **{field: "x"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (field, "extra_forbidden")


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"model": "gpt-5"}, 400, "model", "model_not_found"),
        ({"training_file": "file-missing"}, 400, "training_file", "file_not_found"),
        ({"validation_file": "file-missing"}, 400, "validation_file", "file_not_found"),
        ({"hyperparameters": {"n_epochs": 0}}, 422, "hyperparameters.n_epochs", "value_error"),
        ({"hyperparameters": {"n_epochs": True}}, 422, "hyperparameters.n_epochs", "value_error"),
        ({"hyperparameters": {"batch_size": "8"}}, 422, "hyperparameters.batch_size",
         "value_error"),
        ({"hyperparameters": {"learning_rate_multiplier": 11}}, 422,
         "hyperparameters.learning_rate_multiplier", "value_error"),
        ({"hyperparameters": {"warmup": 3}}, 422, "hyperparameters.warmup", "extra_forbidden"),
        ({"adapter": {"n_streams": 64}}, 422, "adapter.n_streams", "less_than_equal"),
        ({"adapter": {"quantization": "int8"}}, 422, "adapter.quantization", "literal_error"),
        ({"model": "smollm2-135m-instruct", "adapter": {"quantization": "nf4"}}, 400,
         "adapter.quantization", "qlora_not_supported"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, 422, "metadata", "value_error"),
        ({"suffix": "has spaces"}, 422, "suffix", "string_pattern_mismatch"),
        ({"max_cost": "-1"}, 422, "max_cost", "greater_than"),
        ({"max_cost": "0.0000001"}, 422, "max_cost", "decimal_max_places"),
    ],
)
def test_invalid_job_requests(client: TestClient, tenant: Tenant, body: dict, status: int,
                              param: str, code: str) -> None:
    file_id = upload_id(client, tenant)
    response = _create(client, tenant, **{"model": MODEL, "training_file": file_id, **body})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)


def test_another_tenants_file_is_not_found(client: TestClient, tenant: Tenant,
                                           other_tenant: Tenant) -> None:
    theirs = upload_id(client, other_tenant)
    response = _create(client, tenant, model=MODEL, training_file=theirs)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "file_not_found"


def test_max_cost_sets_a_token_budget(client: TestClient, tenant: Tenant) -> None:
    file_id = upload_id(client, tenant, jsonl(100))
    job = _create(client, tenant, model=MODEL, training_file=file_id, max_cost="0.000500").json()
    assert job["max_cost"] == "0.0005"
    assert job["usage"]["token_budget"] == 2500  # $0.0005 at $0.20 per 1M tokens
    assert job["usage"]["hold_micros"] <= 500


def test_free_plan_quota_headers_and_429(client: TestClient, pg_url: str) -> None:
    free = create_tenant(pg_url, plan="free")
    file_id = upload_id(client, free)
    remaining = []
    for _ in range(3):
        response = _create(client, free, model=MODEL, training_file=file_id)
        assert response.status_code == 201
        assert response.headers["x-quota-runs-limit"] == "3"
        remaining.append(response.headers["x-quota-runs-remaining"])
        assert int(response.headers["x-quota-runs-reset"]) > 0
    assert remaining == ["2", "1", "0"]
    refused = _create(client, free, model=MODEL, training_file=file_id)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert int(refused.headers["retry-after"]) > 0
    paid_only = _create(client, free, model="mistral-7b-v0.3", training_file=file_id)
    assert paid_only.status_code == 400
    assert paid_only.json()["error"]["code"] == "model_not_available_on_plan"


def test_pro_plan_without_credit_gets_402_and_nothing_is_written(
    client: TestClient, pg_url: str
) -> None:
    broke = create_tenant(pg_url, plan="pro", credit_micros=0)
    file_id = upload_id(client, broke, jsonl(50))
    response = _create(client, broke, model=MODEL, training_file=file_id)
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "insufficient_credit"
    with session_scope(pg_url) as session:
        assert session.scalars(select(Job).where(Job.account_id == broke.account_id)).all() == []


def test_idempotent_create_replays_one_job(client: TestClient, tenant: Tenant,
                                           pg_url: str) -> None:
    file_id = upload_id(client, tenant)
    headers = {**tenant.headers, "Idempotency-Key": "job-once"}
    body = {"model": MODEL, "training_file": file_id}
    first = client.post("/v1/fine_tuning/jobs", headers=headers, json=body)
    again = client.post("/v1/fine_tuning/jobs", headers=headers, json=body)
    assert first.json() == again.json() and again.headers["idempotent-replayed"] == "true"
    assert first.headers["x-request-id"] != again.headers["x-request-id"]
    changed = client.post("/v1/fine_tuning/jobs", headers=headers, json={**body, "seed": 1})
    assert changed.status_code == 422
    with session_scope(pg_url) as session:
        jobs = session.scalars(select(Job.id).where(Job.training_file_id == file_id)).all()
    assert jobs == [first.json()["id"]]


def test_list_newest_first_with_cursor(client: TestClient, pg_url: str) -> None:
    owner = create_tenant(pg_url, credit_micros=10_000_000)
    file_id = upload_id(client, owner)
    ids = [_create(client, owner, model=MODEL, training_file=file_id).json()["id"]
           for _ in range(4)]
    page = client.get("/v1/fine_tuning/jobs?limit=3", headers=owner.headers).json()
    assert page["object"] == "list" and page["has_more"] is True
    assert [j["id"] for j in page["data"]] == ids[::-1][:3]
    rest = client.get(f"/v1/fine_tuning/jobs?after={ids[1]}", headers=owner.headers).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and rest["has_more"] is False


def test_cancel_queued_job_settles_at_once(client: TestClient, tenant: Tenant,
                                           pg_url: str) -> None:
    file_id = upload_id(client, tenant, jsonl(30))
    with session_scope(pg_url) as session:
        held_before = session.get(Account, tenant.account_id).credit_held_micros
    job = _create(client, tenant, model=MODEL, training_file=file_id).json()
    response = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=tenant.headers)
    assert response.status_code == 200
    cancelled = response.json()
    assert (cancelled["status"], cancelled["cost"]) == ("cancelled", "0.00")
    assert cancelled["finished_at"] is not None and cancelled["cancel_requested"] is True
    with session_scope(pg_url) as session:
        assert session.get(Account, tenant.account_id).credit_held_micros == held_before
    again = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=tenant.headers)
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_not_cancellable"
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", headers=tenant.headers).json()
    assert [e["message"] for e in events["data"]][0] == "Job cancelled before it started."


def test_cancel_running_job_requests_cancellation(client: TestClient, tenant: Tenant,
                                                  pg_url: str) -> None:
    with session_scope(pg_url) as session:
        job = insert_job(session, account_id=tenant.account_id, status="running", attempt=1)
    response = client.post(f"/v1/fine_tuning/jobs/{job.id}/cancel", headers=tenant.headers)
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["cancel_requested"]) == ("running", True)
    with session_scope(pg_url) as session:
        row = session.get(Job, job.id)
        assert row.status == "running" and row.cancel_requested_at is not None
    # Asking twice is harmless; still running, still one request event.
    assert client.post(f"/v1/fine_tuning/jobs/{job.id}/cancel",
                       headers=tenant.headers).status_code == 200
    messages = [e["message"] for e in client.get(
        f"/v1/fine_tuning/jobs/{job.id}/events", headers=tenant.headers).json()["data"]]
    assert messages.count("Cancellation requested.") == 1


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_cancel_finished_job_is_409(client: TestClient, tenant: Tenant, pg_url: str,
                                    status: str) -> None:
    with session_scope(pg_url) as session:
        job = insert_job(session, account_id=tenant.account_id, status=status)
    response = client.post(f"/v1/fine_tuning/jobs/{job.id}/cancel", headers=tenant.headers)
    assert response.status_code == 409
    with session_scope(pg_url) as session:
        assert session.get(Job, job.id).status == status


def test_succeeded_job_shape(client: TestClient, tenant: Tenant, pg_url: str) -> None:
    with session_scope(pg_url) as session:
        job = insert_job(session, account_id=tenant.account_id, status="succeeded", model=MODEL,
                         trained_tokens=1234, suffix="s", error=None,
                         # A row written before JobSettings existed (version 1).
                         settings={"version": 1, "hyperparameters": {
                             "n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 0.5},
                             "adapter": {"crma": False, "lora_r": 8}})
    body = client.get(f"/v1/fine_tuning/jobs/{job.id}", headers=tenant.headers).json()
    assert body["trained_tokens"] == 1234
    hp = body["hyperparameters"]
    assert (hp["n_epochs"], hp["batch_size"], hp["learning_rate_multiplier"]) == (1, 2, 0.5)
    # Fields added later read as crma_core's defaults (n_evals: the worker's old 10).
    assert (hp["max_seq_len"], hp["n_evals"], hp["n_checkpoints"]) == (1024, None, None)
    assert body["adapter"] == {"crma": False, "n_streams": 4, "rank": 1, "lora_r": 8,
                               "lora_alpha": 32, "lora_dropout": 0.0,
                               "lora_trainable_modules": "all-linear", "quantization": None}
    assert body["fine_tuned_model"] == f"ft:{MODEL}:{tenant.account_id}:s:{job.id}"
    failed = None
    with session_scope(pg_url) as session:
        failed = insert_job(session, account_id=tenant.account_id, status="failed",
                            error={"code": "out_of_memory", "message": "CUDA OOM"})
    error = client.get(f"/v1/fine_tuning/jobs/{failed.id}", headers=tenant.headers).json()["error"]
    assert error == {"code": "out_of_memory", "message": "CUDA OOM", "param": None}
