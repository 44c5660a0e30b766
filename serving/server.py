"""The engine's own HTTP server (what ``crma engine`` runs): no authentication, bound to
loopback by default, meant for the API process to call on a private network.

  GET    /healthz              liveness: 200 {"status": "ok"} while the process serves
  GET    /health               model, adapters, scheduler, memory
  GET    /adapters             the adapter LRU, most recently used first
  POST   /adapters             load an AdapterSpec (200 with its info and "cold")
  DELETE /adapters/{id}        unload (404 if not loaded)
  POST   /route                the domain a request's ``routes`` would pick
  POST   /generate             a GenerationRequest: JSON Completion, or with "stream": true
                               server-sent events, one JSON StreamEvent per ``data:`` line

Errors are OpenAI's body ({"error": {"message", "type", "param", "code"}}) with 400 (the
field is named in ``param``), 404 (unknown adapter), 503 + Retry-After (busy, unavailable).
A client that disconnects cancels its generation, streaming or not.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serving.engine import Engine
from serving.errors import EngineError, InvalidRequest
from serving.requests import AdapterSpec, GenerationRequest, parse
from serving.stream import GenerationStream

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 8 << 20


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidRequest(f"request body over {MAX_BODY_BYTES} bytes", code="payload_too_large")
    try:
        data = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidRequest(f"request body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    return data


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(engine: Engine) -> Starlette:
    async def alive(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def health(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(engine.health))

    async def list_adapters(request: Request) -> Response:
        return JSONResponse(engine.adapters())

    async def load_adapter(request: Request) -> Response:
        spec = parse(AdapterSpec, await _body(request))
        return JSONResponse(await run_in_threadpool(engine.load_adapter, spec))

    async def unload_adapter(request: Request) -> Response:
        return JSONResponse(engine.unload_adapter(request.path_params["adapter_id"]))

    async def route(request: Request) -> Response:
        body = parse(GenerationRequest, await _body(request))
        routing = await run_in_threadpool(engine.route, body)
        return JSONResponse(routing.to_dict())

    async def generate(request: Request) -> Response:
        body = parse(GenerationRequest, await _body(request))
        stream = await run_in_threadpool(engine.submit, body)
        if body.stream:
            return EventSourceResponse(_events(stream), ping=15)
        return await _complete(request, stream)

    return Starlette(
        routes=[Route("/healthz", alive, methods=["GET"]),
                Route("/health", health, methods=["GET"]),
                Route("/adapters", list_adapters, methods=["GET"]),
                Route("/adapters", load_adapter, methods=["POST"]),
                Route("/adapters/{adapter_id:str}", unload_adapter, methods=["DELETE"]),
                Route("/route", route, methods=["POST"]),
                Route("/generate", generate, methods=["POST"])],
        exception_handlers={EngineError: _engine_error, Exception: _unexpected,
                            404: _not_found, 405: _not_allowed})


async def _complete(request: Request, stream: GenerationStream) -> Response:
    """Wait for the whole completion, or cancel it if the client goes away first."""
    result = asyncio.ensure_future(stream.aresult())
    gone = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not result.done():
        stream.cancel()
        result.cancel()
        return Response(status_code=499)  # nobody is listening; the status is for the log
    return JSONResponse(result.result().to_dict())


async def _events(stream: GenerationStream):
    try:
        async for event in stream:
            yield {"data": json.dumps(event.to_dict(), ensure_ascii=False)}
    finally:
        stream.cancel()  # the client went away mid-stream (a no-op once finished)


async def _engine_error(request: Request, error: EngineError) -> Response:
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers())


async def _unexpected(request: Request, error: Exception) -> Response:
    log.exception("engine request failed")
    return JSONResponse(EngineError(f"internal error: {type(error).__name__}").body(),
                        status_code=500)


async def _not_found(request: Request, error: Exception) -> Response:
    return JSONResponse({"error": {"message": f"no route {request.url.path}", "type":
                                   "invalid_request_error", "param": None, "code": "not_found"}},
                        status_code=404)


async def _not_allowed(request: Request, error: Exception) -> Response:
    return JSONResponse({"error": {"message": f"{request.method} is not allowed on "
                                   f"{request.url.path}", "type": "invalid_request_error",
                                   "param": None, "code": "method_not_allowed"}},
                        status_code=405)
