"""Worker faults through real `crma worker` processes on private PostgreSQL/Redis
(docs/reliability.md: a worker killed, SIGTERM):

- kill -9 of the whole worker mid-job: the reaper takes the job back once its lease expired
  (reported: how long it had no live owner), it resumes on the other worker from its last
  checkpoint (losing
  at most `checkpoint_every_steps`), every step is counted once and it is billed once. Pickle
  bombs planted in the checkpoint it resumes from never go off.
- SIGTERM to a worker (a deploy): the running job checkpoints where it is, hands its lease
  back (`queued`) at once, the worker exits, and the job resumes elsewhere losing nothing."""

from __future__ import annotations

import os
import signal
import time

import pytest
from sqlalchemy import select

from app.db.models import Checkpoint, LedgerTransaction
from app.domain.pricing import price_micros
from app.storage.factory import open_store
from tests.chaos.conftest import OwnerlessClock
from tests.security.test_no_unpickling import plant
from tests.worker.stack import MODEL_ID, wait_for
from tests.factories import PRICES

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

TERMINAL = ("succeeded", "failed", "cancelled")
STEPS = 24  # 24 examples, batch 2, 2 epochs


def _ledger(stack, job_id: str) -> list[str]:  # noqa: ANN001
    with stack.session() as s:
        return sorted(s.scalars(select(LedgerTransaction.kind).where(
            LedgerTransaction.source_id == job_id)))


def _last_step(stack, job_id: str) -> int:  # noqa: ANN001
    return max(stack.step_losses(job_id), default=0)


def _events(stack, job_id: str) -> dict[str, dict]:  # noqa: ANN001
    return {e.dedupe_key: (e.data or {}) for e in stack.events(job_id) if e.dedupe_key}


def _assert_counted_and_billed_once(stack, job) -> None:  # noqa: ANN001
    events = stack.events(job.id)
    keys = [e.dedupe_key for e in events if e.dedupe_key]
    assert len(keys) == len(set(keys))
    steps = {e.data["step"]: e.data for e in events
             if e.dedupe_key and e.dedupe_key.startswith("metrics:step:")}
    assert sorted(steps) == list(range(1, STEPS + 1))
    assert job.trained_tokens == steps[STEPS]["trained_tokens"]
    kinds = _ledger(stack, job.id)
    assert kinds.count("capture") == 1 and kinds.count("hold") == 1, kinds
    assert job.cost_micros == price_micros(MODEL_ID, job.trained_tokens, prices=PRICES) > 0


def test_kill_9_mid_job_resumes_from_the_checkpoint_and_bills_once(make_chaos_stack,
                                                                     tmp_path) -> None:
    stack = make_chaos_stack()
    stack.start_workers(2)
    _, job_id = stack.submit(n_epochs=2)
    wait_for(lambda: (stack.job(job_id).last_checkpoint_step or 0) >= 4
             and _last_step(stack, job_id) >= 6, 120, what="a checkpoint and step 6",
             diagnose=lambda: stack._diagnose(job_id))
    job = stack.job(job_id)
    name = job.lease_owner.rsplit("/", 1)[0]
    clock = OwnerlessClock(stack, job_id)
    stack.worker_named(name).kill()
    clock.owner_died(attempt=job.attempt)
    killed = stack.job(job_id)
    killed_at_step = _last_step(stack, job_id)
    # Plant pickles where the next attempt downloads its checkpoint from.
    sentinel = tmp_path / "SENTINEL-the-pickle-ran"
    with stack.session() as s:
        prefix = s.scalar(select(Checkpoint.storage_prefix).where(
            Checkpoint.job_id == job_id, Checkpoint.step == killed.last_checkpoint_step))
    bombs = tmp_path / "bombs"
    plant(bombs, ("optimizer.pt", "rng_state.pth", "scheduler.pt", "training_args.bin",
                  "trainer_state.pkl"), sentinel)
    store = open_store(stack.settings)
    for bomb in bombs.iterdir():
        store.put_file(prefix + bomb.name, bomb)

    job = stack.wait_status(job_id, TERMINAL, 180)
    clock.close()
    assert job.status == "succeeded", job.error
    assert job.attempt == 2 and job.lease_owner is None
    bound = stack.settings.lease_ttl_s + stack.settings.reaper_interval_s
    # How long it stayed orphaned is reported (lease + reaper interval when the machine
    # keeps up), not asserted: a busy machine delays the reaper's passes. What is asserted:
    # the reaper took it back because the lease had expired, and attempt 2 resumed it.
    print(f"kill -9: orphaned {clock.orphaned_s:.2f} s (lease + reaper interval {bound:.0f} s), "
          f"killed at step {killed_at_step}, checkpoint {killed.last_checkpoint_step}")
    assert clock.orphaned_s is not None
    requeued = [e.message for e in stack.events(job_id) if e.dedupe_key == "status:queued:1"]
    assert requeued and "stopped responding" in requeued[0]  # the reaper, on lease expiry

    events = _events(stack, job_id)
    resumed_from = events["resumed:2"]["step"]
    assert resumed_from == killed.last_checkpoint_step
    assert killed_at_step - resumed_from <= stack.settings.checkpoint_every_steps
    # It says which steps it trains again without new step events (reported once each).
    assert events["resumed:2"]["retraining_until_step"] == (
        killed_at_step if killed_at_step > resumed_from else None)
    new_owner = [e for e in stack.events(job_id) if e.dedupe_key == "status:running:2"]
    assert new_owner
    _assert_counted_and_billed_once(stack, job)
    assert not sentinel.exists()


def test_sigterm_checkpoints_hands_the_lease_back_and_resumes_elsewhere(make_chaos_stack) -> None:
    stack = make_chaos_stack(worker_shutdown_grace_s=60.0)
    stack.start_workers(2)
    _, job_id = stack.submit(n_epochs=2)
    wait_for(lambda: _last_step(stack, job_id) >= 5, 120, what="step 5",
             diagnose=lambda: stack._diagnose(job_id))
    job = stack.job(job_id)
    name = job.lease_owner.rsplit("/", 1)[0]
    worker = stack.worker_named(name)
    stopped_at = time.monotonic()
    os.kill(worker.process.pid, signal.SIGTERM)  # the parent only, as `docker stop` does
    wait_for(lambda: stack.job(job_id).attempt >= 2 or stack.job(job_id).status == "queued",
             60, what="the lease to be handed back", diagnose=lambda: stack._diagnose(job_id))
    handed_back_s = time.monotonic() - stopped_at
    worker.process.wait(timeout=60)
    exited_s = time.monotonic() - stopped_at

    job = stack.wait_status(job_id, TERMINAL, 180)
    assert job.status == "succeeded", job.error
    assert job.attempt == 2
    events = _events(stack, job_id)
    assert "status:queued:1" in events  # handed back by attempt 1, not reaped
    with stack.session() as s:
        checkpoints = dict(s.execute(select(Checkpoint.step, Checkpoint.attempt).where(
            Checkpoint.job_id == job_id)).all())
    resumed_from = events["resumed:2"]["step"]
    last_step_of_attempt_1 = max(
        e.data["step"] for e in stack.events(job_id)
        if e.dedupe_key and e.dedupe_key.startswith("metrics:step:") and e.attempt == 1)
    # The hand-back checkpoint is where attempt 1 stopped: nothing is trained twice.
    assert checkpoints[resumed_from] == 1 and resumed_from == last_step_of_attempt_1
    running_2 = [e for e in stack.events(job_id) if e.dedupe_key == "status:running:2"]
    assert running_2
    print(f"SIGTERM: lease handed back after {handed_back_s:.2f} s, worker exited after "
          f"{exited_s:.2f} s, checkpoint at step {resumed_from}, resumed by attempt 2 "
          f"with 0 steps lost")
    # Handed back by the worker itself (not reaped once the lease expired): how fast is a
    # matter of the machine's load, who did it is not.
    handed = [e.message for e in stack.events(job_id) if e.dedupe_key == "status:queued:1"]
    assert handed and "(shutdown) after a checkpoint" in handed[0], handed
    assert worker.process.returncode is not None
    _assert_counted_and_billed_once(stack, job)
