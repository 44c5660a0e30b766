"""Errors of the serving engine, each with the HTTP status and OpenAI's error body
({"error": {"message", "type", "param", "code"}}) the engine server answers with, so the API
can pass them through unchanged. Torch-free."""

from __future__ import annotations

from typing import Any


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""

    status_code = 500
    error_type = "server_error"
    default_code = "engine_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type,
                          "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else {}


class InvalidRequest(EngineError):
    """A request field is missing, malformed or out of range (``param`` names it)."""

    status_code = 400
    error_type = "invalid_request_error"
    default_code = "invalid_request"


class ContextLengthExceeded(InvalidRequest):
    """The prompt (or prompt + max_tokens) does not fit the model's context window."""

    default_code = "context_length_exceeded"


class AdapterIncompatible(InvalidRequest):
    """The adapter's files do not fit this engine's base model, or use an unsupported format."""

    default_code = "adapter_incompatible"


class AdapterNotFound(EngineError):
    """No adapter with that id is loaded (unload), or its files are not where the spec says."""

    status_code = 404
    error_type = "invalid_request_error"
    default_code = "adapter_not_found"


class EngineBusy(EngineError):
    """The queue is full, or every cached adapter is in use and another one does not fit."""

    status_code = 503
    error_type = "server_error"
    default_code = "engine_overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1, **kwargs: Any) -> None:
        super().__init__(message, retry_after_s=max(1, int(retry_after_s)), **kwargs)


class EngineUnavailable(EngineBusy):
    """The engine is shutting down, or (seen from a client) cannot be reached."""

    default_code = "engine_unavailable"


def error_from_body(status: int, body: Any, headers: dict[str, str] | None = None) -> EngineError:
    """The EngineError an engine server's error response stands for (used by the client)."""
    error = body.get("error", {}) if isinstance(body, dict) else {}
    message = str(error.get("message") or f"engine answered HTTP {status}")
    kinds = {400: InvalidRequest, 404: AdapterNotFound, 503: EngineBusy}
    kind = kinds.get(status, EngineError)
    code = error.get("code")
    if status == 400 and code == ContextLengthExceeded.default_code:
        kind = ContextLengthExceeded
    elif status == 400 and code == AdapterIncompatible.default_code:
        kind = AdapterIncompatible
    retry = (headers or {}).get("retry-after") or (headers or {}).get("Retry-After")
    if kind is EngineBusy:
        busy = EngineUnavailable if code == EngineUnavailable.default_code else EngineBusy
        return busy(message, retry_after_s=int(retry or 1), code=code)
    err = kind(message, param=error.get("param"), code=code)
    if kind is EngineError:
        err.status_code = status
    return err
