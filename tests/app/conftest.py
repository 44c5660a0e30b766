"""Fixtures for the API tests: a migrated SQLite database (dev mode) and row factories."""

from __future__ import annotations

from collections.abc import Callable, Iterator
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


# --- API fixtures ----------------------------------------------------------------------------

from dataclasses import dataclass  # noqa: E402

from fastapi.testclient import TestClient  # noqa: E402

from app.db.session import session_scope  # noqa: E402
from app.settings import Settings  # noqa: E402


@dataclass
class Tenant:
    account_id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def create_tenant(database_url: str, *, plan: str = "pro", credit_micros: int = 0) -> Tenant:
    from app.services import accounts

    with session_scope(database_url) as session:
        account, key = accounts.create_account(session, name=f"{plan} tenant", plan=plan)
        if credit_micros:
            from app.services import billing

            billing.add_credit(session, account_id=account.id, amount_micros=credit_micros,
                               memo="test credit")
    return Tenant(account.id, key)


def make_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "storage_url": (tmp_path / "objects").as_uri(),
        "broker_url": f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}",
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def api_settings(tmp_path: Path, pg_url: str) -> Settings:
    return make_settings(tmp_path, pg_url)


@pytest.fixture
def client(api_settings: Settings) -> Iterator[TestClient]:
    from app.main import create_app

    with TestClient(create_app(api_settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def tenant(pg_url: str) -> Tenant:
    return create_tenant(pg_url, plan="pro", credit_micros=50_000_000)


@pytest.fixture
def other_tenant(pg_url: str) -> Tenant:
    return create_tenant(pg_url, plan="pro", credit_micros=50_000_000)


CHAT_LINE = (
    '{"messages": [{"role": "system", "content": "You are terse."}, '
    '{"role": "user", "content": "Capital of France?"}, '
    '{"role": "assistant", "content": "Paris."}]}'
)


def jsonl(lines: int = 10, line: str = CHAT_LINE) -> bytes:
    return ("\n".join([line] * lines) + "\n").encode()


def upload(client: TestClient, tenant: Tenant, data: bytes | None = None,
           filename: str = "train.jsonl", **headers: str):
    return client.post(
        "/v1/files", headers={**tenant.headers, **headers},
        data={"purpose": "fine-tune"}, files={"file": (filename, data or jsonl(), "application/jsonl")},
    )
