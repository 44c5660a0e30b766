"""Job events (OpenAI `fine_tuning.job.event`). Written by the API (created, cancelled) and
the worker (status, metrics, checkpoints); `dedupe_key` makes a replayed write a no-op."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import JobEvent
from app.domain.ids import new_id

LEVELS = ("info", "warn", "error")

# Built once (Core on the table; every job creation and training step writes an event).
# ON CONFLICT DO NOTHING without a target covers the (job_id, dedupe_key) constraint (NULL
# dedupe keys never conflict) on both databases, without aborting the transaction.
_INSERT_PG, _INSERT_SQLITE = (
    insert(JobEvent.__table__).on_conflict_do_nothing()
    for insert in (postgresql.insert, sqlite.insert)
)


def record_event(
    session: Session,
    *,
    job_id: str,
    message: str,
    level: str = "info",
    type: str = "message",  # noqa: A002 - OpenAI's field name
    data: dict[str, Any] | None = None,
    dedupe_key: str | None = None,
    attempt: int = 0,
) -> None:
    """Insert one event; a second event with the same (job_id, dedupe_key) is ignored."""
    values = event_row(job_id=job_id, message=message, level=level, type=type, data=data,
                       dedupe_key=dedupe_key, attempt=attempt)
    postgres = session.get_bind().dialect.name == "postgresql"
    session.execute(_INSERT_PG if postgres else _INSERT_SQLITE, values)


def event_row(
    *, job_id: str, message: str, level: str = "info",
    type: str = "message",  # noqa: A002 - OpenAI's field name
    data: dict[str, Any] | None = None, dedupe_key: str | None = None, attempt: int = 0,
) -> dict[str, Any]:
    """The columns of a new event (for record_event, or a caller that inserts it within a
    larger statement, as job creation does)."""
    if level not in LEVELS:
        raise ValueError(f"event level must be one of {LEVELS}, got {level!r}")
    return {
        "id": new_id("event"), "job_id": job_id, "created_at": utcnow(), "level": level,
        "type": type, "message": message[:2000], "data": data, "attempt": attempt,
        "dedupe_key": dedupe_key,
    }


def list_events(
    session: Session, *, job_id: str, after_seq: int | None = None, limit: int = 20,
    newest_first: bool = True,
) -> list[JobEvent]:
    """Events of one job (the caller has already checked ownership). `after_seq` is the
    cursor: older events when newest_first (OpenAI's order), newer ones otherwise."""
    statement = select(JobEvent).where(JobEvent.job_id == job_id)
    if newest_first:
        if after_seq is not None:
            statement = statement.where(JobEvent.seq < after_seq)
        statement = statement.order_by(JobEvent.seq.desc())
    else:
        if after_seq is not None:
            statement = statement.where(JobEvent.seq > after_seq)
        statement = statement.order_by(JobEvent.seq.asc())
    return list(session.scalars(statement.limit(limit)))

