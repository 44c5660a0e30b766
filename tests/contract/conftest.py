"""Contract-test fixtures: the real app on the session's PostgreSQL database, two tenants
with credit, and a processed training file per tenant (so job creation can succeed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from tests.app.helpers import Tenant, create_tenant, make_settings, upload_id


@pytest.fixture
def contract_settings(tmp_path: Path, pg_url: str) -> Settings:
    return make_settings(tmp_path, pg_url)


@pytest.fixture
def app(contract_settings: Settings):
    from app.main import create_app

    return create_app(contract_settings)


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def tenant(pg_url: str) -> Tenant:
    return create_tenant(pg_url, plan="pro", credit_micros=500_000_000)


@pytest.fixture
def other_tenant(pg_url: str) -> Tenant:
    return create_tenant(pg_url, plan="pro", credit_micros=500_000_000)


@pytest.fixture
def training_file(client: TestClient, tenant: Tenant) -> str:
    return upload_id(client, tenant)
