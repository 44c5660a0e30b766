"""Inputs the fuzzer once turned into 500s, pinned as plain tests (they run in every
`pytest`, unlike the schemathesis run itself)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.app.helpers import Tenant

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("query", [
    "end_date=0001-01-01",  # the default 30-day window would start before year 1
    "start_date=0001-01-01&end_date=0001-01-01",
    "end_date=9999-12-31",  # the day after the last day does not exist
    "start_date=9999-12-31&end_date=9999-12-31",
])
def test_usage_at_the_ends_of_the_calendar(client: TestClient, tenant: Tenant, query: str) -> None:
    response = client.get(f"/v1/usage?{query}", headers=tenant.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["data"] == [] and body["total_cost_micros"] == 0
    assert body["start_date"] <= body["end_date"]


def test_usage_window_that_starts_after_it_ends_is_a_400(client: TestClient,
                                                          tenant: Tenant) -> None:
    response = client.get("/v1/usage?start_date=9999-12-31&end_date=0001-01-01",
                          headers=tenant.headers)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "start_date"
