"""The lifecycle of a job after its creation (app/services/job_creation.py), in the caller's
transaction: start, finish (succeeded / failed / cancelled, settled with its status event),
cancellation, hand-back to the queue, and the continual-run cascade (the next stage offered
when one succeeds, the later stages cancelled when one fails or is cancelled, the run's
status kept equal to `run_status` of its stages), and the webhook events of each ending
(app/services/webhook_events.py: written in the same transaction).

Every status change goes through `job_status.transition_job`, fenced by the attempt number
where a worker writes. Callers: the API (cancel), app/services/attempts.py (a worker's
attempt, one transaction per step) and app/services/recovery.py (the reaper)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.base import db_now, utcnow
from app.db.models import ContinualRun, Job
from app.domain.job_state import PENDING, TERMINAL, ErrorCode, JobStatus, run_status
from app.services import billing, leases, webhook_events
from app.services.events import record_event
from app.services.job_status import transition_job

STATUS_MESSAGES = {
    JobStatus.RUNNING: "Fine-tuning job started",
    JobStatus.SUCCEEDED: "The job has successfully completed",
    JobStatus.FAILED: "The job failed",
    JobStatus.CANCELLED: "The job was cancelled",
    JobStatus.QUEUED: "The job was returned to the queue",
}


def job_error(code: ErrorCode, message: str) -> dict[str, Any]:
    """A job's stored `error` (the public `JobErrorPublic` shape)."""
    return {"code": code.value, "message": message, "param": None}


def record_status_event(
    session: Session, *, job_id: str, status: JobStatus, attempt: int,
    error: dict[str, Any] | None = None, message: str | None = None,
) -> None:
    data: dict[str, Any] = {"status": status.value, "attempt": attempt}
    if error is not None:
        data["error"] = error
    text = message or STATUS_MESSAGES[status]
    if error is not None and message is None:
        text = f"{text}: {error['message']}"
    record_event(
        session, job_id=job_id, message=text,
        level="error" if status == JobStatus.FAILED else "info", type="message", data=data,
        dedupe_key=f"status:{status.value}:{attempt}", attempt=attempt,
    )


def start_job(session: Session, *, job_id: str, attempt: int,
              continual_run_id: str | None) -> None:
    """What follows a claim (leases.claim_job, committed on its own): the `running` event,
    and the run's status for a continual stage."""
    record_status_event(session, job_id=job_id, status=JobStatus.RUNNING, attempt=attempt,
                        message=None if attempt == 1 else
                        f"Fine-tuning job started (attempt {attempt})")
    if continual_run_id is not None:
        sync_run_status(session, run_id=continual_run_id)


def finish_job(
    session: Session,
    *,
    job_id: str,
    attempt: int | None,
    to: JobStatus,
    prices: Mapping[str, int],
    error: dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
    expected: Iterable[JobStatus] = (JobStatus.RUNNING,),
    cascade: bool = True,
) -> bool:
    """Move the job to a terminal status (fenced by `attempt` when given), settle its billing
    and record the status event; for a continual stage, carry on with its run (`cascade`).
    False (and nothing written) when the fence rejects it."""
    changes = dict(values or {})
    if error is not None:
        changes["error"] = error
    if not transition_job(session, job_id=job_id, to=to, expected=expected, attempt=attempt,
                          values=changes):
        return False
    billing.settle_job(session, job_id=job_id, prices=prices)
    record_status_event(session, job_id=job_id, status=to, attempt=attempt or 0, error=error)
    job = session.execute(
        select(Job.account_id, Job.kind, Job.continual_run_id, Job.stage_index)
        .where(Job.id == job_id)
    ).one()
    webhook_events.job_finished(session, account_id=job.account_id, job_id=job_id,
                                kind=job.kind, run_id=job.continual_run_id,
                                stage_index=job.stage_index, status=to.value)
    if cascade and job.kind == "continual_stage" and job.continual_run_id is not None:
        _after_stage(session, run_id=job.continual_run_id, stage_index=job.stage_index,
                     status=to, prices=prices)
    return True


def hand_back(session: Session, *, job_id: str, attempt: int, queue: str, message: str) -> bool:
    """Back to the queue (an expired lease, or an attempt that checkpointed on shutdown or
    at its time limit) with an outbox row; the next claim resumes from the checkpoint."""
    if not leases.requeue_job(session, job_id=job_id, attempt=attempt, queue=queue):
        return False
    record_status_event(session, job_id=job_id, status=JobStatus.QUEUED, attempt=attempt,
                        message=message)
    run_id = session.scalar(select(Job.continual_run_id).where(Job.id == job_id))
    if run_id is not None:
        sync_run_status(session, run_id=run_id)
    return True


def cancel_job(session: Session, *, job: Job, prices: Mapping[str, int]) -> bool:
    """Cancel a job that has not started (settled now), or ask the worker of a running one to
    stop (it stops within a heartbeat and settles what was trained). False if it had
    already finished."""
    now = utcnow()
    if transition_job(session, job_id=job.id, to=JobStatus.CANCELLED, expected=PENDING,
                      values={"cancel_requested_at": now}):
        billing.settle_job(session, job_id=job.id, prices=prices)
        record_event(session, job_id=job.id, message="Job cancelled before it started.",
                     type="status", data={"status": "cancelled"},
                     dedupe_key="status:cancelled")
        webhook_events.job_finished(session, account_id=job.account_id, job_id=job.id,
                                    kind=job.kind, run_id=job.continual_run_id,
                                    stage_index=job.stage_index,
                                    status=JobStatus.CANCELLED.value)
        return True
    requested = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == JobStatus.RUNNING.value)
        .values(cancel_requested_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if requested:
        record_event(session, job_id=job.id, message="Cancellation requested.",
                     dedupe_key="cancel_requested")
        return True
    return False


def cancel_run(session: Session, *, run_id: str, prices: Mapping[str, int]) -> None:
    """Cancel every unfinished stage of a run (its owner cancelled it), later stages first:
    the worker, seeing its running stage cancelled, finds the later ones already done."""
    later_first = select(Job).where(
        Job.continual_run_id == run_id, Job.status.notin_([s.value for s in TERMINAL]),
    ).order_by(Job.stage_index.desc())
    for job in session.scalars(later_first).all():
        cancel_job(session, job=job, prices=prices)
    sync_run_status(session, run_id=run_id)


def _after_stage(session: Session, *, run_id: str, stage_index: int, status: JobStatus,
                 prices: Mapping[str, int]) -> None:
    """In the transaction that moved stage `stage_index` to a terminal status."""
    if status == JobStatus.SUCCEEDED:
        following = session.execute(
            select(Job.id, Job.queue, Job.status).where(
                Job.continual_run_id == run_id, Job.stage_index == stage_index + 1)
        ).one_or_none()
        if following is not None and following.status == JobStatus.QUEUED.value:
            leases.offer_job(session, job_id=following.id, queue=following.queue)
    else:
        later = session.scalars(
            select(Job.id).where(
                Job.continual_run_id == run_id, Job.stage_index > stage_index,
                Job.status.notin_([s.value for s in TERMINAL]),
            ).order_by(Job.stage_index)
        ).all()
        for job_id in later:
            # Later stages never ran (a stage is claimable only after its predecessors
            # succeeded), so they are queued: cancelled with nothing trained, hold released.
            finish_job(session, job_id=job_id, attempt=None, to=JobStatus.CANCELLED,
                       prices=prices, expected=PENDING, cascade=False)
    sync_run_status(session, run_id=run_id)


def sync_run_status(session: Session, *, run_id: str) -> JobStatus:
    """Write a run's status (`run_status` of its stages), its error (the failed stage's) and
    when it finished. The one writer of `continual_runs.status`."""
    stages = session.execute(
        select(Job.status, Job.error).where(Job.continual_run_id == run_id)
        .order_by(Job.stage_index)
    ).all()
    status = run_status(s.status for s in stages)
    values: dict[str, Any] = {"status": status.value, "error": None, "finished_at": None}
    if status in TERMINAL:
        values["finished_at"] = db_now(session)
        failed = [s.error for s in stages if s.status == JobStatus.FAILED.value]
        values["error"] = failed[0] if failed else None
    changed = session.execute(
        update(ContinualRun).where(ContinualRun.id == run_id,
                                   ContinualRun.status != status.value)
        .values(**values).execution_options(synchronize_session=False)
    ).rowcount
    if changed and status in TERMINAL:
        webhook_events.run_finished(session, run_id=run_id, status=status.value,
                                    stages=len(stages))
    return status
