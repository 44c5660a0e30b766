"""Fixtures for the worker tests: PostgreSQL sessions and test Settings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
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


@pytest.fixture(scope="session")
def tiny_model_store(tmp_path_factory) -> Path:
    """A model store holding a tiny random-weight Llama under a catalog id."""
    from crma_core.testing import make_tiny_model_dir
    from tests.worker.stack import MODEL_ID

    root = tmp_path_factory.mktemp("model-store")
    make_tiny_model_dir(root / MODEL_ID, "llama", seed=0)
    return root


@pytest.fixture
def make_stack(pg_url: str, redis_url: str, tiny_model_store, tmp_path):
    """`make_stack(**setting_overrides)` -> a started relay + reaper; workers on demand.
    Everything it started is stopped and its Redis keys deleted afterwards."""
    import secrets

    import redis

    from tests.worker.stack import Stack, stack_settings

    stacks = []

    def make(**overrides):
        prefix = f"crma-test-{secrets.token_hex(4)}:"
        tmp = tmp_path / f"stack-{len(stacks)}"
        tmp.mkdir()
        settings, env = stack_settings(pg_url=pg_url, redis_url=redis_url, prefix=prefix,
                                       tmp=tmp, model_store=tiny_model_store, **overrides)
        stack = Stack(settings=settings, env=env, tmp=tmp)
        stacks.append((stack, prefix))
        stack.start_relay_and_reaper()
        return stack

    yield make
    client = redis.Redis.from_url(redis_url)
    for stack, prefix in stacks:
        stack.close()
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
