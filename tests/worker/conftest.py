"""Fixtures for the worker tests: PostgreSQL sessions and test Settings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy.orm import Session

from app.db.session import get_sessionmaker
from app.settings import Settings


@pytest.fixture
def tx(pg_url: str) -> Callable[[], "contextmanager[Session]"]:
    """`with tx() as s:` a session that commits on exit (one transaction)."""
    maker = get_sessionmaker(pg_url)

    @contextmanager
    def scope() -> Iterator[Session]:
        session = maker()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    return scope


@pytest.fixture
def settings(pg_url: str, tmp_path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", database_url=pg_url, lease_ttl_s=3.0, heartbeat_s=1.0,
        reaper_interval_s=1.0, max_attempts=3, stale_queued_s=60.0,
    )
