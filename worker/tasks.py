"""Celery tasks: a few lines each, take an id, call the code that does the work. Only ids and
small JSON cross the broker. A task's entry is a composition root: the settings are read
here and passed down."""

from __future__ import annotations

from app.services.outages import TRANSIENT_ERRORS
from app.settings import get_settings
from worker.celery_app import app
from worker.routing import EXPORT_JOB, PING, REAP, RELAY_OUTBOX, RUN_JOB

MAINTENANCE = dict(
    acks_late=True, reject_on_worker_lost=True, autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=True, retry_backoff_max=30, retry_jitter=True, max_retries=5,
)


@app.task(name=RUN_JOB, bind=True, acks_late=False)
def run_job(self, job_id: str) -> str:
    from worker.runner import run_job as run

    _, soft = self.request.timelimit or (None, None)
    outcome = run(job_id=job_id, settings=get_settings(), worker_name=self.request.hostname or "",
                  soft_time_limit_s=soft or app.conf.task_soft_time_limit)
    return f"{job_id}: {outcome}"  # Celery logs it with the task's duration


@app.task(name=EXPORT_JOB, acks_late=False)
def export_job(export_id: str) -> str:
    from worker.exports import run_export

    return f"{export_id}: {run_export(export_id=export_id, settings=get_settings())}"


@app.task(name=RELAY_OUTBOX, **MAINTENANCE)
def relay_outbox() -> int:
    from worker.relay import relay_once

    return relay_once(settings=get_settings(), celery=app)


@app.task(name=REAP, **MAINTENANCE)
def reap() -> dict:
    from worker.reaper import reap_once

    return reap_once(settings=get_settings(), celery=app).as_dict()


@app.task(name=PING, bind=True, **MAINTENANCE)
def worker_ping(self) -> None:
    from app.services.worker_liveness import record_consumed

    record_consumed(settings=get_settings(), worker_name=self.request.hostname or "")
