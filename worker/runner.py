"""The runner: everything one delivery of `crma.run_job` does.

1. Claim the lease (one conditional UPDATE; a duplicate delivery finds nothing and returns
   without writing; a free account with a job already running re-offers this one later).
2. Heartbeat in a background thread (worker/lease_keeper.py) while it fetches the base model,
   the data and the checkpoint to resume from, and trains (worker/training.py).
3. Finish with one fenced transaction: artifacts + `succeeded` + billing settlement, or
   `cancelled` + settlement of what was trained, or `failed` with a mapped error code; or hand
   the job back to the queue after a checkpoint (warm shutdown, soft time limit).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from sqlalchemy import select

from app.db.models import File, Job
from app.db.session import session_scope
from app.domain.job_state import ErrorCode, JobStatus
from app.services import leases
from app.services.events import record_event
from app.settings import Settings
from app.storage.base import ObjectStore
from app.storage.factory import open_store
from worker import shutdown
from worker.errors import classify
from worker.finish import finish_job, job_error, record_status_event
from worker.lease_keeper import LeaseKeeper
from worker.liveness import touch
from worker.training import HANDED_BACK, PUBLISHED, AttemptTraining, JobSpec, TrainingOutcome

log = logging.getLogger(__name__)

TIME_LIMIT_MESSAGE = "The job exceeded the worker's time limit; it will not be charged."


def run_job(*, job_id: str, settings: Settings, worker_name: str,
            soft_time_limit_s: float | None = None) -> str:
    """Run one delivery of a job; returns what happened (for logs and tests)."""
    started = time.monotonic()
    owner = f"{worker_name or 'worker'}/{os.getpid()}"
    url = settings.resolved_database_url
    with session_scope(url) as session:
        claim = leases.claim_job(session, job_id=job_id, owner=owner,
                                 lease_ttl_s=settings.lease_ttl_s,
                                 max_attempts=settings.max_attempts)
    if claim.outcome == "skipped":
        log.info("job %s: nothing to claim (duplicate or late delivery)", job_id)
        return "skipped"
    if claim.outcome == "busy":
        _reoffer_later(settings, job_id)
        return "busy"
    with shutdown.while_training():
        return _run_claimed(settings, job_id, claim.attempt, worker_name, started,
                            soft_time_limit_s)


def _run_claimed(settings: Settings, job_id: str, attempt: int, worker_name: str,
                 started: float, soft_time_limit_s: float | None) -> str:
    url = settings.resolved_database_url
    deadline = None
    if soft_time_limit_s:
        # Stop early enough to checkpoint and hand back before Celery's own soft limit fires.
        deadline = started + soft_time_limit_s - min(60.0, 0.5 * soft_time_limit_s)
    job, cancel_requested = _load_spec(settings, job_id)
    with session_scope(url) as session:
        record_status_event(session, job_id=job_id, status=JobStatus.RUNNING, attempt=attempt,
                            message=None if attempt == 1 else
                            f"Fine-tuning job started (attempt {attempt})")
        touch(session, worker_name=worker_name, current_job_id=job_id)
        if job.continual_run_id is not None:
            from worker.continual import mark_run_running

            mark_run_running(session, run_id=job.continual_run_id)
    workdir = settings.resolved_worker_cache_dir / "jobs" / f"{job_id}-attempt-{attempt}"
    try:
        if cancel_requested:
            return _finish_cancelled(settings, job, attempt, trained_tokens=None)
        return _run_attempt(settings, job, attempt, worker_name, workdir, deadline)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        try:
            with session_scope(url) as session:
                touch(session, worker_name=worker_name, current_job_id=None, clear_job=True)
        except Exception:  # noqa: BLE001 - liveness bookkeeping only
            log.warning("could not clear the worker's current job", exc_info=True)


def _run_attempt(settings: Settings, job: JobSpec, attempt: int, worker_name: str,
                 workdir: Path, deadline: float | None) -> str:
    from celery.exceptions import SoftTimeLimitExceeded

    store = open_store(settings)
    keeper = LeaseKeeper(settings=settings, job_id=job.id, attempt=attempt,
                         worker_name=worker_name)
    try:
        with keeper:
            outcome = _train(settings, store, job, attempt, keeper, workdir, deadline)
            return _settle(settings, store, job, attempt, keeper, outcome)
    except SoftTimeLimitExceeded:
        log.warning("job %s attempt %d hit the soft time limit mid-step", job.id, attempt)
        return _hand_back(settings, job, attempt, reason="time_limit")
    except Exception as exc:  # noqa: BLE001 - every failure becomes the job's error
        code, message = classify(exc)
        log.exception("job %s attempt %d failed (%s)", job.id, attempt, code.value)
        with session_scope(settings.resolved_database_url) as session:
            finish_job(session, job_id=job.id, attempt=attempt, to=JobStatus.FAILED,
                       error=job_error(code, message),
                       values={"trained_tokens": keeper.trained_tokens,
                               "stop_reason": "error"})
        return "failed"


def _train(settings: Settings, store: ObjectStore, job: JobSpec, attempt: int,
           keeper: LeaseKeeper, workdir: Path, deadline: float | None) -> TrainingOutcome:
    from worker.inputs import resolve_model_dir
    from worker.job_config import recipe_settings

    workdir.mkdir(parents=True, exist_ok=True)
    training = AttemptTraining(settings=settings, store=store, job=job, attempt=attempt,
                               keeper=keeper, workdir=workdir, deadline=deadline)
    model_dir = resolve_model_dir(settings=settings, store=store, model_id=job.model)
    if job.kind == "continual_stage":
        from worker.continual import train_stage

        return train_stage(settings=settings, store=store, job=job, training=training,
                           model_dir=model_dir)
    train_file = workdir / "training.jsonl"
    store.get_to_file(job.training_key, train_file)
    validation_file = None
    if job.validation_key:
        validation_file = workdir / "validation.jsonl"
        store.get_to_file(job.validation_key, validation_file)
    config = recipe_settings(settings=settings, hyperparameters=job.hyperparameters,
                             adapter=job.adapter, seed=job.seed, token_budget=job.token_budget,
                             example_count=job.example_count,
                             has_validation=validation_file is not None)
    return training.run(model_dir=model_dir, train_file=train_file,
                        validation_file=validation_file, recipe_settings=config)


def _settle(settings: Settings, store: ObjectStore, job: JobSpec, attempt: int,
            keeper: LeaseKeeper, outcome: TrainingOutcome) -> str:
    reason = outcome.stop_reason
    if reason == "fenced":
        log.warning("job %s attempt %d lost its lease; leaving it to the new owner", job.id, attempt)
        return "fenced"
    if reason == "cancelled":
        return _finish_cancelled(settings, job, attempt, trained_tokens=outcome.trained_tokens)
    if reason in HANDED_BACK:
        return _hand_back(settings, job, attempt, reason=reason)
    if reason not in PUBLISHED or outcome.bundle_dir is None:
        raise RuntimeError(f"unexpected stop reason {reason!r}")
    from worker.publish import insert_artifacts, upload_bundle

    owner_id = job.continual_run_id if job.kind == "continual_stage" else job.id
    files = upload_bundle(store=store, account_id=job.account_id, owner_id=owner_id,
                          bundle_dir=outcome.bundle_dir, attempt=attempt)
    with session_scope(settings.resolved_database_url) as session:
        if not leases.holds_lease(session, job_id=job.id, attempt=attempt):
            return "fenced"
        insert_artifacts(session, account_id=job.account_id, owner_id=owner_id, files=files)
        if reason == "budget":
            record_event(session, job_id=job.id, dedupe_key="budget_stop", attempt=attempt,
                         data={"trained_tokens": outcome.trained_tokens,
                               "token_budget": job.token_budget},
                         message="Stopped at the job's token budget; publishing the adapter "
                                 "trained so far")
        if not finish_job(session, job_id=job.id, attempt=attempt, to=JobStatus.SUCCEEDED,
                          values={"trained_tokens": outcome.trained_tokens,
                                  "result": outcome.result, "stop_reason": reason}):
            session.rollback()  # no artifact rows without the transition
            return "fenced"
    return "succeeded"


def _finish_cancelled(settings: Settings, job: JobSpec, attempt: int,
                      trained_tokens: int | None) -> str:
    values = {"stop_reason": "cancelled"}
    if trained_tokens is not None:
        values["trained_tokens"] = trained_tokens
    with session_scope(settings.resolved_database_url) as session:
        finish_job(session, job_id=job.id, attempt=attempt, to=JobStatus.CANCELLED, values=values)
    return "cancelled"


def _hand_back(settings: Settings, job: JobSpec, attempt: int, *, reason: str) -> str:
    """Back to the queue after a checkpoint; the next attempt resumes from it. At the last
    allowed attempt there is no next one, so the job fails (and costs nothing)."""
    with session_scope(settings.resolved_database_url) as session:
        if attempt >= settings.max_attempts:
            code, message = ((ErrorCode.INTERNAL_ERROR, TIME_LIMIT_MESSAGE)
                             if reason == "time_limit" else
                             (ErrorCode.WORKER_LOST, "The job's worker shut down on its last "
                              "allowed attempt; it will not be charged."))
            finish_job(session, job_id=job.id, attempt=attempt, to=JobStatus.FAILED,
                       error=job_error(code, message), values={"stop_reason": reason})
            return "failed"
        if leases.requeue_job(session, job_id=job.id, attempt=attempt, queue=job.queue):
            record_status_event(session, job_id=job.id, status=JobStatus.QUEUED, attempt=attempt,
                                message=f"Attempt {attempt} stopped ({reason}) after a "
                                        "checkpoint; the job will resume from it")
    return "requeued"


def _reoffer_later(settings: Settings, job_id: str) -> None:
    """A free account's other job is running: offer this one again in a little while. The
    conditional offer (none still pending) collapses duplicate deliveries into one row."""
    with session_scope(settings.resolved_database_url) as session:
        queue = session.scalar(select(Job.queue).where(Job.id == job_id))
        leases.offer_job(session, job_id=job_id, queue=queue or "small",
                         delay_s=settings.free_busy_retry_s,
                         only_if_offered_before=leases.db_now(session))
    log.info("job %s: its free account already has a job running; offered again in %.0fs",
             job_id, settings.free_busy_retry_s)


def _load_spec(settings: Settings, job_id: str) -> tuple[JobSpec, bool]:
    with session_scope(settings.resolved_database_url) as session:
        job = session.execute(select(Job).where(Job.id == job_id)).scalar_one()
        training = session.execute(select(File).where(File.id == job.training_file_id)).scalar_one()
        validation_key = None
        if job.validation_file_id:
            validation_key = session.scalar(
                select(File.storage_key).where(File.id == job.validation_file_id))
        spec = JobSpec(
            id=job.id, account_id=job.account_id, kind=job.kind, model=job.model,
            queue=job.queue, seed=job.seed, hyperparameters=dict(job.hyperparameters or {}),
            adapter=dict(job.adapter or {}), token_budget=job.token_budget,
            training_key=training.storage_key, validation_key=validation_key,
            example_count=training.example_count, last_checkpoint_step=job.last_checkpoint_step,
            continual_run_id=job.continual_run_id, stage_index=job.stage_index,
        )
        return spec, job.cancel_requested_at is not None
