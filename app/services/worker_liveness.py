"""Worker liveness that proves consumption, not just a live process (celery#9054-class stalls:
a worker that silently stops consuming after a Redis restart still looks alive).

`worker_heartbeats.last_seen_at` moves only when the worker consumes something: a job it
runs (the lease heartbeat refreshes it) or a ping. The reaper pings every idle worker through
that worker's own queue (`worker_direct`), so an idle worker whose `last_seen_at` falls more
than a couple of ping intervals behind is not consuming and should be restarted. The pings
themselves are sent by the reaper (worker/reaper.py); this module keeps the rows."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import create_engine, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from app.db.base import db_now
from app.db.models import WorkerHeartbeat
from app.db.session import normalize_url, session_scope
from app.settings import Settings

# Stop pinging workers silent for this long: they are gone, and their direct queues would only
# fill up with pings nobody reads.
FORGET_AFTER_S = 3600.0


def register_worker(*, settings: Settings, worker_name: str, queues: str, device: str) -> None:
    """Insert or refresh this worker's row (called in the parent process when it is ready).

    Uses a connection that is not pooled: the parent forks children, which must not inherit
    open database connections."""
    engine = create_engine(normalize_url(settings.resolved_database_url), poolclass=NullPool)
    try:
        with Session(engine) as session, session.begin():
            now = db_now(session)
            values = {"worker_id": worker_name, "queues": queues, "device": device,
                      "started_at": now, "last_seen_at": now, "current_job_id": None}
            dialect = session.get_bind().dialect.name
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            statement = insert(WorkerHeartbeat).values(**values)
            session.execute(statement.on_conflict_do_update(
                index_elements=[WorkerHeartbeat.worker_id],
                set_={k: statement.excluded[k] for k in values if k != "worker_id"},
            ))
    finally:
        engine.dispose()


def touch(session: Session, *, worker_name: str, current_job_id: str | None,
          clear_job: bool = False) -> None:
    """This worker just consumed something (a ping, or a heartbeat of the job it runs)."""
    values: dict = {"last_seen_at": db_now(session)}
    if current_job_id is not None or clear_job:
        values["current_job_id"] = current_job_id
    session.execute(update(WorkerHeartbeat).where(WorkerHeartbeat.worker_id == worker_name)
                    .values(**values))


def record_consumed(*, settings: Settings, worker_name: str) -> None:
    with session_scope(settings.resolved_database_url) as session:
        touch(session, worker_name=worker_name, current_job_id=None, clear_job=True)


def idle_workers(*, settings: Settings) -> list[str]:
    """Idle workers not seen for a ping interval (and seen this hour): the ones to ping."""
    with session_scope(settings.resolved_database_url) as session:
        now = db_now(session)
        return list(session.scalars(
            select(WorkerHeartbeat.worker_id).where(
                WorkerHeartbeat.current_job_id.is_(None),
                WorkerHeartbeat.last_seen_at
                < now - timedelta(seconds=settings.worker_ping_interval_s),
                WorkerHeartbeat.last_seen_at > now - timedelta(seconds=FORGET_AFTER_S),
            )
        ))


def stalled_workers(session: Session, *, settings: Settings) -> list[str]:
    """Idle workers that missed two pings: registered, not running a job, not consuming."""
    now = db_now(session)
    cutoff = now - timedelta(seconds=3 * settings.worker_ping_interval_s)
    return list(session.scalars(
        select(WorkerHeartbeat.worker_id).where(
            WorkerHeartbeat.current_job_id.is_(None), WorkerHeartbeat.last_seen_at < cutoff,
            WorkerHeartbeat.last_seen_at > now - timedelta(seconds=FORGET_AFTER_S),
        )
    ))
