"""Per-API-key request rate limit (OWASP API4): a token bucket per key in each API process,
OpenAI's x-ratelimit-* headers on every authenticated response, 429 `rate_limit_exceeded`
with Retry-After once the bucket is empty."""

from __future__ import annotations

import pytest

from app.api.rate_limit import RateLimiter, format_reset
from tests.app.helpers import Tenant

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_the_limit_then_refills_continuously() -> None:
    clock = Clock()
    limiter = RateLimiter(60, clock=clock)  # one token per second
    for remaining in range(59, -1, -1):
        headers, retry = limiter.take("key-a")
        assert retry is None and headers["x-ratelimit-remaining-requests"] == str(remaining)
    headers, retry = limiter.take("key-a")
    assert retry == 1 and headers["x-ratelimit-remaining-requests"] == "0"
    assert limiter.take("key-b")[1] is None  # buckets are per key
    clock.now += 0.5
    assert limiter.take("key-a")[1] == 1  # half a token is not a request
    clock.now += 0.5
    headers, retry = limiter.take("key-a")
    assert retry is None and headers["x-ratelimit-reset-requests"] == "1m0s"
    clock.now += 3600
    headers, _ = limiter.take("key-a")
    assert headers["x-ratelimit-remaining-requests"] == "59"  # capped at the limit
    assert headers["x-ratelimit-reset-requests"] == "1s"


def test_reset_durations_read_like_openais() -> None:
    assert [format_reset(s) for s in (0, 0.0123, 1.5, 59.99, 360)] == [
        "0ms", "13ms", "1.5s", "60s", "6m0s"]


def test_http_limit_is_per_key_with_headers_and_retry_after(make_client, tenant: Tenant,
                                                            other_tenant: Tenant) -> None:
    client = make_client(rate_limit_per_minute=5)
    seen = []
    for _ in range(5):
        response = client.get("/v1/fine_tuning/jobs", headers=tenant.headers)
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-requests"] == "5"
        seen.append(int(response.headers["x-ratelimit-remaining-requests"]))
        assert response.headers["x-ratelimit-reset-requests"].endswith("s")
    assert seen == [4, 3, 2, 1, 0]
    limited = client.get("/v1/files", headers=tenant.headers)
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(limited.headers["retry-after"]) <= 12  # one token per 12 s
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    assert limited.headers["x-request-id"]
    # Creating routes are limited before any work is done (nothing is created).
    create = client.post("/v1/fine_tuning/jobs", headers=tenant.headers,
                         json={"model": "tinyllama-1.1b-chat", "training_file": "file-nope"})
    assert create.status_code == 429
    # Another key has its own bucket; unauthenticated routes carry no rate-limit headers.
    other = client.get("/v1/files", headers=other_tenant.headers)
    assert other.status_code == 200 and other.headers["x-ratelimit-remaining-requests"] == "4"
    health = client.get("/healthz")
    assert health.status_code == 200 and "x-ratelimit-limit-requests" not in health.headers


def test_limit_zero_turns_it_off(make_client, tenant: Tenant) -> None:
    client = make_client(rate_limit_per_minute=0)
    for _ in range(3):
        response = client.get("/v1/files", headers=tenant.headers)
        assert response.status_code == 200
        assert "x-ratelimit-limit-requests" not in response.headers
