"""Fixtures for the API tests: a migrated SQLite database (dev mode) and row factories."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import File, Job
from app.domain.ids import new_id


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    from app.db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'crma.sqlite'}"
    upgrade(url)
    return url


def insert_file(session: Session, *, account_id: str, **values: Any) -> File:
    row = File(
        id=new_id("file"), account_id=account_id, filename="train.jsonl", purpose="fine-tune",
        bytes=10, status="processed", format="chat", example_count=1, token_counts={},
        errors=[], error_count=0, created_at=utcnow(), **values,
    )
    session.add(row)
    session.flush()
    return row


def insert_job(session: Session, *, account_id: str, **values: Any) -> Job:
    training = values.pop("training_file_id", None) or insert_file(session, account_id=account_id).id
    fields: dict[str, Any] = {
        "id": new_id("job"), "account_id": account_id, "kind": "fine_tune",
        "model": "tinyllama-1.1b-chat", "training_file_id": training, "hyperparameters": {},
        "adapter": {}, "seed": 0, "status": "queued", "queue": "small", "estimated_tokens": 0,
        "trained_tokens": 0, "hold_micros": 0, "cost_micros": 0, "attempt": 0,
        "created_at": utcnow(), "queued_at": utcnow(),
    }
    fields.update(values)
    job = Job(**fields)
    session.add(job)
    session.flush()
    return job


@pytest.fixture
def make_job() -> Callable[..., Job]:
    return insert_job


@pytest.fixture
def make_file() -> Callable[..., File]:
    return insert_file
