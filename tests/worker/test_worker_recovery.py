"""Recovery through real worker processes (docs/reliability.md, "Failure scenarios";
tiny-model CPU variants): kill -9 mid-job and resume, duplicate delivery, cancel while
running, a job whose worker dies on every attempt, and the free tier's one-job-at-a-time."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from sqlalchemy import select

from app.db.models import Artifact, Checkpoint, Job, LedgerTransaction
from app.domain.pricing import price_micros
from app.db.base import db_now
from app.storage.factory import open_store
from tests.worker.stack import MODEL_ID, TERMINAL, wait_for
from tests.factories import PRICES

pytestmark = pytest.mark.integration

class OwnerlessSampler:
    """Samples how long the job has been `running` since its last heartbeat (the "stuck in
    running" audit)."""

    def __init__(self, stack, job_id: str) -> None:
        self.stack, self.job_id = stack, job_id
        self.worst = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            with self.stack.session() as s:
                now = db_now(s)
                row = s.execute(select(Job.status, Job.heartbeat_at)
                                .where(Job.id == self.job_id)).one()
            if row.status == "running" and row.heartbeat_at is not None:
                self.worst = max(self.worst, (now - row.heartbeat_at).total_seconds())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()


def test_kill_9_mid_job_resumes_from_the_checkpoint_with_the_same_losses(worker_stack) -> None:
    stack = worker_stack
    stack.ensure_workers(2)
    # The uninterrupted reference run and the run to interrupt, same config and seed, one on
    # each worker; the survivor resumes the killed one after finishing the reference.
    _, reference = stack.submit(n_epochs=2)
    _, job_id = stack.submit(n_epochs=2)
    with OwnerlessSampler(stack, job_id) as sampler:
        wait_for(lambda: (stack.job(job_id).last_checkpoint_step or 0) >= 8
                 and stack.last_step(job_id) >= 10, 90, what="checkpoint 8 and step 10")
        owner = stack.job(job_id).lease_owner.rsplit("/", 1)[0]
        stack.worker_named(owner).kill()
        killed_at_step = stack.last_step(job_id)
        job = stack.wait_status(job_id, TERMINAL, 120)
    assert stack.wait_status(reference, TERMINAL, 60).status == "succeeded"
    expected = stack.step_losses(reference)
    assert sorted(expected) == list(range(1, 25))
    assert job.status == "succeeded", job.error
    assert job.attempt == 2
    assert 8 <= killed_at_step < 24

    # The whole curve (events from attempt 1 up to the kill, then attempt 2) and the
    # resumed attempt's own history (the artifact) match the uninterrupted run.
    losses = stack.step_losses(job_id)
    assert sorted(losses) == sorted(expected)
    for step, loss in expected.items():
        assert abs(losses[step] - loss) <= 1e-5, (step, losses[step], loss)
    with stack.session() as s:
        metrics_key = s.scalar(select(Artifact.storage_key).where(
            Artifact.owner_id == job_id, Artifact.name == "metrics.jsonl"))
        checkpoints = s.execute(select(Checkpoint.step, Checkpoint.attempt).where(
            Checkpoint.job_id == job_id).order_by(Checkpoint.step)).all()
    history = [json.loads(line) for line in
               b"".join(open_store(stack.settings).iter_chunks(metrics_key)).decode().splitlines()]
    resumed = {r["step"]: r["loss"] for r in history if r["type"] == "step"}
    assert sorted(resumed) == sorted(expected)
    for step, loss in expected.items():
        assert abs(resumed[step] - loss) <= 1e-5

    # Checkpoints before the kill belong to attempt 1, later ones to attempt 2, one per step.
    assert [step for step, _ in checkpoints] == [4, 8, 12, 16, 20, 24]
    assert all(attempt == (1 if step <= 8 else 2) for step, attempt in checkpoints
               if step <= 8 or step > killed_at_step)
    keys = [e.dedupe_key for e in stack.events(job_id)]
    assert len(keys) == len(set(keys))
    assert "resumed:2" in keys and "status:queued:1" in keys

    # Billed once, for each trained step once.
    assert stack.job(reference).trained_tokens == job.trained_tokens
    assert len(stack.captures(job_id)) == 1
    assert job.cost_micros == price_micros(MODEL_ID, job.trained_tokens, prices=PRICES)

    # Never `running` without a live owner for longer than lease + one reaper interval
    # (plus scheduling slack on a loaded two-core machine).
    bound = stack.settings.lease_ttl_s + stack.settings.reaper_interval_s
    assert sampler.worst <= bound + 1.5, (sampler.worst, bound)


def test_a_job_whose_worker_dies_every_attempt_fails_with_worker_lost_after_3(worker_stack) -> None:
    stack = worker_stack
    stack.ensure_workers(1)
    _, job_id = stack.submit(n_epochs=3)
    parents = []
    for attempt in (1, 2, 3):
        # Killed once the attempt is under way (its start event is written after the claim).
        wait_for(lambda: f"status:running:{attempt}" in
                 [e.dedupe_key for e in stack.events(job_id)], 90,
                 what=f"attempt {attempt} to run", diagnose=lambda: stack._diagnose(job_id))
        job = stack.job(job_id)
        assert (job.status, job.attempt) == ("running", attempt)
        name, pid = job.lease_owner.rsplit("/", 1)
        parent = stack.worker_named(name)
        assert int(pid) != parent.process.pid  # the pool child, not the worker itself
        os.kill(int(pid), signal.SIGKILL)
        parents.append(parent)
    job = stack.wait_status(job_id, TERMINAL, 60)
    assert job.status == "failed" and job.error["code"] == "worker_lost"
    assert job.attempt == 3 and job.cost_micros == 0
    for parent in parents:
        assert parent.process.poll() is None  # the worker survived its child's death
        assert "WorkerLostError" in parent.log()
    time.sleep(stack.settings.lease_ttl_s + 2 * stack.settings.reaper_interval_s)
    assert stack.job(job_id).attempt == 3  # no fourth claim, no message loop
    kinds = sorted(t.kind for t in _all_ledger(stack, job_id))
    assert kinds == ["capture", "hold", "release"]


def _all_ledger(stack, job_id: str) -> list[LedgerTransaction]:
    with stack.session() as s:
        return list(s.scalars(select(LedgerTransaction).where(
            LedgerTransaction.source_id == job_id)))




def test_sigterm_checkpoints_hands_the_job_back_and_another_worker_resumes_it(worker_stack) -> None:
    """A deploy: a worker asked to stop mid-job checkpoints at the current step, puts the
    job back in the queue without waiting for its lease to expire, and exits; the other
    worker resumes from that checkpoint and the curve is unchanged."""
    stack = worker_stack
    stack.ensure_workers(2)
    _, job_id = stack.submit(n_epochs=2)
    wait_for(lambda: stack.last_step(job_id) >= 6, 90, what="step 6")
    name = stack.job(job_id).lease_owner.rsplit("/", 1)[0]
    stopping = stack.worker_named(name)
    os.killpg(stopping.process.pid, signal.SIGTERM)
    stopping.process.wait(timeout=60)  # warm shutdown completes once the job is handed back
    queued = [e for e in stack.events(job_id) if e.dedupe_key == "status:queued:1"]
    assert queued and "(shutdown)" in queued[0].message  # by the worker, not the reaper
    job = stack.wait_status(job_id, TERMINAL, 120)
    assert job.status == "succeeded" and job.attempt == 2, job.error
    with stack.session() as s:
        rows = s.execute(select(Checkpoint.step, Checkpoint.attempt).where(
            Checkpoint.job_id == job_id)).all()
    stopped_at = max(step for step, attempt in rows if attempt == 1)
    assert stopped_at >= 6  # the hand-back checkpoint, at the step where it stopped
    resumed = [e for e in stack.events(job_id) if e.dedupe_key == "resumed:2"]
    assert resumed and resumed[0].data["step"] == stopped_at
    assert sorted(stack.step_losses(job_id)) == list(range(1, 25))


def test_the_soft_time_limit_checkpoints_and_the_next_attempt_resumes(worker_stack) -> None:
    """A message carrying a short soft limit (the relay sends per-queue limits): the runner
    stops before it, checkpoints, hands the job back; the next delivery (normal limits)
    resumes from that checkpoint."""
    from worker.celery_app import create_app
    from worker.routing import RUN_JOB

    stack = worker_stack
    stack.ensure_workers(1)
    # 120 steps of at least 0.15 s: the 4 s the limit leaves them can never be enough.
    _, job_id = stack.submit(examples=120, n_epochs=2, offer=False)
    create_app(stack.settings).send_task(RUN_JOB, kwargs={"job_id": job_id}, queue="small",
                                         soft_time_limit=8, time_limit=60)
    job = stack.wait_status(job_id, TERMINAL, 120)
    assert job.status == "succeeded" and job.attempt == 2, job.error
    queued = [e for e in stack.events(job_id) if e.dedupe_key == "status:queued:1"]
    assert queued and "(time_limit)" in queued[0].message
    with stack.session() as s:
        rows = s.execute(select(Checkpoint.step, Checkpoint.attempt).where(
            Checkpoint.job_id == job_id)).all()
    first = [step for step, attempt in rows if attempt == 1]
    resumed = [e for e in stack.events(job_id) if e.dedupe_key == "resumed:2"]
    # Attempt 2 resumes from where attempt 1 checkpointed. (A machine too busy to train a
    # step before the 4 s deadline leaves nothing to resume from: then it starts over.)
    if first:
        assert resumed and resumed[0].data["step"] == max(first)
    else:
        assert not resumed
    assert sorted(stack.step_losses(job_id)) == list(range(1, 121))
