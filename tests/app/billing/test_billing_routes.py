"""The billing endpoints over HTTP (FastAPI app on PostgreSQL): estimate, balance, ledger,
usage, quota headers and the 402/429 envelopes on job creation."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db.models import Job
from app.db.session import get_sessionmaker
from app.domain.job_state import JobStatus
from app.services import accounts, billing
from app.services.job_status import transition_job
from app.services.tokens import HEURISTIC_MARGIN
from app.settings import Settings
from tests.factories import PRICES

CHAT = {"messages": [{"role": "user", "content": "What is the capital of France?"},
                     {"role": "assistant", "content": "Paris is the capital of France."}]}


@pytest.fixture
def client(pg_url: str, tmp_path: Path) -> Iterator[TestClient]:
    from app.main import create_app

    settings = Settings(database_url=pg_url, data_dir=tmp_path,
                        storage_url=(tmp_path / "objects").as_uri())
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def new_account(pg_url: str, plan: str, credit_micros: int = 0) -> tuple[str, dict[str, str]]:
    with get_sessionmaker(pg_url)() as session:
        account, key = accounts.create_account(session, name="routes", plan=plan, pepper="")
        if credit_micros:
            billing.add_credit(session, account_id=account.id, amount_micros=credit_micros)
        session.commit()
    return account.id, {"Authorization": f"Bearer {key}"}


def upload(client: TestClient, headers: dict[str, str], examples: int = 20) -> dict:
    body = "\n".join(json.dumps(CHAT) for _ in range(examples)).encode()
    response = client.post("/v1/files", headers=headers, data={"purpose": "fine-tune"},
                           files={"file": ("train.jsonl", body, "application/jsonl")})
    assert response.status_code == 201, response.text
    return response.json()


def test_free_estimate_create_and_quota_headers(client: TestClient, pg_url: str) -> None:
    _, headers = new_account(pg_url, "free")
    file = upload(client, headers)
    body = {"model": "tinyllama-1.1b-chat", "training_file": file["id"],
            "hyperparameters": {"n_epochs": 2}}
    estimate = client.post("/v1/fine_tuning/jobs/estimate", headers=headers, json=body)
    assert estimate.status_code == 200, estimate.text
    got = estimate.json()
    # TinyLlama's tokenizer is not installed here: the heuristic count, with its margin.
    assert file["token_estimate_method"]["llama"].startswith("heuristic:")
    tokens = math.ceil(file["token_estimates"]["llama"] * HEURISTIC_MARGIN) * 2
    assert got["object"] == "fine_tuning.job.estimate"
    assert got["estimated_tokens"] == got["trained_tokens"] == tokens and got["n_epochs"] == 2
    assert got["allowed_to_proceed"] and got["reason"] is None
    assert got["price_micros"] == 0 and got["price"] == "0.00"
    assert got["list_price_micros"] == -(-tokens * 200_000 // 1_000_000)
    assert got["free_runs_remaining"] == 3 and got["token_budget"] == 2_000_000
    assert got["expected_duration_s"] >= 1
    auto = client.post("/v1/fine_tuning/jobs/estimate", headers=headers,
                       json={"model": "tinyllama-1.1b-chat", "training_file": file["id"]}).json()
    assert auto["n_epochs"] == 5  # 20 examples: "auto" gives 100 example-passes
    for remaining in (2, 1, 0):
        created = client.post("/v1/fine_tuning/jobs", headers=headers, json=body)
        assert created.status_code == 201, created.text
        assert created.headers["x-quota-runs-limit"] == "3"
        assert created.headers["x-quota-runs-remaining"] == str(remaining)
        assert int(created.headers["x-quota-runs-reset"]) % 86400 == 0
    refused = client.post("/v1/fine_tuning/jobs", headers=headers, json=body)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert int(refused.headers["retry-after"]) > 0
    assert refused.headers["x-quota-runs-remaining"] == "0"
    after = client.post("/v1/fine_tuning/jobs/estimate", headers=headers, json=body).json()
    assert not after["allowed_to_proceed"] and after["reason"] == "quota_exceeded"
    wrong = client.post("/v1/fine_tuning/jobs/estimate", headers=headers,
                        json={**body, "model": "mistral-7b-v0.3"}).json()
    assert not wrong["allowed_to_proceed"] and wrong["reason"] == "model_not_available_on_plan"
    balance = client.get("/v1/billing/balance", headers=headers).json()
    assert balance["plan"] == "free" and balance["free_runs"]["remaining"] == 0


def test_pro_hold_capture_ledger_and_usage(client: TestClient, pg_url: str) -> None:
    account_id, headers = new_account(pg_url, "pro", credit_micros=1_000_000)
    file = upload(client, headers)
    body = {"model": "mistral-7b-v0.3", "training_file": file["id"],
            "hyperparameters": {"n_epochs": 3}}
    estimate = client.post("/v1/fine_tuning/jobs/estimate", headers=headers, json=body).json()
    price = estimate["price_micros"]
    per_epoch = math.ceil(file["token_estimates"]["mistral"] * HEURISTIC_MARGIN)
    assert price == -(-per_epoch * 3 * 500_000 // 1_000_000)
    assert estimate["allowed_to_proceed"] and estimate["free_runs_remaining"] is None
    created = client.post("/v1/fine_tuning/jobs", headers=headers, json=body)
    assert created.status_code == 201 and "x-quota-runs-limit" not in created.headers
    job_id = created.json()["id"]
    balance = client.get("/v1/billing/balance", headers=headers).json()
    assert (balance["available_micros"], balance["held_micros"]) == (1_000_000 - price, price)

    with get_sessionmaker(pg_url)() as session:  # the worker's end of the job
        transition_job(session, job_id=job_id, to=JobStatus.RUNNING, expected=[JobStatus.QUEUED])
        transition_job(session, job_id=job_id, to=JobStatus.SUCCEEDED,
                       expected=[JobStatus.RUNNING], values={"trained_tokens": 1000})
        billing.settle_job(session, job_id=job_id, prices=PRICES)
        session.commit()
    balance = client.get("/v1/billing/balance", headers=headers).json()
    assert balance == {**balance, "available_micros": 999_500, "held_micros": 0,
                       "available": "0.9995", "held": "0.00"}
    ledger = client.get("/v1/billing/ledger", headers=headers, params={"limit": 2}).json()
    assert [t["kind"] for t in ledger["data"]] in (["release", "capture"], ["capture", "release"])
    assert ledger["has_more"]
    rest = client.get("/v1/billing/ledger", headers=headers,
                      params={"after": ledger["data"][-1]["id"]}).json()
    assert [t["kind"] for t in rest["data"]] == ["hold", "credit"] and not rest["has_more"]
    for tx in ledger["data"] + rest["data"]:
        assert sum(e["amount_micros"] for e in tx["entries"]) == 0
    capture = next(t for t in ledger["data"] if t["kind"] == "capture")
    assert capture["source_id"] == job_id
    assert {(e["account"], e["bucket"], e["amount_micros"]) for e in capture["entries"]} == {
        ("self", "held", -500), ("platform", "revenue", 500)}
    usage = client.get("/v1/usage", headers=headers).json()
    assert [(u["model"], u["jobs"], u["trained_tokens"], u["cost_micros"]) for u in usage["data"]] \
        == [("mistral-7b-v0.3", 1, 1000, 500)]
    assert usage["total_cost"] == "0.0005"
    bad = client.get("/v1/usage", headers=headers,
                     params={"start_date": "2031-02-01", "end_date": "2031-01-01"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "start_date"
    capped = client.post("/v1/fine_tuning/jobs", headers=headers,
                         json={**body, "max_cost": "0.0001"})
    assert capped.status_code == 201, capped.text
    assert capped.json()["usage"]["token_budget"] == 200  # $0.0001 at $0.50 per 1M tokens
    assert capped.json()["usage"]["hold_micros"] == 100
    _, poor = new_account(pg_url, "pro", credit_micros=1)
    poor_file = upload(client, poor)
    broke = client.post("/v1/fine_tuning/jobs", headers=poor,
                        json={**body, "training_file": poor_file["id"]})
    assert broke.status_code == 402 and broke.json()["error"]["code"] == "insufficient_credit"
    broke_estimate = client.post("/v1/fine_tuning/jobs/estimate", headers=poor,
                                 json={**body, "training_file": poor_file["id"]}).json()
    assert broke_estimate["reason"] == "insufficient_credit"
    with get_sessionmaker(pg_url)() as session:
        assert billing.reconcile(session, account_id).ok


def test_continual_estimate_counts_a_run_per_stage(client: TestClient, pg_url: str) -> None:
    _, headers = new_account(pg_url, "free")
    train, holdout = upload(client, headers), upload(client, headers, examples=5)
    domains = [{"name": n, "training_file": train["id"], "validation_file": holdout["id"]}
               for n in ("medical", "legal", "code", "finance")]
    body = {"model": "tinyllama-1.1b-chat", "domains": domains[:3]}
    ok = client.post("/v1/continual/runs/estimate", headers=headers, json=body)
    assert ok.status_code == 200, ok.text
    got = ok.json()
    assert got["runs_needed"] == 3 and got["allowed_to_proceed"]
    assert [s["name"] for s in got["stages"]] == ["medical", "legal", "code"]
    assert got["trained_tokens"] == sum(s["trained_tokens"] for s in got["stages"])
    four = client.post("/v1/continual/runs/estimate", headers=headers,
                       json={**body, "domains": domains}).json()
    assert not four["allowed_to_proceed"] and four["reason"] == "quota_exceeded"
    missing = client.post("/v1/continual/runs/estimate", headers=headers, json={
        **body, "domains": [{**domains[0], "training_file": "file-nope"}]})
    assert missing.status_code in (400, 404)
    assert missing.json()["error"]["param"] == "domains[0].training_file"


def test_billing_needs_a_key(client: TestClient) -> None:
    for path in ("/v1/billing/balance", "/v1/billing/ledger", "/v1/usage"):
        assert client.get(path).status_code == 401


def test_each_continual_stage_is_a_free_run(client: TestClient, pg_url: str) -> None:
    account_id, headers = new_account(pg_url, "free")
    train, holdout = upload(client, headers), upload(client, headers, examples=5)
    domain = {"training_file": train["id"], "validation_file": holdout["id"]}
    two = {"model": "tinyllama-1.1b-chat",
           "domains": [{"name": "a", **domain}, {"name": "b", **domain}]}
    created = client.post("/v1/continual/runs", headers=headers, json=two)
    assert created.status_code == 201, created.text
    assert created.headers["x-quota-runs-remaining"] == "1"
    refused = client.post("/v1/continual/runs", headers=headers, json=two)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "quota_exceeded"
    # The refused run left nothing behind: its first stage's reservation rolled back too.
    balance = client.get("/v1/billing/balance", headers=headers).json()
    assert balance["free_runs"]["remaining"] == 1
    with get_sessionmaker(pg_url)() as session:
        assert session.scalar(select(func.count()).select_from(Job)
                              .where(Job.account_id == account_id)) == 2
