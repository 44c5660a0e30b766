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


@pytest.mark.parametrize("query", ["end_date=0", "start_date=1700000000", "end_date=2026-1-1"])
def test_usage_dates_are_iso_days_not_timestamps(client: TestClient, tenant: Tenant,
                                                 query: str) -> None:
    response = client.get(f"/v1/usage?{query}", headers=tenant.headers)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("OPTIONS", "/v1/files/file-000000000000000000000000", "DELETE, GET"),
    ("PUT", "/v1/files", "GET, POST"),
    ("PATCH", "/v1/fine_tuning/jobs", "GET, POST"),
    ("OPTIONS", "/v1/fine_tuning/jobs/estimate", "POST"),
])
def test_405_allow_lists_every_documented_method(client: TestClient, tenant: Tenant,
                                                 method: str, path: str, allow: str) -> None:
    response = client.request(method, path, headers=tenant.headers)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_metrics_are_documented_as_the_text_they_are(client: TestClient) -> None:
    import json
    from pathlib import Path

    document = json.loads((Path(__file__).resolve().parents[2] / "openapi" / "openapi.json")
                          .read_text())
    documented = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    served = client.get("/metrics").headers["content-type"].split(";")[0]
    assert list(documented) == [served] == ["text/plain"]


# Requests the schema allowed and the server refused (issue 21): each is now accepted, or the
# schema says why not.
@pytest.mark.parametrize("path", ["/v1/files", "/v1/fine_tuning/jobs", "/v1/billing/ledger",
                                  "/v1/continual/runs"])
def test_an_empty_cursor_is_the_first_page(client: TestClient, tenant: Tenant,
                                           training_file: str, path: str) -> None:
    first = client.get(path, headers=tenant.headers)
    empty = client.get(f"{path}?after=", headers=tenant.headers)
    assert empty.status_code == 200, empty.text
    assert empty.json() == first.json()


def test_an_unknown_cursor_is_still_a_400(client: TestClient, tenant: Tenant) -> None:
    response = client.get("/v1/files?after=file-000000000000000000000000",
                          headers=tenant.headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_cursor"


@pytest.mark.parametrize("value", [223.0, 1e2])
def test_a_whole_float_batch_size_is_that_integer(client: TestClient, tenant: Tenant,
                                                  training_file: str, value: float) -> None:
    body = {"model": "smollm2-135m-instruct", "training_file": training_file,
            "hyperparameters": {"batch_size": value, "n_epochs": 1.0}}
    response = client.post("/v1/fine_tuning/jobs/estimate", headers=tenant.headers, json=body)
    assert response.status_code == 200, response.text
    created = client.post("/v1/fine_tuning/jobs", headers=tenant.headers, json=body)
    assert created.status_code == 201, created.text
    assert created.json()["hyperparameters"]["batch_size"] == int(value)
    assert created.json()["hyperparameters"]["n_epochs"] == 1


@pytest.mark.parametrize("value", [2.5, "3", True])
def test_a_fractional_or_non_numeric_batch_size_is_a_422(client: TestClient, tenant: Tenant,
                                                         training_file: str,
                                                         value: object) -> None:
    body = {"model": "smollm2-135m-instruct", "training_file": training_file,
            "hyperparameters": {"batch_size": value}}
    response = client.post("/v1/fine_tuning/jobs/estimate", headers=tenant.headers, json=body)
    assert response.status_code == 422, response.text


def test_the_usage_window_limit_is_in_the_schema_and_enforced(client: TestClient,
                                                              tenant: Tenant) -> None:
    import json
    from pathlib import Path

    document = json.loads((Path(__file__).resolve().parents[2] / "openapi" / "openapi.json")
                          .read_text())
    parameters = {p["name"]: p for p in document["paths"]["/v1/usage"]["get"]["parameters"]}
    assert "at most 366 days" in parameters["start_date"]["description"]
    widest = client.get("/v1/usage?start_date=2024-01-01&end_date=2024-12-31",
                        headers=tenant.headers)  # a leap year: 366 days
    assert widest.status_code == 200, widest.text
    too_wide = client.get("/v1/usage?start_date=2024-01-01&end_date=2025-01-01",
                          headers=tenant.headers)
    assert too_wide.status_code == 400
    error = too_wide.json()["error"]
    assert error["param"] == "start_date" and "367 days" in error["message"]
