"""Fixtures for the API tests: settings and an app per test (PostgreSQL from `pg_url`),
a migrated SQLite database (dev mode), tenants with keys, row factories."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.db.models import File, Job
from app.settings import Settings
from tests.app.helpers import LiveServer, Tenant, create_tenant, make_settings
from tests.factories import insert_file, insert_job


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    from app.db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'crma.sqlite'}"
    upgrade(url)
    return url


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test using it runs on PostgreSQL and on SQLite (`crma dev`)."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return request.getfixturevalue("sqlite_url")


@pytest.fixture
def make_job() -> Callable[..., Job]:
    return insert_job


@pytest.fixture
def make_file() -> Callable[..., File]:
    return insert_file


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


@pytest.fixture
def live_server(api_settings: Settings) -> Iterator[LiveServer]:
    from app.main import create_app

    with LiveServer(create_app(api_settings)) as server:
        yield server
