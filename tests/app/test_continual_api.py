"""Continual runs over HTTP: one queued stage job per domain (only the first enqueued), status
derived from the stages, appending domains to a finished run, cancellation, artifacts."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from app.db.models import ContinualRun, Job, OutboxMessage
from app.db.session import session_scope
from app.domain.job_state import run_status
from tests.app.helpers import Tenant, create_tenant, upload_id

pytestmark = pytest.mark.integration

MODEL = "tinyllama-1.1b-chat"


def _domains(client: TestClient, tenant: Tenant, names: list[str]) -> list[dict]:
    return [{"name": n, "training_file": upload_id(client, tenant),
             "validation_file": upload_id(client, tenant)} for n in names]


def _set_stage_status(pg_url: str, job_ids: list[str], status: str) -> None:
    with session_scope(pg_url) as session:
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(status=status))


def test_create_run_admits_every_stage_and_enqueues_the_first(
    client: TestClient, tenant: Tenant, pg_url: str
) -> None:
    body = {"model": MODEL, "domains": _domains(client, tenant, ["medical", "legal", "code"]),
            "hyperparameters": {"n_epochs": 1}, "seed": 3, "metadata": {"exp": "drift"}}
    response = client.post("/v1/continual/runs", headers=tenant.headers, json=body)
    assert response.status_code == 201, response.text
    run = response.json()
    assert run["object"] == "continual.run" and run["id"].startswith("clrun-")
    assert (run["status"], run["mode"], run["report"]) == ("queued", "modular", None)
    assert [s["name"] for s in run["stages"]] == ["medical", "legal", "code"]
    assert [s["index"] for s in run["stages"]] == [0, 1, 2]
    assert all(s["status"] == "queued" for s in run["stages"])
    job_ids = [s["job_id"] for s in run["stages"]]
    with session_scope(pg_url) as session:
        jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(job_ids)))}
        assert {j.kind for j in jobs.values()} == {"continual_stage"}
        assert [jobs[i].stage_index for i in job_ids] == [0, 1, 2]
        assert all(jobs[i].validation_file_id for i in job_ids)
        assert all(jobs[i].hold_micros > 0 for i in job_ids)
        enqueued = {o.payload["job_id"] for o in session.scalars(select(OutboxMessage))}
        assert [i in enqueued for i in job_ids] == [True, False, False]
    # Stage jobs are reachable by id but not listed as fine-tuning jobs.
    listed = client.get("/v1/fine_tuning/jobs", headers=tenant.headers).json()["data"]
    assert not set(job_ids) & {j["id"] for j in listed}
    stage = client.get(f"/v1/fine_tuning/jobs/{job_ids[1]}", headers=tenant.headers).json()
    assert (stage["continual_run_id"], stage["stage_index"]) == (run["id"], 1)


def test_validation_file_is_required_and_names_are_unique(client: TestClient,
                                                          tenant: Tenant) -> None:
    domains = _domains(client, tenant, ["a"])
    del domains[0]["validation_file"]
    missing = client.post("/v1/continual/runs", headers=tenant.headers,
                          json={"model": MODEL, "domains": domains})
    assert missing.status_code == 422
    assert missing.json()["error"]["param"] == "domains[0].validation_file"
    twice = _domains(client, tenant, ["a", "a"])
    dup = client.post("/v1/continual/runs", headers=tenant.headers,
                      json={"model": MODEL, "domains": twice})
    assert dup.status_code == 422 and dup.json()["error"]["param"] == "domains"
    bad_mode = client.post("/v1/continual/runs", headers=tenant.headers,
                           json={"model": MODEL, "mode": "greedy",
                                 "domains": _domains(client, tenant, ["b"])})
    assert bad_mode.status_code == 422 and bad_mode.json()["error"]["param"] == "mode"
    wrong_file = _domains(client, tenant, ["c"])
    wrong_file[0]["training_file"] = "file-nope"
    not_found = client.post("/v1/continual/runs", headers=tenant.headers,
                            json={"model": MODEL, "domains": wrong_file})
    assert not_found.status_code == 400
    assert not_found.json()["error"]["param"] == "domains[0].training_file"


def test_free_plan_counts_each_stage_as_a_run(client: TestClient, pg_url: str) -> None:
    free = create_tenant(pg_url, plan="free")
    body = {"model": MODEL, "domains": _domains(client, free, ["a", "b", "c", "d"])}
    refused = client.post("/v1/continual/runs", headers=free.headers, json=body)
    assert refused.status_code == 429
    with session_scope(pg_url) as session:
        assert session.scalars(select(ContinualRun).where(
            ContinualRun.account_id == free.account_id)).all() == []
    body["domains"] = body["domains"][:2]
    accepted = client.post("/v1/continual/runs", headers=free.headers, json=body)
    assert accepted.status_code == 201
    assert accepted.headers["x-quota-runs-remaining"] == "1"


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [(["queued", "queued"], "queued"), (["running", "queued"], "running"),
     (["succeeded", "queued"], "running"), (["succeeded", "succeeded"], "succeeded"),
     (["succeeded", "failed", "cancelled"], "failed"), (["succeeded", "cancelled"], "cancelled"),
     ([], "queued")],
)
def test_run_status_is_derived_from_stages(statuses: list[str], expected: str) -> None:
    assert run_status(statuses) == expected


def test_append_domains_only_after_every_stage_succeeded(
    client: TestClient, tenant: Tenant, pg_url: str
) -> None:
    run = client.post("/v1/continual/runs", headers=tenant.headers, json={
        "model": MODEL, "domains": _domains(client, tenant, ["a", "b"])}).json()
    url = f"/v1/continual/runs/{run['id']}"
    job_ids = [s["job_id"] for s in run["stages"]]
    more = {"domains": _domains(client, tenant, ["c"])}
    early = client.post(url + "/domains", headers=tenant.headers, json=more)
    assert early.status_code == 409 and early.json()["error"]["code"] == "run_not_finished"
    _set_stage_status(pg_url, job_ids[:1], "succeeded")
    assert client.get(url, headers=tenant.headers).json()["status"] == "running"
    _set_stage_status(pg_url, job_ids, "succeeded")
    assert client.get(url, headers=tenant.headers).json()["status"] == "succeeded"
    clash = client.post(url + "/domains", headers=tenant.headers,
                        json={"domains": _domains(client, tenant, ["a"])})
    assert clash.status_code == 400 and clash.json()["error"]["code"] == "duplicate_domain"
    appended = client.post(url + "/domains", headers=tenant.headers, json=more)
    assert appended.status_code == 201, appended.text
    stages = appended.json()["stages"]
    assert [(s["index"], s["name"], s["status"]) for s in stages] == [
        (0, "a", "succeeded"), (1, "b", "succeeded"), (2, "c", "queued")]
    assert appended.json()["status"] == "running"
    with session_scope(pg_url) as session:
        enqueued = {o.payload["job_id"] for o in session.scalars(select(OutboxMessage))}
    assert stages[2]["job_id"] in enqueued


def test_cancel_run_cancels_queued_stages_and_requests_the_running_one(
    client: TestClient, tenant: Tenant, pg_url: str
) -> None:
    run = client.post("/v1/continual/runs", headers=tenant.headers, json={
        "model": MODEL, "domains": _domains(client, tenant, ["a", "b", "c"])}).json()
    job_ids = [s["job_id"] for s in run["stages"]]
    _set_stage_status(pg_url, job_ids[:1], "succeeded")
    _set_stage_status(pg_url, job_ids[1:2], "running")
    response = client.post(f"/v1/continual/runs/{run['id']}/cancel", headers=tenant.headers)
    assert response.status_code == 200
    assert [s["status"] for s in response.json()["stages"]] == ["succeeded", "running",
                                                                "cancelled"]
    with session_scope(pg_url) as session:
        assert session.get(Job, job_ids[1]).cancel_requested_at is not None
    _set_stage_status(pg_url, job_ids[1:2], "cancelled")
    final = client.get(f"/v1/continual/runs/{run['id']}", headers=tenant.headers).json()
    assert final["status"] == "cancelled"
    again = client.post(f"/v1/continual/runs/{run['id']}/cancel", headers=tenant.headers)
    assert again.status_code == 409


def test_cancelling_a_stage_job_cancels_its_run(client: TestClient, tenant: Tenant) -> None:
    run = client.post("/v1/continual/runs", headers=tenant.headers, json={
        "model": MODEL, "domains": _domains(client, tenant, ["a", "b"])}).json()
    first = run["stages"][0]["job_id"]
    assert client.post(f"/v1/fine_tuning/jobs/{first}/cancel",
                       headers=tenant.headers).status_code == 200
    after = client.get(f"/v1/continual/runs/{run['id']}", headers=tenant.headers).json()
    assert [s["status"] for s in after["stages"]] == ["cancelled", "cancelled"]


def test_list_runs_and_report(client: TestClient, pg_url: str) -> None:
    owner = create_tenant(pg_url, credit_micros=10_000_000)
    ids = [client.post("/v1/continual/runs", headers=owner.headers, json={
        "model": MODEL, "domains": _domains(client, owner, ["x"])}).json()["id"] for _ in range(3)]
    report = {"loss_matrix": [[1.2]], "drift": {"x": 0.0}}
    with session_scope(pg_url) as session:
        session.execute(update(ContinualRun).where(ContinualRun.id == ids[0])
                        .values(report=report))
    page = client.get("/v1/continual/runs?limit=2", headers=owner.headers).json()
    assert [r["id"] for r in page["data"]] == ids[::-1][:2] and page["has_more"]
    assert all(len(r["stages"]) == 1 for r in page["data"])
    one = client.get(f"/v1/continual/runs/{ids[0]}", headers=owner.headers).json()
    assert one["report"] == report


def _stage_settings(pg_url: str, job_ids: list[str]) -> list[dict]:
    with session_scope(pg_url) as session:
        jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(job_ids)))}
        return [jobs[i].settings for i in job_ids]


def test_drift_budget_and_baseline_are_the_runs_and_every_stage_keeps_them(
    client: TestClient, tenant: Tenant, pg_url: str
) -> None:
    default = client.post("/v1/continual/runs", headers=tenant.headers, json={
        "model": MODEL, "domains": _domains(client, tenant, ["a"])}).json()
    assert (default["drift_budget_pct"], default["baseline"]) == (0.5, False)
    run = client.post("/v1/continual/runs", headers=tenant.headers, json={
        "model": MODEL, "domains": _domains(client, tenant, ["a", "b"]), "drift_budget_pct": 0,
        "baseline": True,
        "hyperparameters": {"crma_learning_rate": 1e-5, "learning_rate_multiplier": 2,
                            "max_steps": 7, "max_seq_len": 128}}).json()
    assert (run["drift_budget_pct"], run["baseline"]) == (0.0, True)
    url = f"/v1/continual/runs/{run['id']}"
    job_ids = [s["job_id"] for s in run["stages"]]
    for stored in _stage_settings(pg_url, job_ids):
        assert stored["continual"] == {"drift_budget_pct": 0.0, "baseline": True}
        hp = stored["hyperparameters"]
        assert (hp["crma_learning_rate"], hp["max_steps"], hp["max_seq_len"]) == (1e-5, 7, 128)
    _set_stage_status(pg_url, job_ids, "succeeded")
    appended = client.post(url + "/domains", headers=tenant.headers,
                           json={"domains": _domains(client, tenant, ["c"])}).json()
    new_stage = appended["stages"][2]["job_id"]
    assert _stage_settings(pg_url, [new_stage])[0]["continual"] == {
        "drift_budget_pct": 0.0, "baseline": True}
    shown = client.get(url, headers=tenant.headers).json()
    assert (shown["drift_budget_pct"], shown["baseline"]) == (0.0, True)


@pytest.mark.parametrize(("extra", "param"), [
    ({"drift_budget_pct": -0.1}, "drift_budget_pct"),
    ({"drift_budget_pct": "lots"}, "drift_budget_pct"),
    ({"drift_budget_pct": 101}, "drift_budget_pct"),
    ({"baseline": "yes please"}, "baseline"),
    ({"mode": "frozen", "baseline": True}, "baseline"),
    ({"hyperparameters": {"crma_learning_rate": -1e-5}}, "hyperparameters.crma_learning_rate"),
    ({"hyperparameters": {"crma_learning_rate": 0.5}}, "hyperparameters.crma_learning_rate"),
    ({"hyperparameters": {"crma_mixing_learning_rate": True}},
     "hyperparameters.crma_mixing_learning_rate"),
    ({"hyperparameters": {"crma_gate_learning_rate": "fast"}},
     "hyperparameters.crma_gate_learning_rate"),
    ({"hyperparameters": {"max_steps": 0}}, "hyperparameters.max_steps"),
    ({"hyperparameters": {"max_seq_len": 8}}, "hyperparameters.max_seq_len"),
])
def test_bad_continual_settings_are_refused_by_name(
    client: TestClient, tenant: Tenant, extra: dict, param: str
) -> None:
    body = {"model": MODEL, "domains": _domains(client, tenant, ["a"]), **extra}
    for path in ("/v1/continual/runs", "/v1/continual/runs/estimate"):
        response = client.post(path, headers=tenant.headers, json=body)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["param"] == param and error["message"], error


def test_the_estimate_counts_the_baseline_and_max_steps(client: TestClient,
                                                        tenant: Tenant) -> None:
    domains = _domains(client, tenant, ["a", "b"])

    def estimate(**extra) -> dict:
        response = client.post("/v1/continual/runs/estimate", headers=tenant.headers,
                               json={"model": MODEL, "domains": domains, **extra})
        assert response.status_code == 200, response.text
        return response.json()

    plain, doubled = estimate(), estimate(baseline=True)
    assert plain["estimated_tokens"] > 0 and plain["baseline_tokens"] == 0
    assert doubled["estimated_tokens"] == 2 * plain["estimated_tokens"]
    assert doubled["baseline_tokens"] == plain["estimated_tokens"]
    assert doubled["list_price_micros"] >= 2 * plain["list_price_micros"] - 1
    # upload_id's file holds 10 examples: 4 epochs at batch 1 plan 40 steps per stage, so
    # max_steps 4 trains a tenth of the tokens (rounded up).
    capped = estimate(hyperparameters={"n_epochs": 4, "batch_size": 1, "max_steps": 4})
    full = estimate(hyperparameters={"n_epochs": 4, "batch_size": 1})
    assert [s["estimated_tokens"] for s in capped["stages"]] == [
        -(-s["estimated_tokens"] // 10) for s in full["stages"]]
