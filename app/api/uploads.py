"""Receiving a multipart upload after authentication, validated while it streams in.

FastAPI would parse a declared form before any dependency runs, and Starlette's form parser
spools the whole file before anyone may look at it. Here the body is read chunk by chunk: the
`file` part's bytes go to a temporary file on disk and to the JSONL validator as they arrive
(in a helper process, app/api/upload_checks.py), so receiving and validating overlap and
nothing holds the file in memory. The body limit middleware has already capped the bytes that
can be read."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.api.upload_checks import Check, UploadChecks
from app.domain.errors import InvalidRequest
from app.services import files
from app.services.uploads import ValidationReport

MAX_FIELDS = 8
MAX_FIELD_BYTES = 64 * 1024


@dataclass(frozen=True)
class Upload:
    file: BinaryIO  # the received bytes, positioned at the start
    filename: str | None
    purpose: str
    report: ValidationReport


@asynccontextmanager
async def receive_upload(request: Request, *, checks: UploadChecks, max_bytes: int,
                         max_line_bytes: int, model_store_dir: Path) -> AsyncIterator[Upload]:
    """The form's `file` (received, validated) and `purpose`; the temporary file is deleted
    on exit. 400 for a request that is not a usable multipart form."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidRequest("Send the file as multipart/form-data with fields 'purpose' "
                             "and 'file'.", param="file", code="invalid_content_type")
    declared = request.headers.get("content-length")
    async with AsyncExitStack() as stack:
        spool = stack.enter_context(tempfile.TemporaryFile(prefix="crma-upload-"))
        form = _Form(boundary)
        check: Check | None = None
        async for chunk in request.stream():
            for event in form.write(chunk):
                if isinstance(event, _FileStarts):
                    check = await stack.enter_async_context(checks.check(
                        declared_bytes=int(declared) if declared and declared.isdigit() else None,
                        max_line_bytes=max_line_bytes, model_store_dir=model_store_dir,
                        max_bytes=max_bytes))
                else:
                    spool.write(event)
                    await check.feed(event)
        form.finalize()
        if check is None:
            raise InvalidRequest("The form has no 'file' part.", param="file",
                                 code="missing_file")
        purpose = files.check_purpose(form.fields.get("purpose"))
        report = await check.finish()
        spool.seek(0)
        yield Upload(file=spool, filename=form.filename, purpose=purpose, report=report)


class _FileStarts:
    pass


class _Form:
    """python-multipart's push parser, collecting the text fields and passing on the one
    file part's bytes: `write(chunk)` returns a _FileStarts marker when the file part begins
    and then its bytes, in order."""

    def __init__(self, boundary: bytes) -> None:
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self._events: list[bytes | _FileStarts] = []
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._field: str | None = None  # the text field being read
        self._in_file = False
        self._value = bytearray()
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begins, "on_part_data": self._data,
            "on_part_end": self._part_ends, "on_header_field": self._header_field,
            "on_header_value": self._header_piece, "on_header_end": self._header_ends,
            "on_headers_finished": self._headers_finished,
        })

    def write(self, chunk: bytes) -> list[bytes | _FileStarts]:
        try:
            self._parser.write(chunk)
        except FormParserError as error:
            raise _invalid(f"Invalid multipart data: {error}") from error
        events, self._events = self._events, []
        return events

    def finalize(self) -> None:
        try:
            self._parser.finalize()
        except FormParserError as error:
            raise _invalid(f"Invalid multipart data: {error}") from error

    def _part_begins(self) -> None:
        self._disposition, self._field, self._in_file = b"", None, False
        self._value.clear()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_piece(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        if len(self._header_value) > MAX_FIELD_BYTES:
            raise _invalid("A part header is too long.")

    def _header_ends(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise _invalid('Each part needs a Content-Disposition header with a "name".')
        name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options and name == "file":
            if self.filename is not None:
                raise _invalid("Send one file per upload.")
            self.filename = options[b"filename"].decode("utf-8", "replace")
            self._in_file = True
            self._events.append(_FileStarts())
        elif len(self.fields) >= MAX_FIELDS:
            raise _invalid(f"Too many form fields: at most {MAX_FIELDS}.")
        else:
            self._field = name  # another file part is read as a (bounded) field, unused

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._events.append(data[start:end])
            return
        self._value += data[start:end]
        if len(self._value) > MAX_FIELD_BYTES:
            raise _invalid(f"Form field {self._field!r} is longer than {MAX_FIELD_BYTES} bytes.")

    def _part_ends(self) -> None:
        if self._field is not None:
            self.fields[self._field] = self._value.decode("utf-8", "replace")
        self._in_file = False


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="file", code="invalid_multipart")
