"""Recovering jobs whose worker died: the reaper's passes (worker/reaper.py runs them as
`crma reaper`, the Celery beat task `crma.reap`, or in-process in `crma dev`). Every pass is
idempotent and safe to run from several processes at once: expired leases are taken with
SKIP LOCKED and moved by conditional, attempt-fenced transitions; stale re-offers are won by
one conditional UPDATE of `offered_at` (docs/reliability.md).

- A running job whose lease expired goes back to `queued` (the next claim bumps `attempt` and
  resumes from `last_checkpoint_step`), or, after `max_attempts` attempts, fails with
  `worker_lost` and is settled (a platform fault costs nothing).
- A job queued and not offered to the broker for `stale_queued_s` is offered again (a lost
  message, a Redis restart or FLUSHALL loses no job)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import timedelta

from sqlalchemy.orm import Session

from app.db.base import db_now
from app.db.session import session_scope
from app.domain.job_state import ErrorCode, JobStatus
from app.services import job_lifecycle, leases
from app.settings import Settings

log = logging.getLogger(__name__)

WORKER_LOST_MESSAGE = "The worker running this job stopped responding {n} times; giving up."


@dataclass
class ReapReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    reoffered: list[str] = field(default_factory=list)
    pinged: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def recover(settings: Settings) -> ReapReport:
    """One pass: expired leases, then jobs queued too long without an offer."""
    report = ReapReport()
    _reap_expired(settings, report)
    _reoffer_stale(settings, report)
    return report


def _reap_expired(settings: Settings, report: ReapReport) -> None:
    with session_scope(settings.resolved_database_url) as session:
        for job in leases.expired_leases(session, limit=100):
            # A savepoint per job: one job that cannot be settled does not block the others.
            try:
                with session.begin_nested():
                    _reap_one(session, settings, job, report)
            except Exception:  # noqa: BLE001 - logged, retried next pass
                log.exception("reaper could not handle job %s", job.id)


def _reap_one(session: Session, settings: Settings, job: leases.LeasedJob,
              report: ReapReport) -> None:
    if job.attempt >= settings.max_attempts:
        error = job_lifecycle.job_error(ErrorCode.WORKER_LOST,
                                        WORKER_LOST_MESSAGE.format(n=job.attempt))
        if job_lifecycle.finish_job(session, job_id=job.id, attempt=job.attempt,
                                    to=JobStatus.FAILED, error=error,
                                    values={"stop_reason": "worker_lost"},
                                    prices=settings.prices_micros_per_mtok):
            report.failed.append(job.id)
            log.warning("job %s failed with worker_lost after %d attempts", job.id, job.attempt)
        return
    if job_lifecycle.hand_back(
        session, job_id=job.id, attempt=job.attempt, queue=job.queue,
        message=f"The worker of attempt {job.attempt} stopped responding; the job will "
                "resume from its last checkpoint",
    ):
        report.requeued.append(job.id)
        log.warning("job %s: lease of attempt %d expired; requeued", job.id, job.attempt)


def _reoffer_stale(settings: Settings, report: ReapReport) -> None:
    with session_scope(settings.resolved_database_url) as session:
        cutoff = db_now(session) - timedelta(seconds=settings.stale_queued_s)
        for job in leases.stale_queued(session, cutoff=cutoff, limit=100):
            if leases.offer_job(session, job_id=job.id, queue=job.queue,
                                only_if_offered_before=cutoff):
                report.reoffered.append(job.id)
                log.info("job %s was queued and not offered since %s; offered again",
                         job.id, cutoff.isoformat())
