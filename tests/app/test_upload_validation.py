"""The streaming JSONL validator: line numbers, limits, token estimates, throughput."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.files import safe_filename
from app.services import tokens, uploads
from app.services.uploads import validate_jsonl
from tests.app.helpers import CHAT_LINE

NO_STORE = Path("/nonexistent-model-store")


def _validate(data: bytes, *, max_line_bytes: int = 1024 * 1024, store: Path = NO_STORE):
    return validate_jsonl(io.BytesIO(data), max_line_bytes=max_line_bytes, model_store_dir=store)


def test_line_numbers_count_blank_lines_and_bom() -> None:
    data = b"\xef\xbb\xbf" + (CHAT_LINE + "\n\n\n").encode() + b'{"messages": 5}\n'
    report = _validate(data)
    assert report.example_count == 1 and report.line_count == 4
    assert [(e["line"], e["field"], e["code"]) for e in report.errors] == [
        (4, "messages", "wrong_type")]


def test_long_line_is_skipped_in_chunks_and_later_lines_still_count() -> None:
    long_line = json.dumps({"text": "y" * 5000}).encode()
    data = long_line + b"\n" + b'{"text": "ok"}\n' + long_line  # last line has no newline
    report = _validate(data, max_line_bytes=1000)
    assert [(e["line"], e["code"]) for e in report.errors] == [
        (1, "line_too_long"), (3, "line_too_long")]
    assert report.example_count == 1 and report.bytes == len(data)


def test_line_exactly_at_the_limit_is_accepted() -> None:
    line = json.dumps({"text": "z" * 100}).encode()
    assert _validate(line + b"\n", max_line_bytes=len(line) + 1).ok
    assert _validate(line, max_line_bytes=len(line)).ok
    assert not _validate(line + b"\n", max_line_bytes=len(line) - 1).ok


def test_sha256_and_size_cover_every_byte() -> None:
    import hashlib

    data = (CHAT_LINE + "\n").encode() * 3 + b"{broken\n"
    report = _validate(data)
    assert report.sha256 == hashlib.sha256(data).hexdigest() and report.bytes == len(data)


def test_deeply_nested_json_is_an_error_not_a_crash() -> None:
    report = _validate(b"[" * 100_000 + b"]" * 100_000 + b"\n")
    assert report.errors[0]["code"] in ("invalid_json", "not_an_object")


def test_heuristic_estimate_per_family() -> None:
    text = "word " * 370  # 1850 bytes
    report = _validate(json.dumps({"text": text}).encode() + b"\n")
    overhead = tokens.EXAMPLE_OVERHEAD_TOKENS
    assert report.token_counts["llama"] == -(-len(text) // 3.7) + overhead
    assert report.token_counts["gemma2"] == -(-len(text) // 4.4) + overhead
    assert report.token_estimate_method == {
        "llama": "heuristic:3.7_bytes_per_token", "mistral": "heuristic:3.7_bytes_per_token",
        "gemma2": "heuristic:4.4_bytes_per_token"}


def _install_tokenizer(store: Path, model_id: str) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    (store / model_id).mkdir(parents=True)
    tokenizer.save(str(store / model_id / "tokenizer.json"))


def test_installed_tokenizer_counts_exactly(tmp_path: Path) -> None:
    _install_tokenizer(tmp_path, "tinyllama-1.1b-chat")
    lines = [json.dumps({"prompt": "hello world", "completion": " hello"})] * 3
    report = _validate(("\n".join(lines) + "\n").encode(), store=tmp_path)
    # "hello world hello": 3 words per example; this tokenizer adds no bos and has no eos.
    assert report.token_counts["llama"] == 3 * 3
    assert report.token_estimate_method["llama"] == "tokenizer:tinyllama-1.1b-chat"
    assert report.token_estimate_method["mistral"].startswith("heuristic:")
    assert report.token_lengths["tinyllama-1.1b-chat"] == {
        "exact": True, "rows": 3, "tokens": 9, "lengths": [(3, 3)], "first": []}


def test_every_example_is_counted_exactly(tmp_path: Path) -> None:
    _install_tokenizer(tmp_path, "smollm2-135m-instruct")
    short, long = (json.dumps({"text": "hello world " * n}).encode() + b"\n" for n in (1, 40))
    report = _validate(short * 5_000 + long * 10, store=tmp_path)
    assert report.token_estimate_method["llama"] == "tokenizer:smollm2-135m-instruct"
    assert report.token_counts["llama"] == 5_000 * 2 + 10 * 80
    assert report.token_lengths["smollm2-135m-instruct"]["lengths"] == [(2, 5_000), (80, 10)]


def test_valid_lines_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The validator's speed comes from valid lines never reaching the reference path (json +
    detect_and_validate) after the first line; bench/uploads.py measures the MB/s."""
    rng = random.Random(0)
    words = "the model learns a short answer for every question in this domain".split()
    lines = []
    for _ in range(2_000):
        user = " ".join(rng.choices(words, k=rng.randint(20, 120)))
        answer = " ".join(rng.choices(words, k=rng.randint(20, 120)))
        lines.append(json.dumps({"messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": user}, {"role": "assistant", "content": answer}]}))
    data = ("\n".join(lines) + "\n{broken\n").encode()
    reference_lines = []
    original = uploads.JsonlValidator._reference_line

    def spy(self, raw: bytes, line_no: int) -> None:  # noqa: ANN001
        reference_lines.append(line_no)
        original(self, raw, line_no)

    monkeypatch.setattr(uploads.JsonlValidator, "_reference_line", spy)
    report = _validate(data)
    assert report.example_count == 2_000 and report.error_count == 1
    assert reference_lines == [1, 2_001]  # the first line (it may carry a BOM), the broken one


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("../../x.jsonl", "x.jsonl"), ("C:\\Users\\a\\train.jsonl", "train.jsonl"),
     ("a\x00b\nc.jsonl", "abc.jsonl"), ("", "upload.jsonl"), (None, "upload.jsonl"),
     ("x" * 400, "x" * 255)],
)
def test_safe_filename(raw: str | None, expected: str) -> None:
    assert safe_filename(raw) == expected


# -- the fast path and chunked feeding give the reference answer --------------------------

_EXAMPLES = [
    CHAT_LINE,
    '{"prompt": "Capital of Peru?", "completion": " Lima."}',
    '{"text": "A plain training text."}',
    '{"text": "dup", "text": ""}', '{"text": "", "text": "dup"}',
    '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}',
    '{"messages": [{"role": "assistant", "content": "a", "name": "x"}]}',
    '{"messages": [{"role": "tool", "content": "a"}]}', '{"messages": []}',
    '{"messages": [{"role": "user", "content": "only a question"}]}',
    '{"prompt": 1, "completion": "x"}', '{"prompt": "p", "completion": ""}',
    '{"prompt": "p"}', '{"text": 123456789012345678901234567890}',
    '{"text": "x", "extra": 1}', '{"text": NaN}', '{"text": "a\\ud800"}',
    '{"text": "pair \\ud83d\\ude00"}', '{"text": "nul \\u0000 escaped"}', '  {"text": "padded"}  ',
    "[1, 2]", '"just a string"', "{broken", "", "   ", "\x0c", '{"text": "caf\xc3\xa9"}',
    '{"text": "bad \udcff byte"}',  # \xff on the wire (surrogateescape)
    '{"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}',
]


@st.composite
def _jsonl_files(draw) -> bytes:  # noqa: ANN001 - hypothesis' draw
    lines = draw(st.lists(st.sampled_from(_EXAMPLES), min_size=1, max_size=40))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    data = newline.join(lines) + (newline if draw(st.booleans()) else "")
    return ((b"\xef\xbb\xbf" if draw(st.booleans()) else b"")
            + data.encode("utf-8", "surrogateescape"))


def _reference(data: bytes, max_line_bytes: int):  # noqa: ANN202
    """Every line through json + detect_and_validate (clean_format never answers)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(uploads.formats, "clean_format", lambda obj: None)
        return _validate(data, max_line_bytes=max_line_bytes)


@settings(max_examples=400, deadline=None)
@given(_jsonl_files(), st.lists(st.integers(1, 200), max_size=12), st.sampled_from([40, 4096]))
def test_chunked_fast_validation_equals_the_reference(data: bytes, cuts: list[int],
                                                      max_line_bytes: int) -> None:
    validator = uploads.JsonlValidator(max_line_bytes=max_line_bytes, model_store_dir=NO_STORE)
    position = 0
    for cut in cuts:  # arbitrary chunk boundaries, inside lines and newlines alike
        validator.feed(data[position:position + cut])
        position += cut
    validator.feed(data[position:])
    assert vars(validator.finish()) == vars(_reference(data, max_line_bytes))


def test_a_line_too_long_across_many_chunks_is_one_error() -> None:
    data = b'{"text": "ok"}\n' + b"x" * 5000 + b'\n{"text": "after"}\n'
    validator = uploads.JsonlValidator(max_line_bytes=1000, model_store_dir=NO_STORE)
    for start in range(0, len(data), 7):
        validator.feed(data[start:start + 7])
    report = validator.finish()
    assert [(e["line"], e["code"]) for e in report.errors] == [(2, "line_too_long")]
    assert report.example_count == 2 and report.line_count == 3
