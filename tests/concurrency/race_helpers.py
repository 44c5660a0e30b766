"""Row helpers for the concurrency tests (plain functions, usable from any thread)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from app.db.models import Account, File, Job
from tests import factories


make_account = factories.committed_account


def make_file(session: Session, *, account_id: str, tokens: int = 1000) -> File:
    return factories.insert_file(
        session, account_id=account_id, example_count=10,
        token_counts={"llama": tokens, "mistral": tokens, "gemma2": tokens})


def make_job(session: Session, *, account_id: str, model: str, file_id: str) -> Job:
    return factories.insert_job(session, account_id=account_id, model=model,
                                training_file_id=file_id, queue="large")


def balances(factory: Callable[[], Session], account_id: str) -> tuple[int, int]:
    with factory() as session:
        row = session.get(Account, account_id)
        return row.credit_available_micros, row.credit_held_micros


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
