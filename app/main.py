"""The FastAPI application: routers, middleware, one error envelope, OpenAPI docs."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.types import Scope

from app.api.detached import DetachedTasks
from app.api.docs import install_docs
from app.api.errors import install_error_handlers
from app.api.inference import close_engines, sweep_stale_requests
from app.api.logs import configure_logging
from app.api.middleware import BodyLimitMiddleware, RequestContextMiddleware
from app.api.openapi_links import add_links
from app.api.rate_limit import RateLimiter
from app.api.upload_checks import UploadChecks
from app.api.routes import ALL_ROUTERS, jobs
from app.api.routes.dashboard import mount_dashboard
from app.db.reader import open_reader
from app.db.transactions import open_transactions
from app.settings import Settings, get_settings
from app.storage.base import ObjectStore
from app.storage.factory import open_store

# Multipart framing around the file (boundaries, part headers, the purpose field).
MULTIPART_SLACK_BYTES = 64 * 1024
MAX_JSON_BODY_BYTES = 1024 * 1024
# How long shutdown waits for settlements still running (the stale sweep settles the rest).
DRAIN_DETACHED_S = 10.0

DESCRIPTION = """
Fine-tune open models with **CRMA + LoRA** adapters. OpenAI-compatible: point the official
`openai` client's `base_url` at this server (`.../v1`).

**Quick start** (Swagger): click **Authorize** and paste your API key (`sk-crma-...`, from
`crma admin create-account`; `crma dev` prints one), then

1. `POST /v1/files` with `purpose=fine-tune` and a JSONL file (one example per line:
   `{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}`,
   `{"prompt": "...", "completion": "..."}` or `{"text": "..."}`), e.g. the repository's
   `examples/capitals_train.jsonl` and `examples/capitals_valid.jsonl`;
2. `POST /v1/fine_tuning/jobs`: the prefilled example trains on those two files (a file is
   given by its id, or by filename for your newest file of that name);
3. poll `GET /v1/fine_tuning/jobs/{job_id}` (or stream its events), then download the adapter
   from `GET /v1/fine_tuning/jobs/{job_id}/artifacts`.

Errors are `{"error": {"message", "type", "param", "code"}}`. Lists are cursor-paginated
(`?after=<last id>&limit=n`). Send `Idempotency-Key` on creating POSTs to retry safely.
"""

TAGS = [
    {"name": "files", "description": "Upload and manage JSONL training files."},
    {"name": "fine-tuning", "description": "Fine-tuning jobs, events, checkpoints, adapters."},
    {"name": "continual", "description": "Sequential continual-learning runs with drift reports."},
    {"name": "inference", "description": "Call fine-tuned models, continual runs and base "
     "models: OpenAI's chat and text completions."},
    {"name": "models", "description": "The base models and your fine-tuned models."},
    {"name": "ops", "description": "Health, readiness and metrics."},
]


def operation_id(route: APIRoute) -> str:
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def body_limit(settings: Settings):  # noqa: ANN201 - returns the middleware's callback
    upload_limit = settings.max_upload_bytes + MULTIPART_SLACK_BYTES

    def limit_for(scope: Scope) -> int | None:
        if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return MAX_JSON_BODY_BYTES
        if scope.get("path") == "/v1/files":
            return upload_limit
        return MAX_JSON_BODY_BYTES

    return limit_for


def create_app(
    settings: Settings | None = None, *, store: ObjectStore | None = None,
    freeze_gc: bool = False,
) -> FastAPI:
    """The API. `freeze_gc`: the app owns its process (a server), so what exists at startup
    is frozen out of garbage collection; not for an app built inside tests or tools."""
    settings = settings or get_settings()
    configure_logging()
    app = FastAPI(
        title="CRMA Fine-Tuner API",
        version="1.0.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        generate_unique_id_function=operation_id,
        lifespan=_lifespan,
        # Our own /docs and /openapi.json (app/api/docs.py): FastAPI's load a CDN.
        docs_url=None, redoc_url=None, openapi_url=None,
    )
    app.state.settings = settings
    app.state.freeze_gc = freeze_gc
    app.state.reader = open_reader(settings.resolved_database_url, settings.db_timeout_s)
    app.state.transactions = open_transactions(settings.resolved_database_url,
                                               settings.db_timeout_s)
    # Completions' admissions (app/services/inference_metering.py says why not durable).
    app.state.admissions = open_transactions(settings.resolved_database_url,
                                             settings.db_timeout_s, durable=False)
    app.state.store = store or open_store(settings)
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_minute)
    app.state.detached = DetachedTasks()  # completions' settlements (app/api/detached.py)
    app.state.upload_checks = UploadChecks()  # helper processes validating big uploads
    app.router.routes.extend(jobs.direct_routes())  # first: in front of what they shortcut
    for router in ALL_ROUTERS:
        _summaries_from_docstrings(router)
        app.include_router(router)
    mount_dashboard(app)  # app/web at /dashboard
    install_docs(app)
    install_error_handlers(app)
    _instrument(app)
    _envelope_openapi(app)
    # Added last = outermost: the request id wraps everything, including the 413.
    app.add_middleware(BodyLimitMiddleware, limit_for=body_limit(settings))
    app.add_middleware(RequestContextMiddleware)
    return app


def create_server_app() -> FastAPI:
    """The uvicorn factory of `crma serve` and `crma dev`."""
    return create_app(freeze_gc=True)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    if app.state.freeze_gc:
        # Everything alive once the app is built (modules, the app, schemas, compiled
        # statements) lives as long as the server process: out of the collector's sight, a
        # full collection scans only what requests created since, ~10 ms instead of ~80 ms,
        # which was most of job creation's p99 under load (docs/benchmarks.md, API load).
        gc.collect()
        gc.freeze()
    sweeper = asyncio.create_task(sweep_stale_requests(app.state.settings))
    yield
    sweeper.cancel()
    await close_engines(app)
    await app.state.detached.drain(timeout_s=DRAIN_DETACHED_S)
    await app.state.reader.close()
    await app.state.transactions.close()
    await app.state.admissions.close()
    await app.state.upload_checks.close()


def _summaries_from_docstrings(router: APIRouter) -> None:
    """Swagger shows a route's summary in the operation list: use the docstring's first line
    (FastAPI would title-case the function name)."""
    for route in router.routes:
        if isinstance(route, APIRoute) and route.summary is None and route.description:
            first, _, rest = route.description.strip().partition("\n")
            route.summary, route.description = first.strip(), rest.strip()


def _envelope_openapi(app: FastAPI) -> None:
    """Validation errors use the error envelope too: document them that way."""
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        ref = "#/components/schemas/HTTPValidationError"
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                content = operation.get("responses", {}).get("422", {}).get("content", {})
                json_body = content.get("application/json", {})
                if json_body.get("schema", {}).get("$ref") == ref:
                    json_body["schema"] = {"$ref": "#/components/schemas/ErrorResponse"}
                    operation["responses"]["422"]["description"] = "Validation error"
        components = schema.get("components", {}).get("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        _document_authenticated_responses(schema)
        add_links(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


RATE_LIMIT_HEADERS = {
    "x-ratelimit-limit-requests": "Requests per minute allowed for this API key.",
    "x-ratelimit-remaining-requests": "Requests left in the key's bucket.",
    "x-ratelimit-reset-requests": "Time until the bucket is full again (e.g. `12ms`, `6m0s`).",
}
COMMON_AUTHENTICATED = {
    "429": "Quota or rate limit exceeded (retry after Retry-After seconds)",
    "503": "Temporarily unavailable (retry after Retry-After seconds)",
}


def _document_authenticated_responses(schema: dict) -> None:
    """Every authenticated operation can answer 429 (per-key rate limit, app/api/rate_limit.py)
    or 503 (database down), and its responses carry the x-ratelimit-* headers."""
    header_refs = {}
    headers = schema.setdefault("components", {}).setdefault("headers", {})
    for name, description in RATE_LIMIT_HEADERS.items():
        headers[name] = {"description": description, "schema": {"type": "string"}}
        header_refs[name] = {"$ref": f"#/components/headers/{name}"}
    retry_after = {"description": "Seconds to wait before retrying.", "required": True,
                   "schema": {"type": "string"}}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if not operation.get("security"):
                continue
            responses = operation.setdefault("responses", {})
            for code, description in COMMON_AUTHENTICATED.items():
                responses.setdefault(code, {
                    "description": description,
                    "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
                })
            for code, response in responses.items():
                if code.startswith("2"):
                    response.setdefault("headers", {}).update(header_refs)
                elif code in COMMON_AUTHENTICATED:
                    response.setdefault("headers", {})["Retry-After"] = dict(retry_after)


def _instrument(app: FastAPI) -> None:
    from app.api.metrics import install_metrics

    install_metrics(app)
