"""Base-model installs and the jobs that wait for them.

An installer (`crma dev` installing SmolLM2 at start-up, `crma models install`) records its
progress in `model_installs`: `begin` (status installing) before it starts, `touch` while it
works (an install row not touched for INSTALL_STALE_S is taken as failed: its installer
died), then `finish` or `fail`. GET /v1/models shows the state (app/services/models.py).

A job whose base model is not available yet but is being installed waits: it stays `queued`
with a "waiting for the base model" event, and the worker that found it so hands it back with
a delayed re-offer (`Settings.model_wait_retry_s`) instead of holding a slot. `finish` offers
every job of the model at once, in the transaction that records the install; `fail` fails
every one of them with `model_unavailable` and the installer's error (our fault: nothing is
charged and a free run is given back)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db.base import db_now
from app.db.models import Job, ModelInstall
from app.domain.job_state import PENDING, ErrorCode, JobStatus
from app.services import job_lifecycle, leases

INSTALLING, INSTALLED, FAILED = "installing", "installed", "failed"
INSTALL_STALE_S = 300.0
TOUCH_EVERY_S = 15.0
STALE_ERROR = "the installer stopped reporting progress (it may have been killed)"


@dataclass(frozen=True)
class InstallState:
    status: str  # installing | installed | failed
    error: str | None
    started_at: datetime
    updated_at: datetime


def failure_message(model_id: str, error: str | None) -> str:
    return (f"The base model {model_id!r} could not be installed on this service"
            f"{f': {error}' if error else ''}. This job was not charged.")


def begin(session: Session, *, model_id: str) -> None:
    """An installer starts on `model_id` (again, after an earlier one failed or died)."""
    now = db_now(session)
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" \
        else sqlite.insert
    values = {"status": INSTALLING, "error": None, "started_at": now, "updated_at": now,
              "finished_at": None}
    session.execute(insert(ModelInstall).values(model_id=model_id, **values)
                    .on_conflict_do_update(index_elements=["model_id"], set_=values))


def touch(session: Session, *, model_id: str) -> None:
    """The installer is still at work (its heartbeat)."""
    session.execute(update(ModelInstall)
                    .where(ModelInstall.model_id == model_id, ModelInstall.status == INSTALLING)
                    .values(updated_at=db_now(session))
                    .execution_options(synchronize_session=False))


def finish(session: Session, *, model_id: str) -> list[str]:
    """The model is installed: record it and offer every queued job of it now; their ids."""
    _end(session, model_id=model_id, status=INSTALLED, error=None)
    offered = []
    for job_id, queue in _queued_jobs(session, model_id):
        if leases.offer_job(session, job_id=job_id, queue=queue):
            offered.append(job_id)
    return offered


def fail(session: Session, *, model_id: str, error: str, prices: Mapping[str, int]) -> list[str]:
    """The install failed: record why and fail every queued job of the model with
    `model_unavailable` (settled: nothing captured); their ids."""
    _end(session, model_id=model_id, status=FAILED, error=error[:1000])
    return [job_id for job_id, _ in _queued_jobs(session, model_id)
            if fail_waiting_job(session, job_id=job_id, model_id=model_id, error=error,
                                prices=prices)]


def fail_waiting_job(session: Session, *, job_id: str, model_id: str, error: str | None,
                     prices: Mapping[str, int]) -> bool:
    """Fail a job that has not started because its model cannot be installed."""
    return job_lifecycle.finish_job(
        session, job_id=job_id, attempt=None, to=JobStatus.FAILED, expected=PENDING,
        prices=prices, values={"stop_reason": "model_unavailable"},
        error=job_lifecycle.job_error(ErrorCode.MODEL_UNAVAILABLE,
                                      failure_message(model_id, error)))


def _end(session: Session, *, model_id: str, status: str, error: str | None) -> None:
    now = db_now(session)
    if session.get(ModelInstall, model_id) is None:
        begin(session, model_id=model_id)
    session.execute(update(ModelInstall).where(ModelInstall.model_id == model_id)
                    .values(status=status, error=error, updated_at=now, finished_at=now)
                    .execution_options(synchronize_session=False))


def _queued_jobs(session: Session, model_id: str) -> list[tuple[str, str]]:
    """Queued jobs of the model, continual stages waiting for an earlier stage left out (the
    earlier stage's success offers them)."""
    rows = session.execute(
        select(Job.id, Job.queue).where(Job.model == model_id,
                                        Job.status == JobStatus.QUEUED.value,
                                        leases.stage_ready())
        .order_by(Job.created_at)
    )
    return [(r.id, r.queue) for r in rows]


def state(session: Session, *, model_id: str) -> InstallState | None:
    """The model's install state (an install gone quiet for INSTALL_STALE_S reads as
    failed), or None when no installer ever started on it."""
    return states(session, model_ids=[model_id]).get(model_id)


def states(session: Session, *, model_ids: list[str] | None = None) -> dict[str, InstallState]:
    statement = select(ModelInstall)
    if model_ids is not None:
        statement = statement.where(ModelInstall.model_id.in_(model_ids))
    rows = list(session.scalars(statement))
    if not rows:
        return {}
    stale_before = db_now(session) - timedelta(seconds=INSTALL_STALE_S)
    found = {}
    for row in rows:
        status, error = row.status, row.error
        if status == INSTALLING and _aware(row.updated_at) < _aware(stale_before):
            status, error = FAILED, STALE_ERROR
        found[row.model_id] = InstallState(status=status, error=error,
                                           started_at=row.started_at, updated_at=row.updated_at)
    return found


def _aware(value: datetime) -> datetime:
    from datetime import UTC

    return value if value.tzinfo else value.replace(tzinfo=UTC)
