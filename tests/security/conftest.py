"""Security-test fixtures: the real app on the session's PostgreSQL database and tenants."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.app.helpers import Tenant, create_tenant, make_settings


@pytest.fixture
def make_client(tmp_path: Path, pg_url: str):
    """`make_client(**setting_overrides)`: a TestClient on a fresh app (closed afterwards)."""
    from app.main import create_app

    opened: list[TestClient] = []

    def make(**overrides) -> TestClient:
        settings = make_settings(tmp_path, pg_url, **overrides)
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


@pytest.fixture
def tenant(pg_url: str) -> Tenant:
    return create_tenant(pg_url, plan="pro", credit_micros=50_000_000)


@pytest.fixture
def other_tenant(pg_url: str) -> Tenant:
    return create_tenant(pg_url, plan="pro", credit_micros=50_000_000)
