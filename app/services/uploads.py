"""Streaming JSONL validation of an uploaded training file.

One pass over a binary stream, one line in memory at a time (a line longer than
`max_line_bytes` is skipped in chunks and reported, never loaded whole). Every line must be
strict UTF-8, one JSON object, in one of crma_core.formats' formats, and the same format as
the file's first example. Errors are `{"line", "field", "code", "message"}` (1-based line
numbers; `line` is null for file-level errors); the first MAX_REPORTED_ERRORS are kept and
`error_count` has the total. Blank lines are ignored."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from crma_core import formats
from app.services.tokens import TokenEstimator

MAX_REPORTED_ERRORS = 100
_SKIP_CHUNK = 1024 * 1024

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

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def add_error(self, line: int | None, field_: str, code: str, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"line": line, "field": field_, "code": code, "message": message})


class _HashingReader:
    """Wraps the stream so the digest and size come from the same single pass."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.digest = hashlib.sha256()
        self.size = 0

    def readline(self, limit: int) -> bytes:
        data = self.stream.readline(limit)
        self.digest.update(data)
        self.size += len(data)
        return data


def validate_jsonl(
    stream: BinaryIO, *, max_line_bytes: int, model_store_dir: Path,
    max_bytes: int | None = None,
) -> ValidationReport:
    """Validate `stream` (binary, positioned at the start) and estimate its tokens."""
    report = ValidationReport()
    reader = _HashingReader(stream)
    estimator = TokenEstimator(model_store_dir)
    first_format_line = 0
    line_no = 0
    while raw := reader.readline(max_line_bytes + 1):
        line_no += 1
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            _skip_rest_of_line(reader)
            report.add_error(line_no, "", LINE_TOO_LONG,
                             f"line is longer than the limit of {max_line_bytes} bytes")
            continue
        obj = _parse_line(raw, line_no, report)
        if obj is None:
            continue
        fmt, issues = formats.detect_and_validate(obj)
        for issue in issues:
            report.add_error(line_no, issue.field, issue.code, issue.message)
        if fmt is None:
            continue
        if report.format is None:
            report.format, first_format_line = fmt, line_no
        elif fmt != report.format:
            report.add_error(
                line_no, "", formats.MIXED_FORMATS,
                f"this line is in format {fmt!r} but the file's format is {report.format!r} "
                f"(from line {first_format_line}); use one format per file",
            )
            continue
        if not issues:
            report.example_count += 1
            messages = len(obj["messages"]) if fmt == formats.CHAT else 0
            estimator.add(formats.example_text(obj, fmt), messages=messages)
    report.line_count = line_no
    report.bytes, report.sha256 = reader.size, reader.digest.hexdigest()
    if max_bytes is not None and report.bytes > max_bytes:
        report.add_error(None, "", FILE_TOO_LARGE, f"file is larger than {max_bytes} bytes")
    if report.example_count == 0 and report.error_count == 0:
        report.add_error(None, "", EMPTY_FILE, "the file contains no training examples")
    report.token_counts, report.token_estimate_method = estimator.totals()
    return report


def _skip_rest_of_line(reader: _HashingReader) -> None:
    while chunk := reader.readline(_SKIP_CHUNK):
        if chunk.endswith(b"\n"):
            return


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
