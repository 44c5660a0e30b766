"""The transactional outbox: rows written in the same transaction as the state they announce,
relayed to Celery after commit (worker/relay.py). Celery only rings the doorbell; a row
published twice is harmless because the worker's lease claim lets one delivery through.

Delivery is at-least-once: a relay that publishes and then dies before its commit leaves the
row unpublished and it is sent again. Two relays never publish the same row concurrently:
`claim_pending` takes the rows with `FOR UPDATE SKIP LOCKED` on PostgreSQL (the other relay
skips them) and with a write on SQLite (SQLite has one writer, so the other relay waits and
then finds them published)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Interval, bindparam, func, select, update
from sqlalchemy.orm import Session

from app.db.base import db_now
from app.db.models import OutboxMessage
from app.db.session import get_sessionmaker

RUN_JOB_TASK = "crma.run_job"

# Built once (Core on the table): every job creation and re-offer writes a row.
_outbox = OutboxMessage.__table__
_INSERT = _outbox.insert()


def clock_columns(delay: Any) -> dict[str, Any]:
    """PostgreSQL: `created_at` and `available_at` (`delay` later: a timedelta or an interval
    bind parameter) read from the database's clock inside the INSERT, which saves a
    SELECT clock_timestamp() round trip."""
    return {"created_at": func.clock_timestamp(),
            "available_at": func.clock_timestamp() + delay}


def message_row(*, task: str, queue: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The columns of a new row, less its clock columns."""
    return {"task": task, "queue": queue, "payload": payload, "attempts": 0}


_INSERT_NOW = _outbox.insert().values(clock_columns(bindparam("b_delay", type_=Interval())))


@dataclass(frozen=True)
class PendingMessage:
    id: int
    task: str
    queue: str
    payload: dict[str, Any]


def enqueue(
    session: Session,
    *,
    task: str,
    queue: str,
    payload: dict[str, Any],
    delay_s: float = 0.0,
    now: datetime | None = None,
) -> None:
    """Add a row; it becomes publishable `delay_s` seconds from now (the database's clock)."""
    row = message_row(task=task, queue=queue, payload=payload)
    if now is None and session.get_bind().dialect.name == "postgresql":
        session.execute(_INSERT_NOW, {**row, "b_delay": timedelta(seconds=delay_s)})
        return
    created = now or db_now(session)
    session.execute(_INSERT, {**row, "created_at": created,
                              "available_at": created + timedelta(seconds=delay_s)})


def claim_pending(session: Session, *, limit: int) -> list[PendingMessage]:
    """Lock up to `limit` publishable rows for this transaction (oldest first) and count the
    attempt. The caller publishes them, calls `mark_published`, and commits."""
    now = db_now(session)
    candidates = (
        select(OutboxMessage.id)
        .where(OutboxMessage.published_at.is_(None), OutboxMessage.available_at <= now)
        .order_by(OutboxMessage.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    rows = session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id.in_(candidates.scalar_subquery()),
               OutboxMessage.published_at.is_(None))
        .values(attempts=OutboxMessage.attempts + 1)
        .returning(OutboxMessage.id, OutboxMessage.task, OutboxMessage.queue,
                   OutboxMessage.payload)
        .execution_options(synchronize_session=False)
    ).all()
    return sorted((PendingMessage(r.id, r.task, r.queue, dict(r.payload)) for r in rows),
                  key=lambda m: m.id)


def mark_published(session: Session, *, ids: list[int]) -> None:
    if not ids:
        return
    session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id.in_(ids))
        .values(published_at=db_now(session))
        .execution_options(synchronize_session=False)
    )


def publish_pending(
    database_url: str, *, limit: int, publish: Callable[[PendingMessage], None]
) -> tuple[int, bool]:
    """One relay batch: claim up to `limit` rows, `publish` each (the relay's Celery send),
    mark the sent ones published and commit. A publish error keeps what was sent and raises
    after the commit (the rest stays unpublished). Returns (sent, whether the batch was
    full, i.e. more may be waiting)."""
    session = get_sessionmaker(database_url)()
    sent: list[int] = []
    try:
        pending = claim_pending(session, limit=limit)
        error: Exception | None = None
        for message in pending:
            try:
                publish(message)
            except Exception as exc:  # noqa: BLE001 - keep what was sent, retry the rest
                error = exc
                break
            sent.append(message.id)
        mark_published(session, ids=sent)
        session.commit()
        if error is not None:
            raise error
        return len(sent), len(pending) == limit
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def count_pending(session: Session) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(OutboxMessage)
            .where(OutboxMessage.published_at.is_(None))
        ) or 0
    )
