"""Concurrency fixtures: a PostgreSQL engine with room for many threads, and row helpers.

Each thread opens its own session (own connection, own transaction), exactly like
concurrent API requests or worker processes do."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from app.db.session import normalize_url


@pytest.fixture(scope="session")
def threads_factory(pg_url: str) -> Iterator[sessionmaker[Session]]:
    # The same lock_timeout as production engines (app/db/session.py), but a pool large
    # enough that 50 threads never queue for a connection: we test the database, not the pool.
    engine = create_engine(
        normalize_url(pg_url), pool_size=64, max_overflow=0,
        connect_args={"options": "-c lock_timeout=2000 -c statement_timeout=10000"},
    )
    yield sessionmaker(bind=engine, expire_on_commit=False)
    engine.dispose()
