"""The polled job routes dispatched directly (app/api/direct_routes.py) answer exactly as the
FastAPI routes behind them: same status, body and headers for good and bad requests, on
PostgreSQL and SQLite; requests that need FastAPI's validation or the event stream are left to
FastAPI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.direct_routes import DirectRoute
from app.db.session import session_scope
from app.services import events
from tests.app.helpers import Tenant, create_tenant, make_settings
from tests.factories import insert_job


def without_direct_routes(app: FastAPI) -> FastAPI:
    app.router.routes[:] = [r for r in app.router.routes if not isinstance(r, DirectRoute)]
    return app


def both_ways(tmp_path: Path, url: str, **settings: object) -> Iterator[tuple[TestClient, ...]]:
    from app.main import create_app

    direct = create_app(make_settings(tmp_path / "direct", url, **settings))
    assert any(isinstance(r, DirectRoute) for r in direct.router.routes)
    plain = without_direct_routes(create_app(make_settings(tmp_path / "plain", url, **settings)))
    with TestClient(direct, raise_server_exceptions=False) as one, \
            TestClient(plain, raise_server_exceptions=False) as other:
        yield one, other


def comparable(response) -> tuple:  # noqa: ANN001 - an httpx response
    headers = {k: v for k, v in response.headers.items() if k != "x-request-id"}
    # The bucket's refill time is measured from each app's own clock.
    if "x-ratelimit-reset-requests" in headers:
        headers["x-ratelimit-reset-requests"] = "(set)"
    return response.status_code, response.content, headers


def seed(url: str) -> tuple[Tenant, Tenant, list[str], list[str]]:
    tenant, other = create_tenant(url, plan="pro"), create_tenant(url, plan="pro")
    with session_scope(url) as session:
        job_ids = [insert_job(session, account_id=tenant.account_id,
                              user_metadata={"n": str(i)}).id for i in range(4)]
        for i in range(5):
            events.record_event(session, job_id=job_ids[0], message=f"step {i}",
                                data={"step": i})
        event_ids = [e.id for e in events.list_events(session, job_id=job_ids[0], limit=10)]
    return tenant, other, job_ids, event_ids


def test_the_same_requests_get_the_same_answers_both_ways(
    tmp_path: Path, db_url: str
) -> None:
    tenant, other, job_ids, event_ids = seed(db_url)
    job = f"/v1/fine_tuning/jobs/{job_ids[0]}"
    requests = [
        (job, tenant.headers), (job, other.headers), (job, {}),
        (job, {"Authorization": "Bearer sk-crma-" + "A" * 40}),
        (job, {"Authorization": "Basic dXNlcjpwYXNz"}),
        ("/v1/fine_tuning/jobs/ftjob-nope", tenant.headers),
        ("/v1/fine_tuning/jobs/" + "x" * 300, tenant.headers),
        (job + "?unused=1", tenant.headers),
        ("/v1/fine_tuning/jobs", tenant.headers),
        ("/v1/fine_tuning/jobs?limit=2", tenant.headers),
        (f"/v1/fine_tuning/jobs?after={job_ids[2]}&limit=1", tenant.headers),
        ("/v1/fine_tuning/jobs?after=junk", tenant.headers),
        (f"/v1/fine_tuning/jobs?after={job_ids[2]}", other.headers),
        ("/v1/fine_tuning/jobs?limit=0", tenant.headers),
        ("/v1/fine_tuning/jobs?limit=101", tenant.headers),
        ("/v1/fine_tuning/jobs?limit=two", tenant.headers),
        ("/v1/fine_tuning/jobs?limit=2&limit=3", tenant.headers),
        ("/v1/fine_tuning/jobs?limit=002", tenant.headers),
        ("/v1/fine_tuning/jobs?limit=%2B2", tenant.headers),
        ("/v1/fine_tuning/jobs?after=", tenant.headers),
        ("/v1/fine_tuning/jobs?limit=1", other.headers),
        (job + "/events", tenant.headers),
        (job + "/events?limit=2", tenant.headers),
        (job + f"/events?after={event_ids[1]}&limit=2", tenant.headers),
        (job + "/events?after=event-nope", tenant.headers),
        (job + "/events", other.headers),
        (job + "/events", {**tenant.headers, "Accept": "application/json"}),
    ]
    # No rate limit here: the bucket refills with time, so how many requests remain would
    # differ by how fast each app answered (the limit is compared below).
    for direct, plain in both_ways(tmp_path, db_url, rate_limit_per_minute=0):
        for path, headers in requests:
            assert comparable(direct.get(path, headers=headers)) == \
                comparable(plain.get(path, headers=headers)), path
        # HEAD and other methods are not taken directly.
        assert comparable(direct.head(job, headers=tenant.headers)) == \
            comparable(plain.head(job, headers=tenant.headers))
        assert comparable(direct.delete(job, headers=tenant.headers)) == \
            comparable(plain.delete(job, headers=tenant.headers))


def test_rate_limited_requests_get_the_same_429_both_ways(tmp_path: Path, pg_url: str) -> None:
    tenant, _, job_ids, _ = seed(pg_url)
    for direct, plain in both_ways(tmp_path, pg_url, rate_limit_per_minute=3):
        answers = [
            (comparable(direct.get(f"/v1/fine_tuning/jobs/{job_ids[0]}", headers=tenant.headers)),
             comparable(plain.get(f"/v1/fine_tuning/jobs/{job_ids[0]}", headers=tenant.headers)))
            for _ in range(5)
        ]
    assert [a[0] for a, _ in answers] == [200, 200, 200, 429, 429]
    for one, other in answers:
        one_headers, other_headers = dict(one[2]), dict(other[2])
        # Retry-After counts down with each app's own bucket.
        assert one_headers.pop("retry-after", None) is not None or one[0] == 200
        other_headers.pop("retry-after", None)
        assert (one[0], one_headers) == (other[0], other_headers)


def test_which_requests_are_taken_directly(tmp_path: Path, pg_url: str) -> None:
    from app.main import create_app

    app = create_app(make_settings(tmp_path, pg_url))
    direct = {route.path: route for route in app.router.routes
              if isinstance(route, DirectRoute)}
    assert set(direct) == {"/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs/{job_id}",
                           "/v1/fine_tuning/jobs/{job_id}/events"}

    def taken(path: str, query: str = "", method: str = "GET",
              headers: tuple[tuple[bytes, bytes], ...] = ()) -> bool:
        scope = {"type": "http", "method": method, "path": path, "root_path": "",
                 "query_string": query.encode(), "headers": list(headers)}
        return any(route.matches(scope)[0].name == "FULL" for route in direct.values())

    assert taken("/v1/fine_tuning/jobs/ftjob-1")
    assert taken("/v1/fine_tuning/jobs", "after=ftjob-1&limit=100")
    assert taken("/v1/fine_tuning/jobs/ftjob-1/events", "limit=1",
                 headers=((b"accept", b"application/json"),))
    assert not taken("/v1/fine_tuning/jobs", method="POST")
    assert not taken("/v1/fine_tuning/jobs/ftjob-1", method="HEAD")
    assert not taken("/v1/fine_tuning/jobs/ftjob-1/cancel", method="POST")
    for query in ("limit=0", "limit=101", "limit=+5", "limit=5.0", "limit=%D9%A3",
                  "limit=5&limit=5", "after=", "x=1"):
        assert not taken("/v1/fine_tuning/jobs", query), query
    assert not taken("/v1/fine_tuning/jobs/ftjob-1/events",
                     headers=((b"accept", b"text/event-stream"),))
    assert not taken("/v1/fine_tuning/jobs/ftjob-1/events",
                     headers=((b"last-event-id", b"event-1"),))
    # The metrics label and route of a direct request are the APIRoute's.
    scope = {"type": "http", "method": "GET", "path": "/v1/fine_tuning/jobs/ftjob-1",
             "root_path": "", "query_string": b"", "headers": []}
    _, child = direct["/v1/fine_tuning/jobs/{job_id}"].matches(scope)
    assert child["route"].path_format == "/v1/fine_tuning/jobs/{job_id}"
    assert child["path_params"] == {"job_id": "ftjob-1"}
