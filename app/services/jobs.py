"""Fine-tuning jobs as the API reads and cancels them (creation: job_creation.py; what
happens to a job after it is created: job_lifecycle.py)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.db.models import Job
from app.domain.errors import Conflict, NotFound
from app.domain.job_state import TERMINAL, JobStatus
from app.services import continual_runs, job_lifecycle
from app.services.pagination import find_owned
from app.settings import Settings


def get_job(session: Session, *, account_id: str, job_id: str) -> Job:
    job = find_owned(session, Job, account_id, job_id)
    if job is None:
        raise job_not_found(job_id)
    return job


def job_not_found(job_id: str) -> NotFound:
    return NotFound(f"No such fine-tuning job: {job_id!r}.", param="job_id")


def cancel_job(session: Session, *, account_id: str, job_id: str, settings: Settings) -> Job:
    """Queued: cancelled now and settled in this transaction. Running: cancellation requested
    (the worker stops within a heartbeat). Finished: 409. A continual-run stage cancels its
    whole run (later stages would otherwise wait forever)."""
    job = get_job(session, account_id=account_id, job_id=job_id)
    require_cancellable(job)
    prices = settings.prices_micros_per_mtok
    if job.continual_run_id is not None:
        continual_runs.cancel_run(session, account_id=account_id, run_id=job.continual_run_id,
                                  settings=settings)
    elif not job_lifecycle.cancel_job(session, job=job, prices=prices):
        # Lost a race: the worker finished it (or the reaper re-queued it) meanwhile.
        session.refresh(job)
        require_cancellable(job)
        job_lifecycle.cancel_job(session, job=job, prices=prices)
    session.refresh(job)
    return job


def require_cancellable(job: Job) -> None:
    if JobStatus(job.status) in TERMINAL:
        raise Conflict(f"Job {job.id} is already {job.status}; it cannot be cancelled.",
                       code="job_not_cancellable", param="job_id")
