"""The reaper: the single recovery path for jobs whose worker died (aesthetics_reliability.md
2.1). Run as `crma reaper` (a loop), as the Celery beat task `crma.reap`, or in-process by
`crma dev`. Every pass is idempotent and safe to run from several processes at once: expired
leases are taken with SKIP LOCKED and moved by conditional, attempt-fenced transitions; stale
re-offers are won by one conditional UPDATE of `offered_at`.

- A running job whose lease expired goes back to `queued` (the next claim bumps `attempt` and
  resumes from `last_checkpoint_step`), or, after `max_attempts` attempts, fails with
  `worker_lost` and is settled (a platform fault costs nothing).
- A job queued and not offered to the broker for `stale_queued_s` is offered again (a lost
  message, a Redis restart or FLUSHALL loses no job).
- Idle workers are pinged through their own queue (worker/liveness.py)."""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field
from datetime import timedelta

from celery import Celery

from app.db.session import session_scope
from app.domain.job_state import ErrorCode, JobStatus
from app.services import leases
from app.settings import Settings
from worker.finish import finish_job, job_error, record_status_event
from worker.liveness import ping_idle_workers

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


def reap_once(*, settings: Settings, celery: Celery | None = None) -> ReapReport:
    report = ReapReport()
    _reap_expired(settings, report)
    _reoffer_stale(settings, report)
    if celery is not None:
        with session_scope(settings.resolved_database_url) as session:
            report.pinged = ping_idle_workers(session, celery=celery, settings=settings)
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


def _reap_one(session, settings: Settings, job: leases.LeasedJob, report: ReapReport) -> None:
    if job.attempt >= settings.max_attempts:
        error = job_error(ErrorCode.WORKER_LOST, WORKER_LOST_MESSAGE.format(n=job.attempt))
        if finish_job(session, job_id=job.id, attempt=job.attempt, to=JobStatus.FAILED,
                      error=error, values={"stop_reason": "worker_lost"}):
            report.failed.append(job.id)
            log.warning("job %s failed with worker_lost after %d attempts", job.id, job.attempt)
        return
    if leases.requeue_job(session, job_id=job.id, attempt=job.attempt, queue=job.queue):
        record_status_event(
            session, job_id=job.id, status=JobStatus.QUEUED, attempt=job.attempt,
            message=f"The worker of attempt {job.attempt} stopped responding; the job will "
                    "resume from its last checkpoint",
        )
        report.requeued.append(job.id)
        log.warning("job %s: lease of attempt %d expired; requeued", job.id, job.attempt)


def _reoffer_stale(settings: Settings, report: ReapReport) -> None:
    with session_scope(settings.resolved_database_url) as session:
        cutoff = leases.db_now(session) - timedelta(seconds=settings.stale_queued_s)
        for job in leases.stale_queued(session, cutoff=cutoff, limit=100):
            if leases.offer_job(session, job_id=job.id, queue=job.queue,
                                only_if_offered_before=cutoff):
                report.reoffered.append(job.id)
                log.info("job %s was queued and not offered since %s; offered again",
                         job.id, cutoff.isoformat())


def run_reaper_loop(*, settings: Settings, celery: Celery | None, stop: threading.Event) -> None:
    """`crma reaper`: one pass every `reaper_interval_s` until `stop` is set."""
    while not stop.is_set():
        try:
            report = reap_once(settings=settings, celery=celery)
            if report.requeued or report.failed or report.reoffered:
                log.info("reaper: %s", report.as_dict())
        except Exception:  # noqa: BLE001 - the loop outlives database outages
            log.warning("reaper pass failed", exc_info=True)
        stop.wait(settings.reaper_interval_s)
