"""End to end through real `crma worker` processes (Celery over Redis), PostgreSQL, the outbox
relay and the reaper: a tiny random-weight model trains for real on the CPU. These tests share
the session's stack (two workers); tests that kill workers are in test_worker_recovery.py."""

from __future__ import annotations

import hashlib
import re

import pytest
from sqlalchemy import func, select

from app.db.models import Artifact, Checkpoint, Job, LedgerTransaction
from app.domain.pricing import price_micros
from app.storage.factory import open_store
from tests.factories import PRICES, make_account
from tests.worker.stack import MODEL_ID, TERMINAL, wait_for

pytestmark = pytest.mark.integration

def _task_results(stack, job_id: str) -> list[tuple[str, float]]:
    """(outcome, seconds) of every delivery of `job_id`, from the workers' Celery logs."""
    pattern = re.compile(r"Task crma\.run_job\[[^\]]+\] succeeded in ([0-9.]+)s: "
                         + re.escape(f"'{job_id}: ") + r"(\w+)'")
    return [(m.group(2), float(m.group(1)))
            for w in stack.workers for m in pattern.finditer(w.log())]


def test_submitted_job_succeeds_with_events_checkpoints_and_verified_artifacts(worker_stack) -> None:
    stack = worker_stack
    stack.ensure_workers(2)
    account_id, job_id = stack.submit()
    job = stack.wait_status(job_id, ("succeeded", "failed", "cancelled"), 120)
    assert job.status == "succeeded", job.error
    assert job.attempt == 1 and job.stop_reason == "completed"
    assert job.trained_tokens > 0 and job.cost_micros > 0
    assert job.lease_owner is None and job.finished_at is not None

    events = stack.events(job_id)
    keys = [e.dedupe_key for e in events]
    steps = sorted(stack.step_losses(job_id))
    assert steps == list(range(1, 13))  # 24 examples, batch 2, 1 epoch
    assert keys[0] == "created" and keys[1] == "status:running:1"
    assert keys[-1] == "status:succeeded:1"
    metric_keys = [k for k in keys if k.startswith("metrics:step:")]
    assert metric_keys == [f"metrics:step:{n}" for n in steps]  # in order
    first = next(e for e in events if e.dedupe_key == "metrics:step:1").data
    for field in ("train_loss", "grad_norm", "clipped", "learning_rate", "total_steps",
                  "crma_spectral_norm_max", "crma_marginal_error_max", "crma_alpha_mean"):
        assert field in first
    assert first["total_steps"] == 12
    assert [k for k in keys if k.startswith("checkpoint:")] == \
        ["checkpoint:step:4", "checkpoint:step:8", "checkpoint:step:12"]

    with stack.session() as s:
        checkpoints = s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)
                                .order_by(Checkpoint.step)).all()
        assert [(c.step, c.attempt) for c in checkpoints] == [(4, 1), (8, 1), (12, 1)]
        prefixes = [c.storage_prefix for c in checkpoints]
        artifacts = s.scalars(select(Artifact).where(Artifact.owner_id == job_id)).all()
        captures = s.scalars(select(LedgerTransaction).where(
            LedgerTransaction.source_id == job_id, LedgerTransaction.kind == "capture")).all()
    assert len(captures) == 1
    names = {a.name for a in artifacts}
    assert {"lora/adapter_config.json", "lora/adapter_model.safetensors", "crma.safetensors",
            "crma_config.json", "metrics.jsonl", "manifest.json", "plots/loss.png",
            "plots/grad_norm.png"} <= names
    store = open_store(stack.settings)
    for prefix in prefixes:  # each checkpoint carries the adapter the engine serves
        stored = set(store.list_keys(prefix))
        assert {prefix + "serving/lora/adapter_model.safetensors",
                prefix + "serving/lora/adapter_config.json",
                prefix + "serving/crma.safetensors"} <= stored, stored
    for artifact in artifacts:
        assert artifact.account_id == account_id
        data = b"".join(store.iter_chunks(artifact.storage_key))
        assert len(data) == artifact.bytes
        assert hashlib.sha256(data).hexdigest() == artifact.sha256


def test_the_same_task_delivered_twice_runs_once(worker_stack) -> None:
    stack = worker_stack
    stack.ensure_workers(2)
    _, job_id = stack.submit()
    from worker.celery_app import create_app
    from worker.routing import RUN_JOB

    create_app(stack.settings).send_task(RUN_JOB, kwargs={"job_id": job_id}, queue="small")
    job = stack.wait_status(job_id, TERMINAL, 120)
    assert job.status == "succeeded" and job.attempt == 1

    keys = [e.dedupe_key for e in stack.events(job_id)]
    assert len(keys) == len(set(keys))
    assert sum(k.startswith("metrics:step:") for k in keys) == 12
    assert sum(k.startswith("status:running") for k in keys) == 1
    with stack.session() as s:
        assert s.scalar(select(func.count()).select_from(Checkpoint)
                        .where(Checkpoint.job_id == job_id)) == 3
    assert len(stack.captures(job_id)) == 1

    # Both deliveries ran; the duplicate found nothing to claim and returned at once.
    wait_for(lambda: len(_task_results(stack, job_id)) == 2, 30,
             what="both deliveries to finish")
    results = _task_results(stack, job_id)
    assert sorted(r for r, _ in results) == ["skipped", "succeeded"]


def test_cancel_while_running_stops_and_bills_trained_tokens(worker_stack) -> None:
    from app.services.jobs import cancel_job

    stack = worker_stack
    stack.ensure_workers(1)
    account_id, job_id = stack.submit(n_epochs=3)
    with stack.session() as s:
        held_before = s.scalar(select(Job.hold_micros).where(Job.id == job_id))
    wait_for(lambda: stack.last_step(job_id) >= 5, 60, what="step 5")
    with stack.session() as s:
        cancel_job(s, account_id=account_id, job_id=job_id, settings=stack.settings)
    job = stack.wait_status(job_id, TERMINAL, 60)
    assert job.status == "cancelled"

    steps = stack.step_losses(job_id)
    assert 5 <= max(steps) < 36
    last = next(e for e in reversed(stack.events(job_id)) if e.type == "metrics"
                and e.dedupe_key.startswith("metrics:step:"))
    assert job.trained_tokens == last.data["trained_tokens"]
    captures = stack.captures(job_id)
    assert len(captures) == 1
    assert job.cost_micros == price_micros(MODEL_ID, job.trained_tokens,
                                           prices=PRICES) < held_before
    keys = [e.dedupe_key for e in stack.events(job_id)]
    assert keys[-1] == f"status:cancelled:{job.attempt}"


def test_free_account_jobs_run_one_at_a_time(worker_stack) -> None:
    stack = worker_stack
    stack.ensure_workers(2)
    account_id, first = stack.submit(plan="free")
    _, second = stack.submit(account_id=account_id)
    overlap = []

    def both_running() -> bool:
        with stack.session() as s:
            running = s.scalar(select(func.count()).select_from(Job).where(
                Job.account_id == account_id, Job.status == "running"))
        overlap.append(running)
        return all(stack.job(j).status in TERMINAL for j in (first, second))

    wait_for(both_running, 180, what="both free jobs to finish", interval=0.1)
    assert max(overlap) == 1
    assert [stack.job(j).status for j in (first, second)] == ["succeeded", "succeeded"]
    earlier, later = sorted((stack.job(first), stack.job(second)), key=lambda j: j.started_at)
    # The later one waited in the queue (re-offered) until the earlier one had finished.
    assert later.started_at >= earlier.finished_at
    assert (earlier.attempt, later.attempt) == (1, 1)


def test_idle_workers_prove_they_consume_by_answering_pings(worker_stack) -> None:
    """worker_heartbeats.last_seen_at moves only when a worker consumes (a ping through its
    own queue, or a heartbeat of the job it runs)."""
    from app.db.models import WorkerHeartbeat
    from app.db.base import db_now

    stack = worker_stack
    names = [w.name for w in stack.ensure_workers(2)]
    with stack.session() as s:
        start = db_now(s)
    interval = stack.settings.worker_ping_interval_s

    def all_answered() -> bool:
        with stack.session() as s:
            rows = s.scalars(select(WorkerHeartbeat).where(
                WorkerHeartbeat.worker_id.in_(names))).all()
        return len(rows) == 2 and all(r.last_seen_at > start and r.current_job_id is None
                                      for r in rows)

    wait_for(all_answered, 4 * interval + 10, what="both idle workers to answer a ping")
    with stack.session() as s:
        rows = s.scalars(select(WorkerHeartbeat).where(WorkerHeartbeat.worker_id.in_(names))).all()
    assert {r.queues for r in rows} == {"large,small"}
    assert {r.device for r in rows} == {"cpu"}


def test_a_job_stops_at_its_budget_and_still_delivers_the_adapter(worker_stack) -> None:
    """max_cost: training stops before the step that would exceed the token budget, the
    adapter trained so far is published, and the charge is what was trained (docs/user-guide.md)."""
    stack = worker_stack
    stack.ensure_workers(1)
    _, job_id = stack.submit(max_cost_micros=30)  # 300 tokens at $0.10 per 1M
    job = stack.wait_status(job_id, TERMINAL, 120)
    assert job.status == "succeeded", job.error
    assert job.token_budget == 300 and job.stop_reason == "budget"
    assert 0 < job.trained_tokens <= job.token_budget
    assert 1 <= len(stack.step_losses(job_id)) < 12
    assert job.cost_micros == price_micros(MODEL_ID, job.trained_tokens, prices=PRICES) <= 30
    assert "budget_stop" in [e.dedupe_key for e in stack.events(job_id)]
    with stack.session() as s:
        names = set(s.scalars(select(Artifact.name).where(Artifact.owner_id == job_id)))
    assert {"lora/adapter_model.safetensors", "crma.safetensors", "manifest.json"} <= names


def test_data_that_fails_at_training_time_fails_the_job_as_invalid_training_file(
        worker_stack) -> None:
    stack = worker_stack
    stack.ensure_workers(1)
    with stack.session() as s:
        account_id = make_account(s)
    # Valid JSON, but every assistant turn is empty: the loss mask leaves nothing to train.
    empty = [{"messages": [{"role": "user", "content": f"hi {i}"},
                           {"role": "assistant", "content": ""}]} for i in range(4)]
    file_id = stack.upload_file(account_id, empty)
    _, job_id = stack.submit(account_id=account_id, training_file_id=file_id)
    job = stack.wait_status(job_id, TERMINAL, 120)
    assert job.status == "failed" and job.error["code"] == "invalid_training_file", job.error
    assert "Traceback" not in job.error["message"]
    assert job.trained_tokens == 0 and job.cost_micros == 0
    assert len(stack.captures(job_id)) == 1
