"""Billing fixtures: real PostgreSQL sessions and accounts with a plan and credit."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Account
from app.db.session import get_sessionmaker
from tests.factories import committed_account


@pytest.fixture
def pg_factory(pg_url: str) -> sessionmaker[Session]:
    return get_sessionmaker(pg_url)


@pytest.fixture
def pg_session(pg_factory: sessionmaker[Session]) -> Iterator[Session]:
    session = pg_factory()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


@pytest.fixture
def make_account(pg_factory: sessionmaker[Session]) -> Callable[..., str]:
    def make(plan: str = "pro", credit_micros: int = 0) -> str:
        return committed_account(pg_factory, plan=plan, credit_micros=credit_micros)

    return make


def account_row(session: Session, account_id: str) -> Account:
    return session.get(Account, account_id, populate_existing=True)
