"""Direct dispatch for the routes clients poll: the same endpoint functions, without FastAPI's
per-request dependency solving.

FastAPI resolves a route's parameters and dependencies anew on every request (sub-dependency
graph, parameter extraction and validation, the security scheme): a status read costs
0.45 ms of CPU instead of 0.60 without it (bench/api_inprocess.py; docs/benchmarks.md, API
load). A `DirectRoute` sits in front of the APIRoute of `GET /v1/fine_tuning/jobs/{job_id}`
(and of the job list and the JSON event list) and calls that route's endpoint function
itself, with the principal from `authenticate` (what the `PrincipalDep` dependency runs) and
the query parameters parsed here.

It takes only requests it can answer exactly as the APIRoute would. Anything else (a `limit`
that FastAPI would reject with a 422, an unknown query parameter it would ignore, a
server-sent-events `Accept`) does not match, so the APIRoute behind it answers as before:
validation, errors and the OpenAPI document stay FastAPI's. `tests/app/test_direct_routes.py`
sends the same requests both ways and compares the responses byte for byte."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Scope

from app.api.deps import authenticate
from app.domain.principal import Principal

Endpoint = Callable[..., Awaitable[Response]]
# Query parameter name -> a parser that returns the value or raises ValueError (then the
# APIRoute answers, with its own validation error).
QueryParsers = Mapping[str, Callable[[str], Any]]


class DirectRoute(Route):
    def __init__(self, api_route: APIRoute, *, query: QueryParsers | None = None,
                 declines: Callable[[Scope], bool] | None = None) -> None:
        super().__init__(api_route.path, self._handle, methods=["GET"],
                         name=f"{api_route.name}_direct", include_in_schema=False)
        self.methods = {"GET"}  # Starlette adds HEAD, which the APIRoute does not take
        self.api_route = api_route
        self.endpoint_function: Endpoint = api_route.endpoint
        self.query = query or {}
        self.declines = declines or (lambda _scope: False)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or scope["method"] != "GET":
            return Match.NONE, {}
        match, child_scope = super().matches(scope)
        if match is not Match.FULL or self.declines(scope):
            return Match.NONE, {}
        query = self._parse_query(scope["query_string"])
        if query is None:
            return Match.NONE, {}
        # The APIRoute's scope keys: metrics label the request with its path template.
        return match, {**child_scope, "route": self.api_route, "direct_query": query}

    def _parse_query(self, raw: bytes) -> dict[str, Any] | None:
        """The query parameters, or None when one is unknown, repeated or invalid."""
        if not raw:
            return {}
        values: dict[str, Any] = {}
        for name, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
            parse = self.query.get(name)
            if parse is None or name in values:
                return None
            try:
                values[name] = parse(value)
            except ValueError:
                return None
        return values

    async def _handle(self, request: Request) -> Response:
        principal: Principal = await authenticate(request)
        return await self.endpoint_function(
            request=request, principal=principal, **request.path_params,
            **request.scope["direct_query"],
        )


def page_limit(value: str) -> int:
    """`limit` from 1 to 100 in plain ASCII digits; other spellings pydantic may accept
    ("+5", "5.0", "1_0") are left to the APIRoute."""
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= 100:
        raise ValueError(value)
    return int(value)


def cursor(value: str) -> str:
    """`after`: any non-empty string (an unknown cursor is the endpoint's 400)."""
    if not value:
        raise ValueError(value)
    return value
