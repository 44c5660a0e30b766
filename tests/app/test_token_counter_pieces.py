"""app/services/token_counter.py's piece counter against the tokenizers library on SmolLM2's
real tokenizer: the chunk path for simple text (single spaces and newlines, ASCII) and the
regex path for everything else give the library's count, and the tokens before a position
wherever they say a token boundary falls there."""

from __future__ import annotations

import random

import pytest

from app.services import token_counter
from app.services.token_counter import ExampleCounter, _simple
from tests.smollm2_tokenizer import smollm2_tokenizer_dir

SIMPLE_WORDS = ["the", "The", "a", "it's", "don't", "x1", "123", "4.5", "end.", "?!", "'ll",
                "''", "'S", "\x1cq", "Hello,", "world", "(paren)", "e-mail", "--", "a_b",
                "#tag", "<|im_end|>", "<|im_start|>", "X", "...", "'", "s"]
AWKWARD = list("ab Z9.,'s\n\t ") + [" ", "\n", "'", "<|im_end|>", "é", "\x1c", "  ", "it's",
                                     "123", "?!", "\r\n", "\u00a0", "\u2003", "中文", "\x85"]


@pytest.fixture(scope="module")
def counter() -> ExampleCounter:
    counter = ExampleCounter(smollm2_tokenizer_dir())
    assert counter.pieces is not None
    return counter


def _simple_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 25)):
        parts += [rng.choice(SIMPLE_WORDS), rng.choice([" ", " ", " ", "\n"])]
    text = "".join(parts)
    if rng.random() < 0.5:
        text = text.rstrip()
    if rng.random() < 0.2:
        text = rng.choice([" ", "\n"]) + text
    return text


def _awkward_text(rng: random.Random) -> str:
    return "".join(rng.choice(AWKWARD) for _ in range(rng.randint(0, 30)))


@pytest.mark.parametrize("make", [_simple_text, _awkward_text], ids=["simple", "awkward"])
def test_piece_counts_and_boundaries_are_the_librarys(counter: ExampleCounter, make) -> None:  # noqa: ANN001
    rng = random.Random(11)
    simple = 0
    for _ in range(3000):
        text = make(rng)
        simple += all(_simple(piece) for piece in text.split("<|im_end|>"))
        encoded = counter.tokenizer.encode(text, add_special_tokens=False)
        starts = [low for low, _ in encoded.offsets]
        start = rng.randint(1, len(text) - 1) if len(text) > 1 else None
        total, before = counter.pieces.count(text, start)
        assert total == len(encoded.ids), repr(text)
        if before is not None:
            assert start in starts and before == sum(s < start for s in starts), (text, start)
    if make is _simple_text:
        assert simple > 2000  # the chunk path is what was tested


def test_a_chat_counted_by_parts_is_counted_as_its_whole_text(
        counter: ExampleCounter, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.app.test_trained_tokens import examples

    monkeypatch.setattr(token_counter, "SPOT_CHECK_EVERY", 10**9)
    whole = ExampleCounter(smollm2_tokenizer_dir())
    whole._plans = None  # the whole-text path only
    rng = random.Random(4)
    words = ["Hi", "there", "it's", "ok.", "2+2?", "<|im_end|>", "\x1c", "é", "\n", "  "]

    def content() -> str:
        return rng.choice(["", " ", "\n", ""]) + " ".join(
            rng.choice(words) for _ in range(rng.randint(1, 12)))

    rows = examples("chat", 300, seed=9)
    for _ in range(300):
        messages = [{"role": "system", "content": content()}] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 3)):
            messages += [{"role": "user", "content": content()},
                         {"role": "assistant", "content": content()}]
        rows.append({"messages": messages})
    by_parts = 0
    for row in rows:
        for first_from in (0, 32):
            expected = whole.count(row, "chat", first_from=first_from)
            by_parts += counter._chat_by_parts(row["messages"], first_from) is not None
            assert counter.count(row, "chat", first_from=first_from) == expected, row
    assert by_parts > 50 and counter.exact  # (a content starting with a space is not)


def test_a_by_parts_count_that_disagrees_on_a_spot_check_is_dropped(
        counter: ExampleCounter, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = ExampleCounter(smollm2_tokenizer_dir())
    monkeypatch.setattr(ExampleCounter, "_chat_by_parts", lambda self, messages, first_from: (1, 2))
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    assert counter.count(row, "chat") != (1, 2)  # the first example is spot-checked
    assert counter._plans is None and not counter.exact
