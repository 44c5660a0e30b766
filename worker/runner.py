"""The runner: everything one delivery of `crma.run_job` does, through
app/services/attempts.py.

0. A job whose base model is still being installed waits (app/services/job_inputs.py
   `await_model`: an event and a delayed re-offer, no claim, no attempt spent); one whose
   model's install failed fails, uncharged.
1. Claim the lease (one conditional UPDATE; a duplicate delivery finds nothing and returns
   without writing; a free account with a job already running re-offers this one later).
2. Heartbeat in a background thread (worker/lease_keeper.py) while it fetches the base model,
   the data and the checkpoint to resume from, and trains (worker/training.py, or
   worker/continual_stage.py for a continual-run stage).
3. Finish with one fenced transaction: artifacts + `succeeded` + billing settlement, or
   `cancelled` + settlement of what was trained, or `failed` with a mapped error code; or hand
   the job back to the queue after a checkpoint (warm shutdown, soft time limit).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from app.services import attempts
from app.services.attempts import Attempt
from app.services.job_inputs import await_model, resolve_model_dir
from app.settings import Settings
from worker import shutdown
from worker.lease_keeper import LeaseKeeper
from worker.training import HANDED_BACK, PUBLISHED, AttemptTraining, TrainingOutcome

log = logging.getLogger(__name__)


def run_job(*, job_id: str, settings: Settings, worker_name: str,
            soft_time_limit_s: float | None = None) -> str:
    """Run one delivery of a job; returns what happened (for logs and tests)."""
    started = time.monotonic()
    waited = await_model(settings, job_id=job_id)
    if waited is not None:
        log.info("job %s: base model not ready (%s)", job_id, waited)
        return waited
    claim = attempts.claim(settings, job_id=job_id, worker_name=worker_name)
    if claim.outcome == "skipped":
        log.info("job %s: nothing to claim (duplicate or late delivery)", job_id)
        return "skipped"
    if claim.outcome == "busy":
        attempts.reoffer_busy(settings, job_id=job_id)
        log.info("job %s: its free account already has a job running; offered again in %.0fs",
                 job_id, settings.free_busy_retry_s)
        return "busy"
    with shutdown.while_training():
        deadline = None
        if soft_time_limit_s:
            # Stop early enough to checkpoint and hand back before Celery's own soft limit.
            deadline = started + soft_time_limit_s - min(60.0, 0.5 * soft_time_limit_s)
        attempt = Attempt(settings=settings, job_id=job_id, number=claim.attempt,
                          worker_name=worker_name)
        workdir = settings.resolved_worker_cache_dir / "jobs" / f"{job_id}-attempt-{claim.attempt}"
        try:
            if attempt.cancel_requested:
                return attempt.cancel(trained_tokens=None)
            return _run_attempt(attempt, workdir, deadline)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            attempt.release_worker()


def _run_attempt(attempt: Attempt, workdir: Path, deadline: float | None) -> str:
    from celery.exceptions import SoftTimeLimitExceeded

    job = attempt.job
    try:
        with LeaseKeeper(attempt) as keeper:
            workdir.mkdir(parents=True, exist_ok=True)
            training = AttemptTraining(attempt=attempt, keeper=keeper, workdir=workdir,
                                       deadline=deadline)
            model_dir = resolve_model_dir(settings=attempt.settings, store=attempt.store,
                                          model_id=job.model)
            if job.kind == "continual_stage":
                from worker.continual_stage import train_stage

                outcome = train_stage(training, model_dir=model_dir)
            else:
                outcome = training.run(model_dir=model_dir)
            return _settle(attempt, outcome)
    except SoftTimeLimitExceeded:
        log.warning("job %s attempt %d hit the soft time limit mid-step", job.id, attempt.number)
        return attempt.hand_back(reason="time_limit")
    except Exception as exc:  # noqa: BLE001 - every failure becomes the job's error
        return attempt.fail(exc)


def _settle(attempt: Attempt, outcome: TrainingOutcome) -> str:
    reason = outcome.stop_reason
    if reason == "fenced":
        log.warning("job %s attempt %d lost its lease; leaving it to the new owner",
                    attempt.job.id, attempt.number)
        return "fenced"
    if reason == "cancelled":
        return attempt.cancel(trained_tokens=outcome.trained_tokens)
    if reason in HANDED_BACK:
        return attempt.hand_back(reason=reason)
    if reason not in PUBLISHED or outcome.bundle_dir is None:
        raise RuntimeError(f"unexpected stop reason {reason!r}")
    return attempt.succeed(bundle_dir=outcome.bundle_dir, stop_reason=reason,
                           trained_tokens=outcome.trained_tokens, result=outcome.result)
