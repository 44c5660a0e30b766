"""Rules about uploaded files that the API and the worker share."""

from __future__ import annotations

from typing import Any

from app.domain.errors import InvalidRequest

PURPOSES = ("fine-tune",)
USABLE_STATUS = "processed"


class InvalidFile(InvalidRequest):
    """An upload that failed validation: 400 with the line-numbered errors in the envelope
    (`error.errors`, `error.error_count`); nothing is stored."""

    default_code = "invalid_file"

    def __init__(self, message: str, *, errors: list[dict[str, Any]], error_count: int) -> None:
        super().__init__(message, param="file")
        self.extra = {"errors": errors, "error_count": error_count}


def safe_filename(name: str | None) -> str:
    """The client's file name as display metadata only: basename, no control characters,
    at most 255 characters. It never becomes part of a storage key."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(c for c in base if c.isprintable()).strip()
    return cleaned[:255] or "upload.jsonl"
