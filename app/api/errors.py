"""The one error envelope: {"error": {"message", "type", "param", "code"}}.

DomainError subclasses carry their status; validation errors become 422 with `param` set to
the field path; a database that is down or saturated is a 503 with Retry-After. Unexpected
exceptions are answered by the request middleware (500, no stack trace)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import iter_route_contexts
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from app.db.reader import DatabaseUnavailable
from app.domain.errors import DomainError

logger = logging.getLogger("app.errors")

DB_RETRY_AFTER_S = 2
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "invalid_request"}


def error_body(
    message: str, *, type_: str = "invalid_request_error", param: str | None = None,
    code: str | None = None, **extra: Any,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code, **extra}}


def domain_error_response(error: DomainError) -> JSONResponse:
    headers = dict(error.headers)
    if error.retry_after_s is not None:
        headers.setdefault("Retry-After", str(error.retry_after_s))
    if error.status_code == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    extra = getattr(error, "extra", None) or {}
    body = error_body(error.message, type_=error.error_type, param=error.param, code=error.code,
                      **extra)
    return JSONResponse(body, status_code=error.status_code, headers=headers)


async def _on_domain_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, DomainError)
    return domain_error_response(error)


def _param_path(loc: tuple[Any, ...]) -> str | None:
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "form"):
        parts = parts[1:]
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or None


async def _on_validation_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    issues = error.errors()
    first = issues[0] if issues else {"loc": (), "msg": "invalid request", "type": "invalid"}
    param = _param_path(tuple(first.get("loc", ())))
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    if len(issues) > 1:
        message += f" (and {len(issues) - 1} more)"
    details = [
        {"param": _param_path(tuple(i.get("loc", ()))), "code": i.get("type"), "message": i["msg"]}
        for i in issues[:20]
    ]
    body = error_body(message, param=param, code=str(first.get("type", "invalid_request")),
                      details=details)
    return JSONResponse(body, status_code=422)


async def _on_http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    code = _HTTP_CODES.get(error.status_code, "http_error")
    message = error.detail if isinstance(error.detail, str) else "request failed"
    if error.status_code == 404:
        message = "Not found."
    headers = dict(getattr(error, "headers", None) or {})
    if error.status_code == 405:
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
    return JSONResponse(error_body(message, code=code), status_code=error.status_code,
                        headers=headers or None)


def _allowed_methods(request: Request) -> str:
    """The methods of the most specific documented path that matches (Starlette's 405 names
    only the first route whose path matched: GET but not DELETE on /v1/files/{id}). For
    /v1/fine_tuning/jobs/estimate that is POST, not also GET of /v1/fine_tuning/jobs/{id}."""
    path = request.scope.get("path", "")
    table = getattr(request.app.state, "route_methods", None)
    if table is None:
        by_path: dict[str, set[str]] = {}
        for context in iter_route_contexts(request.app.router.routes):
            by_path.setdefault(context.path, set()).update(context.methods or ())
        table = [(compile_path(p)[0], p.count("{"), m) for p, m in by_path.items()]
        request.app.state.route_methods = table
    matches = [(params, methods) for regex, params, methods in table if regex.match(path)]
    if not matches:
        return ""
    fewest = min(params for params, _ in matches)
    return ", ".join(sorted(set().union(*(m for p, m in matches if p == fewest))))


async def _on_database_unavailable(_: Request, error: Exception) -> JSONResponse:
    logger.warning("database unavailable: %s", type(error).__name__)
    return JSONResponse(
        error_body(
            "The database is temporarily unavailable; retry shortly.",
            type_="service_unavailable", code="database_unavailable",
        ),
        status_code=503,
        headers={"Retry-After": str(DB_RETRY_AFTER_S)},
    )


async def _on_dbapi_error(request: Request, error: Exception) -> JSONResponse:
    # A dropped connection surfaces as a DBAPIError with connection_invalidated; anything
    # else from the driver is a bug we want to see as a 500.
    assert isinstance(error, DBAPIError)
    if error.connection_invalidated:
        return await _on_database_unavailable(request, error)
    raise error


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _on_domain_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(OperationalError, _on_database_unavailable)
    app.add_exception_handler(PoolTimeoutError, _on_database_unavailable)
    app.add_exception_handler(DatabaseUnavailable, _on_database_unavailable)
    app.add_exception_handler(DBAPIError, _on_dbapi_error)
