"""Fixtures for the worker tests: PostgreSQL sessions and test Settings."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from app.db.session import session_scope
from app.settings import Settings


@pytest.fixture
def tx(pg_url: str) -> Callable[[], AbstractContextManager[Session]]:
    """`with tx() as s:` a session that commits on exit (one transaction)."""
    return partial(session_scope, pg_url)


@pytest.fixture
def settings(pg_url: str, tmp_path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", database_url=pg_url, lease_ttl_s=3.0, heartbeat_s=1.0,
        reaper_interval_s=1.0, max_attempts=3, stale_queued_s=60.0,
    )


class _Stacks:
    """Builds stacks (relay + reaper started; workers on demand) and tears them down:
    processes stopped, Redis keys under each stack's prefix deleted."""

    def __init__(self, pg_url: str, redis_url: str, model_store: Path, tmp: Path) -> None:
        self.pg_url, self.redis_url, self.model_store, self.tmp = pg_url, redis_url, model_store, tmp
        self.made: list = []

    def make(self, **overrides):
        import secrets

        from tests.worker.stack import Stack, stack_settings

        prefix = f"crma-test-{secrets.token_hex(4)}:"
        tmp = self.tmp / f"stack-{len(self.made)}"
        tmp.mkdir()
        settings, env = stack_settings(pg_url=self.pg_url, redis_url=self.redis_url,
                                       prefix=prefix, tmp=tmp, model_store=self.model_store,
                                       **overrides)
        stack = Stack(settings=settings, env=env, tmp=tmp)
        self.made.append((stack, prefix))
        stack.start_relay_and_reaper()
        return stack

    def close(self) -> None:
        import redis

        client = redis.Redis.from_url(self.redis_url)
        for stack, prefix in self.made:
            stack.close()
            for key in client.scan_iter(match=prefix + "*"):
                client.delete(key)


@pytest.fixture(scope="session")
def worker_stack(pg_url: str, redis_url: str, tiny_model_store: Path, tmp_path_factory):
    """One stack for the whole session, with two workers started together (starting a worker
    costs seconds of imports on two cores). Tests that kill a worker call
    `stack.ensure_workers(n)` to get back to the number of live workers they need.

    It has a database of its own: its reaper would otherwise re-offer the deliberately stale
    jobs the lease/relay/reaper tests leave in the session database, and its workers run them."""
    from app.db.migrate import upgrade
    from tests.conftest import create_database, drop_database

    assert pg_url  # PostgreSQL is reachable (the fixture skips or fails otherwise)
    url = create_database()
    upgrade(url)
    stacks = _Stacks(url, redis_url, tiny_model_store, tmp_path_factory.mktemp("stack"))
    stack = stacks.make()
    stack.ensure_workers(2)
    yield stack
    stacks.close()
    from app.db.session import get_engine

    get_engine(url).dispose()
    drop_database(url)
