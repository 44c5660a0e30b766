"""Streaming JSONL validation of an uploaded training file.

The bytes are fed as they arrive (`JsonlValidator.feed`), one pass, in bounded memory: the
partial line at a chunk's end (a line longer than `max_line_bytes` is dropped as it streams
and reported, never held whole), the first MAX_REPORTED_ERRORS errors (`error_count` has the
total) and the token estimator's running totals. Every line must be strict UTF-8, one JSON
object, in one of crma_core.formats' formats, and the same format as the file's first
example. Errors are `{"line", "field", "code", "message"}` (1-based line numbers; `line` is
null for file-level errors). Blank lines are ignored.

Two paths, one answer: a line that orjson parses into a usable example of the file's format
(crma_core.formats.clean_format) is counted at once; every other line goes through the
reference path (the standard library's json + detect_and_validate), which writes the error
messages. orjson accepts a subset of what json accepts and yields the same values for it, so
a line takes the fast path only where the reference path would find nothing to report.

Token counts (app/services/tokens.py): with a model installed, every example is rendered and
counted exactly for it, in a helper thread beside the parsing (the tokenizer's Rust and the
regex release the GIL for part of it). `feed` never waits for that thread: the caller does, on
`waiting()` (a bounded backlog), so an async caller can await it instead of blocking its event
loop."""

from __future__ import annotations

import hashlib
import json
import re
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from app.services.tokens import TokenEstimator
from crma_core import formats

MAX_REPORTED_ERRORS = 100
READ_CHUNK = 1024 * 1024
# Examples handed to the estimator at a time (or fewer, once their lines reach
# ESTIMATE_BATCH_BYTES), and how many such batches may wait for its thread.
ESTIMATE_BATCH = 1024
ESTIMATE_BATCH_BYTES = 4 * 1024 * 1024
ESTIMATE_BACKLOG = 4

INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
LINE_TOO_LONG = "line_too_long"
EMPTY_FILE = "empty_file"
FILE_TOO_LARGE = "file_too_large"


@dataclass
class ValidationReport:
    bytes: int = 0
    sha256: str = ""
    format: str | None = None
    example_count: int = 0
    line_count: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_count: int = 0
    token_counts: dict[str, int] = field(default_factory=dict)
    token_estimate_method: dict[str, str] = field(default_factory=dict)
    token_lengths: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def add_error(self, line: int | None, field_: str, code: str, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"line": line, "field": field_, "code": code, "message": message})


class _Estimates:
    """The token estimator, fed in batches; in a helper thread when a tokenizer counts."""

    def __init__(self, model_store_dir: Path) -> None:
        self.estimator = TokenEstimator(model_store_dir)
        threaded = self.estimator.counts_exactly
        self._executor = ThreadPoolExecutor(1, "token-estimate") if threaded else None
        self._queued: deque[Future[None]] = deque()
        self.batch: list[tuple[dict, str]] = []
        self.batch_bytes = 0

    def add(self, obj: dict, fmt: str, size: int) -> None:
        self.batch.append((obj, fmt))
        self.batch_bytes += size
        if len(self.batch) >= ESTIMATE_BATCH or self.batch_bytes >= ESTIMATE_BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        batch, self.batch, self.batch_bytes = self.batch, [], 0
        if not batch:
            return
        if self._executor is None:
            self._add(batch)
        else:
            self._queued.append(self._executor.submit(self._add, batch))

    def waiting(self) -> Future[None] | None:
        """The oldest batch still in the thread, when the backlog is full (else None)."""
        while self._queued and self._queued[0].done():
            self._queued.popleft().result()  # re-raises what the thread raised
        return self._queued[0] if len(self._queued) >= ESTIMATE_BACKLOG else None

    def unfinished(self) -> list[Future[None]]:
        self.flush()
        return list(self._queued)

    def _add(self, batch: list[tuple[dict, str]]) -> None:
        add = self.estimator.add
        for obj, fmt in batch:
            add(obj, fmt)

    def totals(self) -> tuple[dict[str, int], dict[str, str], dict[str, Any]]:
        for future in self.unfinished():
            future.result()
        self._queued.clear()
        self.close()
        return self.estimator.totals()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)


class JsonlValidator:
    """`feed()` the file's bytes in any chunks, then `finish()` for the report."""

    def __init__(self, *, max_line_bytes: int, model_store_dir: Path,
                 max_bytes: int | None = None) -> None:
        self.max_line_bytes, self.max_bytes = max_line_bytes, max_bytes
        self.report = ValidationReport()
        self._digest = hashlib.sha256()
        self._partial = bytearray()  # the current line's bytes so far (no newline yet)
        self._skipping = False  # inside a line already reported too long
        self._line_no = 0
        self._first_format_line = 0
        self._estimates = _Estimates(model_store_dir)

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self._digest.update(data)
        self.report.bytes += len(data)
        start = 0
        if self._skipping:
            start = data.find(b"\n") + 1
            if not start:
                return
            self._skipping = False
        last = data.rfind(b"\n", start)
        if last < 0:
            self._extend_partial(data[start:])
            return
        if self._partial:
            first = data.find(b"\n", start)
            self._extend_partial(data[start:first])
            if not self._skipping:
                self._one_line(bytes(self._partial))
            self._partial.clear()
            self._skipping = False
            start = first + 1
        if start < last:
            self._lines(data[start:last].split(b"\n"))
        elif start == last:
            self._lines([b""])
        self._extend_partial(data[last + 1:])

    def waiting(self) -> Future[None] | None:
        """Wait for this (token counting in the helper thread) before feeding more."""
        return self._estimates.waiting()

    def end(self) -> list[Future[None]]:
        """No more bytes: the last line (without a newline) is taken; returns what to wait
        for before `finish()` (which would otherwise block until it is done)."""
        if self._partial and not self._skipping:
            self._one_line(bytes(self._partial))
        self._partial.clear()
        self._skipping = False
        return self._estimates.unfinished()

    def finish(self) -> ValidationReport:
        self.end()
        report = self.report
        report.line_count = self._line_no
        report.sha256 = self._digest.hexdigest()
        if self.max_bytes is not None and report.bytes > self.max_bytes:
            report.add_error(None, "", FILE_TOO_LARGE, f"file is larger than {self.max_bytes} bytes")
        if report.example_count == 0 and report.error_count == 0:
            report.add_error(None, "", EMPTY_FILE, "the file contains no training examples")
        (report.token_counts, report.token_estimate_method,
         report.token_lengths) = self._estimates.totals()
        return report

    def close(self) -> None:
        """Stop the helper thread of an abandoned validation (finish() does it otherwise)."""
        self._estimates.close()

    # -- lines -------------------------------------------------------------------------------
    def _extend_partial(self, piece: bytes) -> None:
        if self._skipping or not piece:
            return
        if len(self._partial) + len(piece) > self.max_line_bytes:
            self._line_no += 1
            self._too_long(self._line_no)
            self._partial.clear()
            self._skipping = True
            return
        self._partial += piece

    def _too_long(self, line_no: int) -> None:
        self.report.add_error(line_no, "", LINE_TOO_LONG,
                              f"line is longer than the limit of {self.max_line_bytes} bytes")

    def _one_line(self, raw: bytes) -> None:
        self._lines([raw])

    def _lines(self, lines: list[bytes]) -> None:
        """Complete lines (without their newline), numbered from the next line on."""
        loads, clean = orjson.loads, formats.clean_format
        limit, report, estimates = self.max_line_bytes, self.report, self._estimates
        number = self._line_no
        for raw in lines:
            number += 1
            if len(raw) > limit:
                self._too_long(number)
                continue
            if number == 1 or not raw or raw.isspace():
                fmt = None
            else:
                try:
                    obj = loads(raw)
                except orjson.JSONDecodeError:
                    fmt = None
                else:
                    fmt = clean(obj)
            if fmt is None or fmt != report.format:
                self._reference_line(raw, number)
                continue
            report.example_count += 1
            estimates.add(obj, fmt, len(raw))
        self._line_no = number

    def _reference_line(self, raw: bytes, line_no: int) -> None:
        """The line through the standard library's json and detect_and_validate."""
        report = self.report
        obj = _parse_line(raw, line_no, report)
        if obj is None:
            return
        fmt, issues = formats.detect_and_validate(obj)
        for issue in issues:
            report.add_error(line_no, issue.field, issue.code, issue.message)
        if fmt is None:
            return
        if report.format is None:
            report.format, self._first_format_line = fmt, line_no
        elif fmt != report.format:
            report.add_error(
                line_no, "", formats.MIXED_FORMATS,
                f"this line is in format {fmt!r} but the file's format is {report.format!r} "
                f"(from line {self._first_format_line}); use one format per file",
            )
            return
        if not issues:
            report.example_count += 1
            self._estimates.add(obj, fmt, len(raw))


def validate_jsonl(
    stream: BinaryIO, *, max_line_bytes: int, model_store_dir: Path,
    max_bytes: int | None = None,
) -> ValidationReport:
    """Validate `stream` (binary, read from where it is) and estimate its tokens."""
    validator = JsonlValidator(max_line_bytes=max_line_bytes, model_store_dir=model_store_dir,
                               max_bytes=max_bytes)
    try:
        while chunk := stream.read(READ_CHUNK):
            validator.feed(chunk)
            while (busy := validator.waiting()) is not None:
                busy.result()
        return validator.finish()
    finally:
        validator.close()


def _parse_line(raw: bytes, line_no: int, report: ValidationReport) -> object | None:
    """The parsed JSON value of one line, or None (blank, or an error was recorded)."""
    if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte-order mark written by some editors
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        report.add_error(line_no, "", INVALID_UTF8,
                         f"invalid UTF-8 at byte {error.start} of the line")
        return None
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as error:
        report.add_error(line_no, "", INVALID_JSON,
                         f"malformed JSON: {error.msg} (column {error.colno})")
        return None
    except RecursionError:
        report.add_error(line_no, "", INVALID_JSON, "malformed JSON: nested too deeply")
        return None
    except ValueError as error:
        # Not a JSONDecodeError: e.g. an integer literal longer than Python's 4300 digits.
        report.add_error(line_no, "", INVALID_JSON, f"malformed JSON: {error}"[:200])
        return None
    if _SURROGATE_ESCAPE.search(raw) and not _encodes_as_utf8(obj):
        # "\ud800" alone parses to a lone surrogate, which no UTF-8 consumer (tokenizers, the
        # trainer) can encode.
        report.add_error(line_no, "", INVALID_UTF8,
                         "a \\u escape encodes an unpaired UTF-16 surrogate")
        return None
    return obj


# A \uD800-\uDFFF escape: a surrogate, which is fine only as half of a pair.
_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")


def _encodes_as_utf8(obj: object) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError):
        return False
    return True


def summarize_errors(report: ValidationReport, *, limit: int = 5) -> str:
    """A one-paragraph message naming the first few problems with their line numbers."""
    parts = []
    for error in report.errors[:limit]:
        where = f"line {error['line']}" if error["line"] is not None else "file"
        field_ = f" {error['field']}" if error["field"] else ""
        parts.append(f"{where}{field_}: {error['message']} ({error['code']})")
    more = report.error_count - len(parts)
    suffix = f"; and {more} more" if more > 0 else ""
    return f"Invalid training file ({report.error_count} errors): " + "; ".join(parts) + suffix
