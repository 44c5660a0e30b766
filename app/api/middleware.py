"""Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer streamed bodies).

RequestContextMiddleware: x-request-id on every response (and the x-ratelimit-* headers of
authenticated requests), one JSON access-log line per request, and the last-resort 500
envelope (no stack trace to the client).
BodyLimitMiddleware: counts the bytes of the raw `receive` stream, so a chunked upload with no
Content-Length is cut off at the limit too (413), before anything buffers it."""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.logs import account_id_var, request_id_var
from app.api.rate_limit import response_headers as rate_limit_headers

logger = logging.getLogger("app.access")

REQUEST_ID_HEADER = b"x-request-id"
_SAFE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


def _envelope(status: int, message: str, type_: str, code: str) -> bytes:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return json.dumps(body).encode()


async def _send_json(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]]
) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + extra})
    await send({"type": "http.response.body", "body": body})


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or ("req_" + secrets.token_hex(12)).encode()
        token = request_id_var.set(request_id.decode())
        account_token = account_id_var.set(None)
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
                headers = message.get("headers", [])
                message["headers"] = [
                    *[(k, v) for k, v in headers if k.lower() != REQUEST_ID_HEADER],
                    (REQUEST_ID_HEADER, request_id),
                    *rate_limit_headers(scope.get("state") or {}),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("unhandled error", extra={"path": scope.get("path")})
            if not status["sent"]:
                body = _envelope(500, "The server had an error processing your request.",
                                 "server_error", "internal_error")
                await _send_json(send_with_id, 500, body, [])
        finally:
            state = scope.get("state") or {}
            account_id_var.set(state.get("account_id"))
            if logger.isEnabledFor(logging.INFO):
                # A record made directly: logger.info would also walk the stack for the
                # caller's file and line (findCaller), which an access line never shows.
                logger.handle(logger.makeRecord(
                    logger.name, logging.INFO, __file__, 0, "request", (), None, extra={
                        "method": scope.get("method"), "path": scope.get("path"),
                        "status": status["code"],
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    }))
            account_id_var.reset(account_token)
            request_id_var.reset(token)


def _incoming_request_id(scope: Scope) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == REQUEST_ID_HEADER:
            return value if _SAFE_REQUEST_ID.match(value) else None
    return None


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """`limit_for(scope)` gives the byte limit of a request's body (None: unlimited)."""

    def __init__(self, app: ASGIApp, *, limit_for: Callable[[Scope], int | None]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limit_for(scope) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _reject(send, limit)
            return
        state = {"received": 0, "exceeded": False, "started": False}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["exceeded"] = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            # Whatever the app makes of the aborted body (400 parse error, ...), the client
            # gets the 413 instead.
            if state["exceeded"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            pass
        except Exception:
            if not state["exceeded"]:
                raise
        if state["exceeded"] and not state["started"]:
            await _reject(send, limit)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reject(send: Send, limit: int) -> None:
    body = _envelope(413, f"Request body too large: the limit is {limit} bytes.",
                     "invalid_request_error", "payload_too_large")
    # The rest of the body is never read, so the connection cannot be reused.
    await _send_json(send, 413, body, [(b"connection", b"close")])
