"""Conditional status transitions: `UPDATE jobs SET status = :to WHERE id = :id AND
status IN (:expected) [AND attempt = :attempt]`. Zero rows means the transition lost a race
(or the fencing token is stale); the caller decides what that means."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Job
from app.domain.job_state import TERMINAL, JobStatus, can_transition


def transition_job(
    session: Session,
    *,
    job_id: str,
    to: JobStatus,
    expected: Iterable[JobStatus],
    attempt: int | None = None,
    values: dict[str, Any] | None = None,
) -> bool:
    """Move a job to `to` if it is in one of `expected` (and still on `attempt`).

    Raises ValueError for a transition the table forbids: that is a programming error, not a
    race. Returns False when no row matched."""
    expected = tuple(expected)
    for source in expected:
        if not can_transition(source, to):
            raise ValueError(f"illegal job transition {source} -> {to}")
    changes: dict[str, Any] = {"status": to.value, **(values or {})}
    if to in TERMINAL:
        changes.setdefault("finished_at", utcnow())
        changes.setdefault("lease_owner", None)
        changes.setdefault("lease_expires_at", None)
    statement = update(Job).where(Job.id == job_id, Job.status.in_([s.value for s in expected]))
    if attempt is not None:
        statement = statement.where(Job.attempt == attempt)
    result = session.execute(statement.values(**changes).execution_options(synchronize_session=False))
    return result.rowcount == 1
