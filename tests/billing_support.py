"""Admission of a job row the test has already inserted (the API inserts the job with its
admitted terms in one statement instead: app/services/job_creation.py insert_job)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.db.models import Job
from app.services import quotas
from app.services.admission import Admission, reserve
from app.services.quotas import QuotaSnapshot
from app.settings import Settings


def admit(session: Session, *, source_id: str, estimated_tokens: int,
          **terms: Any) -> Admission:
    """`admission.reserve` for the job `source_id`, then its estimated_tokens, token_budget
    and hold_micros written onto the row, as they would have been inserted."""
    terms.setdefault("settings", Settings())
    admitted = reserve(session, source_id=source_id, estimated_tokens=estimated_tokens, **terms)
    session.execute(
        update(Job.__table__).where(Job.__table__.c.id == source_id).values(
            estimated_tokens=estimated_tokens, token_budget=admitted.token_budget,
            hold_micros=admitted.hold_micros))
    return admitted


def free_runs(session: Session, **at: Any) -> QuotaSnapshot | None:
    """`quotas.snapshot` at the settings' daily limit."""
    return quotas.snapshot(session, runs_per_day=Settings().free_runs_per_day, **at)
