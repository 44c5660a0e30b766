"""Billing fixtures: real PostgreSQL sessions and accounts with a plan and credit."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Account
from app.db.session import get_sessionmaker
from app.services import accounts, billing


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


def create_account(factory: Callable[[], Session], *, plan: str, credit_micros: int = 0) -> str:
    """A committed account (with credit added through the ledger); returns its id."""
    with factory() as session:
        account, _ = accounts.create_account(session, name=f"{plan} test", plan=plan)
        if credit_micros:
            billing.add_credit(session, account_id=account.id, amount_micros=credit_micros,
                               memo="test credit")
        session.commit()
        return account.id


@pytest.fixture
def make_account(pg_factory: sessionmaker[Session]) -> Callable[..., str]:
    def make(plan: str = "pro", credit_micros: int = 0) -> str:
        return create_account(pg_factory, plan=plan, credit_micros=credit_micros)

    return make


def account_row(session: Session, account_id: str) -> Account:
    return session.get(Account, account_id, populate_existing=True)
