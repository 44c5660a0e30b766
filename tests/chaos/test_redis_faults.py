"""The broker restarted and the broker's data lost (docs/reliability.md), with jobs queued in
Redis and one running, on a private Redis (AOF on, like production):

- restart: the running job keeps training (its lease is in PostgreSQL), the queued messages
  survive (AOF), the worker reconnects and consumes again, a job created through the API while
  Redis is down is a 201 (the outbox holds it) and runs once Redis is back;
- FLUSHALL: every queued message is gone; the reaper re-offers the jobs queued for longer than
  `stale_queued_s`, the relay publishes them again and every job finishes, each with one
  attempt (nothing ran twice)."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from app.db.session import session_scope
from app.services import accounts, billing
from tests.worker.stack import MODEL_ID, chat_examples, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

TERMINAL = ("succeeded", "failed", "cancelled")


def _queued_messages(services, stack) -> int:  # noqa: ANN001
    import redis

    client = redis.Redis.from_url(services.redis.url)
    prefix = stack.settings.broker_key_prefix
    return sum(client.llen(prefix + queue) for queue in ("small", "large"))


def _claims(stack, job_id: str) -> list[str]:  # noqa: ANN001
    return [e.dedupe_key for e in stack.events(job_id)
            if e.dedupe_key and e.dedupe_key.startswith("status:running:")]


def _running_and_queued(stack, services, n: int) -> tuple[str, list[str]]:  # noqa: ANN001
    """Submit n jobs to one worker; return (the running one, the queued ones) once the others
    are waiting in Redis."""
    account_id, first = stack.submit(n_epochs=2)
    others = [stack.submit(account_id=account_id, n_epochs=1)[1] for _ in range(n - 1)]
    wait_for(lambda: stack.job(first).status == "running" and
             max(stack.step_losses(first), default=0) >= 2, 120, what="the first job to train",
             diagnose=lambda: stack._diagnose(first))
    wait_for(lambda: _queued_messages(services, stack) >= len(others), 30,
             what="the other jobs to wait in Redis")
    assert all(stack.job(j).status == "queued" for j in others)
    return first, others


def test_redis_restart_loses_nothing_and_workers_consume_again(services, make_chaos_stack,
                                                               tmp_path) -> None:
    from app.main import create_app

    stack = make_chaos_stack()
    stack.start_worker()
    first, queued = _running_and_queued(stack, services, 3)
    with session_scope(services.database_url) as session:
        account, key = accounts.create_account(session, name="chaos api", plan="pro", pepper="")
        billing.add_credit(session, account_id=account.id, amount_micros=50_000_000, memo="t")
    headers = {"Authorization": f"Bearer {key}"}
    data = "".join(__import__("json").dumps(e) + "\n" for e in chat_examples(24)).encode()
    body = {"model": MODEL_ID, "hyperparameters": {"n_epochs": 1, "batch_size": 2}}
    with TestClient(create_app(stack.settings), raise_server_exceptions=False) as api:
        file_id = api.post("/v1/files", headers=headers, data={"purpose": "fine-tune"},
                           files={"file": ("t.jsonl", data, "application/jsonl")}).json()["id"]
        steps_before = max(stack.step_losses(first))
        services.redis.stop()
        down_at = time.monotonic()
        created = api.post("/v1/fine_tuning/jobs", headers=headers,
                           json={**body, "training_file": file_id})
        ready = api.get("/readyz")
        time.sleep(max(0.0, 5 - (time.monotonic() - down_at)))  # Redis down for 5 s
        trained_while_down = max(stack.step_losses(first)) - steps_before
        services.redis.start()
        restarted_at = time.monotonic()
    assert created.status_code == 201, created.text  # the outbox absorbed the outage
    assert ready.status_code == 503 and ready.json()["checks"]["broker"].startswith("error")
    assert ready.json()["checks"]["database"] == "ok"
    api_job = created.json()["id"]

    wait_for(lambda: stack.job(queued[0]).status != "queued", 120,
             what="the worker to consume after the restart",
             diagnose=lambda: stack._diagnose(queued[0]))
    consumed_after_s = time.monotonic() - restarted_at
    jobs = [first, *queued, api_job]
    for job_id in jobs:
        job = stack.wait_status(job_id, TERMINAL, 180)
        assert job.status == "succeeded", (job_id, job.error)
    print(f"redis restart: down 5 s, the running job trained {trained_while_down} steps "
          f"meanwhile, consumption resumed {consumed_after_s:.1f} s after the restart, "
          f"{len(jobs)}/{len(jobs)} jobs succeeded")
    assert trained_while_down > 0  # the lease lives in PostgreSQL: training went on
    assert stack.job(first).attempt == 1
    assert all(len(_claims(stack, j)) == 1 for j in jobs)


def test_redis_flushall_loses_no_job(services, make_chaos_stack) -> None:
    stack = make_chaos_stack(stale_queued_s=6.0)
    stack.start_worker()
    first, queued = _running_and_queued(stack, services, 3)
    services.redis.flushall()
    flushed_at = time.monotonic()
    assert _queued_messages(services, stack) == 0
    jobs = [first, *queued]
    for job_id in jobs:
        job = stack.wait_status(job_id, TERMINAL, 240)
        assert job.status == "succeeded", (job_id, job.error)
    all_done_s = time.monotonic() - flushed_at
    # Nothing ran twice: one claim, one attempt per job.
    for job_id in jobs:
        assert stack.job(job_id).attempt == 1
        assert _claims(stack, job_id) == ["status:running:1"]
    # The worker still consumes (its queues and bindings came back after the flush).
    _, later = stack.submit(n_epochs=1)
    assert stack.wait_status(later, TERMINAL, 120).status == "succeeded"
    print(f"redis FLUSHALL: {len(jobs)} jobs (1 running, {len(queued)} queued) all succeeded "
          f"{all_done_s:.1f} s after the flush; one attempt each")
