"""The one writer of `jobs.status`: `UPDATE jobs SET status = :to WHERE id = :id AND status
IN (:expected) [AND attempt = :attempt] [AND <conditions>] RETURNING attempt`. No matching row
means the transition lost a race (or its fencing number is stale); the caller decides what
that means. Everything that must happen with a transition (settlement, events, the
continual-run cascade) is in app/services/job_lifecycle.py."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Job
from app.domain.job_state import TERMINAL, JobStatus, can_transition


@dataclass(frozen=True)
class Transition:
    """The outcome of `transition_job`: truthy when the row moved; `attempt` is the job's
    fencing number after the move (the claim bumps it)."""

    moved: bool
    attempt: int | None = None

    def __bool__(self) -> bool:
        return self.moved


def transition_job(
    session: Session,
    *,
    job_id: str,
    to: JobStatus,
    expected: Iterable[JobStatus],
    attempt: int | None = None,
    values: dict[str, Any] | None = None,
    conditions: Iterable[ColumnElement[bool]] = (),
) -> Transition:
    """Move a job to `to` if it is in one of `expected` (still on `attempt`, and meeting the
    extra SQL `conditions`, e.g. an expired lease). `values` may hold SQL expressions.

    Raises ValueError for a transition the table forbids: that is a programming error, not a
    race."""
    expected = tuple(expected)
    for source in expected:
        if not can_transition(source, to):
            raise ValueError(f"illegal job transition {source} -> {to}")
    changes: dict[str, Any] = {"status": to.value, **(values or {})}
    if to in TERMINAL:
        changes.setdefault("finished_at", utcnow())
        changes.setdefault("lease_owner", None)
        changes.setdefault("lease_expires_at", None)
    statement = update(Job).where(Job.id == job_id, Job.status.in_([s.value for s in expected]),
                                  *conditions)
    if attempt is not None:
        statement = statement.where(Job.attempt == attempt)
    moved = session.execute(
        statement.values(**changes).returning(Job.attempt)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    return Transition(moved is not None, moved)
