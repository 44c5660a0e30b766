"""Terminal transitions of a job, each in the caller's transaction together with what must
happen atomically with it: billing settlement, the status event, and the continual-run
cascade (next stage offered, or later stages cancelled)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Job
from app.domain.job_state import ErrorCode, JobStatus
from app.services import billing
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
    return {"code": code.value, "message": message, "param": None}


def finish_job(
    session: Session,
    *,
    job_id: str,
    attempt: int | None,
    to: JobStatus,
    error: dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
    expected: Iterable[JobStatus] = (JobStatus.RUNNING,),
    cascade: bool = True,
) -> bool:
    """Move the job to a terminal status (fenced by `attempt` when given), settle its billing
    and record the status event; for a continual stage, update its run (`cascade`). False
    (and nothing written) when the fence rejects it."""
    changes = dict(values or {})
    if error is not None:
        changes["error"] = error
    if not transition_job(session, job_id=job_id, to=to, expected=expected, attempt=attempt,
                          values=changes):
        return False
    billing.settle_job(session, job_id=job_id)
    record_status_event(session, job_id=job_id, status=to, attempt=attempt or 0, error=error)
    job = session.execute(
        select(Job.kind, Job.continual_run_id, Job.stage_index).where(Job.id == job_id)
    ).one()
    if cascade and job.kind == "continual_stage" and job.continual_run_id is not None:
        from worker.continual import after_stage

        after_stage(session, run_id=job.continual_run_id, stage_index=job.stage_index,
                    status=to, error=error)
    return True


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
