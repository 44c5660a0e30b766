"""Hostile training files: property-based fuzzing of the streaming JSONL validator with
random bytes, invalid UTF-8, deep nesting, huge numbers and lines, lone surrogates. It never
raises, always accounts for every byte and reports line-numbered errors, also on a 14 MB
hostile corpus. Through HTTP the upload is a 400 and nothing is stored."""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.services import uploads
from app.services.uploads import validate_jsonl
from crma_core import formats
from tests.app.helpers import CHAT_LINE, Tenant, upload

NO_STORE = Path("/nonexistent-model-store")
KNOWN_CODES = set(formats.ISSUE_CODES) | {
    uploads.INVALID_UTF8, uploads.INVALID_JSON, uploads.LINE_TOO_LONG, uploads.EMPTY_FILE,
    uploads.FILE_TOO_LARGE}


def _validate(data: bytes, *, max_line_bytes: int = 1024 * 1024):
    return validate_jsonl(io.BytesIO(data), max_line_bytes=max_line_bytes,
                          model_store_dir=NO_STORE)


def _check_report(data: bytes, report) -> None:  # noqa: ANN001
    """What must hold for any input: every byte hashed, errors well-formed, counts sane."""
    assert report.bytes == len(data)
    assert report.sha256 == hashlib.sha256(data).hexdigest()
    assert report.error_count >= len(report.errors)
    assert report.example_count <= report.line_count
    for error in report.errors:
        assert set(error) == {"line", "field", "code", "message"}
        assert error["code"] in KNOWN_CODES, error
        assert error["line"] is None or 1 <= error["line"] <= report.line_count
        assert isinstance(error["message"], str) and len(error["message"]) < 1000
    if report.ok:
        assert report.example_count > 0 and report.format in formats.FORMATS
        # Whatever is accepted can be re-encoded as UTF-8 by every later consumer.
        for raw in data.splitlines():
            text = raw.decode("utf-8-sig").strip()
            if text:
                json.dumps(json.loads(text), ensure_ascii=False).encode("utf-8")


FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_never_crash_the_validator(data: bytes) -> None:
    _check_report(data, _validate(data, max_line_bytes=512))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["messages", "role", "content", "prompt", "completion",
                                       "text", "x"]) | st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)


@st.composite
def hostile_line(draw) -> bytes:  # noqa: ANN001 - hypothesis' draw
    kind = draw(st.sampled_from([
        "valid", "json", "invalid_utf8", "deep", "huge_int", "surrogate", "long", "binary",
        "nul", "almost_valid"]))
    if kind == "valid":
        return CHAT_LINE.encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "invalid_utf8":
        prefix = draw(st.binary(max_size=20)).replace(b"\n", b"")
        return prefix + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80",
                                               b"\xf4\x90\x80\x80", b"\xe2\x82"]))
    if kind == "deep":
        depth = draw(st.integers(1, 200_000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        return opener * depth + b"1" + closer * draw(st.integers(0, depth))
    if kind == "huge_int":
        return b'{"text": ' + b"9" * draw(st.integers(4000, 20_000)) + b"}"
    if kind == "surrogate":
        escape = draw(st.sampled_from(["\\ud800", "\\udfff", "\\ud83d", "\\ud83d\\ude00",
                                       "\\\\ud800"]))
        field = draw(st.sampled_from(["text", "prompt"]))
        extra = ', "completion": "ok"' if field == "prompt" else ""
        return f'{{"{field}": "a{escape}b"{extra}}}'.encode()
    if kind == "long":
        return json.dumps({"text": "x" * draw(st.integers(500, 5000))}).encode()
    if kind == "nul":
        return b'{"text": "a\x00b"}'
    if kind == "binary":
        return draw(st.binary(max_size=200)).replace(b"\n", b"")
    line = CHAT_LINE.encode()
    cut = draw(st.integers(0, len(line)))
    return line[:cut] + draw(st.binary(max_size=3)).replace(b"\n", b"") + line[cut:]


@FUZZ
@given(st.lists(hostile_line(), min_size=1, max_size=8),
       st.sampled_from([b"\n", b"\r\n"]), st.booleans(), st.booleans())
def test_hostile_lines_give_line_numbered_errors(lines: list[bytes], newline: bytes, bom: bool,
                                                  trailing: bool) -> None:
    data = (b"\xef\xbb\xbf" if bom else b"") + newline.join(lines) + (newline if trailing else b"")
    report = _validate(data, max_line_bytes=2048)
    _check_report(data, report)
    for number, line in enumerate(lines, start=1):
        if line != CHAT_LINE.encode() and not line.strip():
            continue
        errors_here = [e for e in report.errors if e["line"] == number]
        if len(line) > 2048:
            assert [e["code"] for e in errors_here] == [uploads.LINE_TOO_LONG]


def hostile_corpus(megabytes: int, *, huge_line: bool, seed: int = 0) -> bytes:
    """A mix of everything hostile, about `megabytes` MB: invalid UTF-8, deep nesting,
    20k-digit numbers, lone surrogates, random binary, wrong roles and some valid examples;
    with `huge_line`, first a 10 MB line (over the 8 MiB line limit, skipped in chunks)."""
    rng = random.Random(seed)
    parts = [b'{"text": "' + b"A" * (10 * 1024 * 1024) + b'"}'] if huge_line else []
    generators = [
        lambda: CHAT_LINE.encode(),
        lambda: b'{"text": "' + bytes(rng.randrange(128, 256) for _ in range(64)) + b'"}',
        lambda: b"[" * rng.randint(10_000, 60_000),
        lambda: b'{"text": ' + b"9" * rng.randint(4400, 20_000) + b"}",
        lambda: b'{"text": "x\\ud800y"}',
        lambda: bytes(rng.randrange(256) for _ in range(rng.randint(10, 400))).replace(b"\n", b""),
        lambda: json.dumps({"messages": [{"role": "user", "content": "q" * 300},
                                         {"role": "wizard", "content": 5}]}).encode(),
    ]
    size = sum(len(p) for p in parts)
    while size < megabytes * 1_000_000:
        line = rng.choice(generators)()
        parts.append(line)
        size += len(line) + 1
    return b"\n".join(parts) + b"\n"


@pytest.mark.parametrize("huge_line", [False, True], ids=["line-mix", "with-10MB-line"])
def test_a_hostile_corpus_is_fully_reported(huge_line: bool) -> None:
    """14 MB of everything hostile: accounted for byte by byte, every kind of problem named,
    a 10 MB line skipped as it streams. (Its throughput is measured by bench/uploads.py, not
    asserted here: a test must not depend on how busy the machine is.)"""
    data = hostile_corpus(14, huge_line=huge_line)
    report = validate_jsonl(io.BytesIO(data), max_line_bytes=8 * 1024 * 1024,
                            model_store_dir=NO_STORE)
    _check_report(data, report)
    codes = {e["code"] for e in report.errors}
    assert {uploads.INVALID_UTF8, uploads.INVALID_JSON, formats.INVALID_ROLE} <= codes
    assert report.example_count > 0
    if huge_line:
        assert report.errors[0]["line"] == 1
        assert report.errors[0]["code"] == uploads.LINE_TOO_LONG


@pytest.mark.integration
@pytest.mark.parametrize("payload", [
    b'{"text": "ok"}\n{"text": "x\\ud800"}\n',
    b'{"text": ' + b"1" * 5000 + b"}\n",
    b"[" * 100_000 + b"\n",
    b'{"text": "ok"}\n\xff\xfe\n',
])
def test_hostile_upload_is_a_400_with_line_numbers_and_nothing_is_stored(
        client, tenant: Tenant, payload: bytes) -> None:
    before = client.get("/v1/files", headers=tenant.headers).json()["data"]
    response = upload(client, tenant, payload)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_file" and "line" in error["message"]
    assert error["errors"] and all(e["line"] for e in error["errors"])
    assert client.get("/v1/files", headers=tenant.headers).json()["data"] == before
