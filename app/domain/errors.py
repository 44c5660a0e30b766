"""Typed domain errors. Services raise these; one handler in app/api/errors.py maps them to
the OpenAI-style envelope {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations


class DomainError(Exception):
    status_code = 400
    error_type = "invalid_request_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after_s: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param
        self.retry_after_s = retry_after_s
        self.headers = headers or {}


class InvalidRequest(DomainError):
    status_code = 400


class Unauthorized(DomainError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class InsufficientCredit(DomainError):
    status_code = 402
    error_type = "billing_error"
    default_code = "insufficient_credit"


class NotFound(DomainError):
    status_code = 404
    default_code = "not_found"


class Conflict(DomainError):
    status_code = 409
    default_code = "conflict"


class PayloadTooLarge(DomainError):
    status_code = 413
    default_code = "payload_too_large"


class Unprocessable(DomainError):
    status_code = 422
    default_code = "invalid_request"


class QuotaExceeded(DomainError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "quota_exceeded"


class RateLimited(DomainError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class ServiceUnavailable(DomainError):
    status_code = 503
    error_type = "service_unavailable"
    default_code = "service_unavailable"
