"""Row helpers for the concurrency tests (plain functions, usable from any thread)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Account, File, Job
from app.domain.ids import new_id
from app.services import accounts, billing


def make_account(factory: Callable[[], Session], *, plan: str, credit_micros: int = 0) -> str:
    with factory() as session:
        account, _ = accounts.create_account(session, name=f"{plan} concurrency", plan=plan)
        if credit_micros:
            billing.add_credit(session, account_id=account.id, amount_micros=credit_micros,
                               memo="test credit")
        session.commit()
        return account.id


def make_file(session: Session, *, account_id: str, tokens: int = 1000) -> File:
    row = File(
        id=new_id("file"), account_id=account_id, filename="train.jsonl", purpose="fine-tune",
        bytes=10, status="processed", format="chat", example_count=10,
        token_counts={"llama": tokens, "mistral": tokens, "gemma2": tokens}, errors=[],
        error_count=0, created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def make_job(session: Session, *, account_id: str, model: str, file_id: str) -> Job:
    job = Job(
        id=new_id("job"), account_id=account_id, kind="fine_tune", model=model,
        training_file_id=file_id, hyperparameters={}, adapter={}, seed=0, status="queued",
        queue="large", estimated_tokens=0, trained_tokens=0, hold_micros=0, cost_micros=0,
        attempt=0, created_at=utcnow(), queued_at=utcnow(),
    )
    session.add(job)
    session.flush()
    return job


def balances(factory: Callable[[], Session], account_id: str) -> tuple[int, int]:
    with factory() as session:
        row = session.get(Account, account_id)
        return row.credit_available_micros, row.credit_held_micros


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
