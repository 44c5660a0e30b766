"""Checkpoints of a job (OpenAI `fine_tuning.job.checkpoint`), newest step first, and the
best of them by validation loss."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Checkpoint
from app.domain.id_format import is_id
from app.services.pagination import invalid_cursor


def list_checkpoints(
    session: Session, *, job_id: str, after: str | None, limit: int
) -> tuple[list[Checkpoint], bool]:
    """The job's checkpoints (ownership already checked by the caller); `after` is the id
    of the last checkpoint of the previous page."""
    statement = select(Checkpoint).where(Checkpoint.job_id == job_id)
    if after is not None:
        step = session.scalar(
            select(Checkpoint.step).where(Checkpoint.job_id == job_id, Checkpoint.id == after)
        ) if is_id(after) else None
        if step is None:
            raise invalid_cursor(after)
        statement = statement.where(Checkpoint.step < step)
    rows = list(session.scalars(statement.order_by(Checkpoint.step.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def best_step(session: Session, *, job_id: str) -> int | None:
    """The step of the job's checkpoint with the lowest `valid_loss` (the earliest of equal
    ones); None while no checkpoint was evaluated."""
    scored = [(metrics["valid_loss"], step) for step, metrics in session.execute(
        select(Checkpoint.step, Checkpoint.metrics).where(Checkpoint.job_id == job_id))
        if isinstance(metrics, dict) and isinstance(metrics.get("valid_loss"), int | float)]
    return min(scored)[1] if scored else None
