"""Shared wire types: the request base (extra fields are an error), the error envelope,
list envelopes and pagination parameters."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from app.domain.id_format import has_nul

MAX_PAGE = 100
# The base model the OpenAPI examples name: the one every installation can install offline
# (`crma dev` does). The served document names another if only another is installed
# (app/api/docs.py).
EXAMPLE_MODEL = "smollm2-135m-instruct"
# The README's example files: an example body that names them works right after they are
# uploaded (a training file may be given by filename, app/services/files.py).
EXAMPLE_TRAINING_FILE = "capitals_train.jsonl"
EXAMPLE_VALIDATION_FILE = "capitals_valid.jsonl"


class RequestModel(BaseModel):
    """Base of every request body: unknown fields are rejected (mass assignment, OWASP API3)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        # PostgreSQL text cannot hold NUL: refuse it here (422) rather than fail in the driver.
        if has_nul(value):
            raise ValueError("must not contain NUL characters")
        return value


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def _no_cursor_if_empty(value: object) -> object:
    # `?after=` (a form or URL builder with an empty field) means "from the start", as no
    # cursor does; it used to be a 400 the schema did not announce.
    return None if value == "" else value


AfterParam = Annotated[
    str | None, BeforeValidator(_no_cursor_if_empty),
    Query(description="Cursor: the id of the last object of the previous page; empty or "
                      "absent for the first page."),
]
LimitParam = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size (1-100).")]


class ListEnvelope(BaseModel):
    object: Literal["list"] = "list"
    has_more: bool = False


class DeletedObject(BaseModel):
    id: str
    object: str
    deleted: bool = Field(True)


def error_responses(*codes: int) -> dict[int | str, dict]:
    """OpenAPI `responses` entries for the envelope (documentation only)."""
    descriptions = {
        400: "Invalid request", 401: "Missing or invalid API key", 402: "Insufficient credit",
        404: "Not found (also another account's object)", 409: "Conflict",
        413: "Body too large", 422: "Validation error", 429: "Quota or rate limit exceeded",
        503: "Temporarily unavailable (retry after Retry-After seconds)",
    }
    return {c: {"model": ErrorResponse, "description": descriptions[c]} for c in codes}
