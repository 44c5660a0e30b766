"""Prometheus metrics: a pure ASGI middleware with one counter and one histogram, and the
/metrics route.

`http_requests_total{handler, method, status}` and `http_request_duration_seconds{handler,
method}`, where `handler` is the matched route's template (`/v1/fine_tuning/jobs/{job_id}`,
read from the scope after routing; `none` when nothing matched). /healthz and /metrics are not
counted. This replaced prometheus-fastapi-instrumentator, whose per-request route lookup and
five metric families cost about 0.35 ms of CPU per request (measured in
bench/api_load.py's profile), a tenth of a status read.

Each API process keeps its own counters (as before); scrape every process, or run one."""

from __future__ import annotations

import time

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

EXCLUDED = frozenset({"/metrics", "/healthz"})
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _metric(kind, name: str, doc: str, labels: tuple[str, ...], **kwargs):  # noqa: ANN001, ANN202
    # Module-level and idempotent: tests build many apps in one process.
    existing = REGISTRY._names_to_collectors.get(name)  # noqa: SLF001 - no public lookup
    return existing if existing is not None else kind(name, doc, labels, **kwargs)


REQUESTS = _metric(Counter, "http_requests_total", "HTTP requests by route template, method "
                   "and status.", ("handler", "method", "status"))
DURATION = _metric(Histogram, "http_request_duration_seconds", "HTTP request duration by route "
                   "template and method.", ("handler", "method"), buckets=BUCKETS)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in EXCLUDED:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            handler = getattr(route, "path_format", None) or "none"
            method = scope.get("method", "")
            REQUESTS.labels(handler, method, str(status["code"])).inc()
            DURATION.labels(handler, method).observe(time.perf_counter() - started)


def install_metrics(app: FastAPI) -> None:
    app.add_middleware(MetricsMiddleware)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics",
             response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def metrics() -> Response:
        """Request counts and durations per route (Prometheus text format)."""
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
