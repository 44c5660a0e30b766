"""Reading a multipart upload after authentication (FastAPI would parse a declared form
before any dependency runs). Starlette spools the file part to disk past 1 MiB, and the body
limit middleware has already capped the bytes, so nothing here holds the file in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import UploadFile

from app.domain.errors import InvalidRequest
from app.services import files


@dataclass(frozen=True)
class Upload:
    file: UploadFile
    purpose: str


@asynccontextmanager
async def read_upload(request: Request) -> AsyncIterator[Upload]:
    """The form's `file` and `purpose`; the spooled file is closed (deleted) on exit."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("Send the file as multipart/form-data with fields 'purpose' "
                             "and 'file'.", param="file", code="invalid_content_type")
    form = await request.form(max_files=1, max_fields=8)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("The form has no 'file' part.", param="file",
                                 code="missing_file")
        purpose = form.get("purpose")
        yield Upload(file=upload, purpose=files.check_purpose(
            purpose if isinstance(purpose, str) else None))
    finally:
        await form.close()
