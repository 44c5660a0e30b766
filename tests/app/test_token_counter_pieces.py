"""app/services/token_counter.py's piece counter against the tokenizers library on SmolLM2's
real tokenizer: the chunk path for simple text (single spaces and newlines, ASCII) and the
regex path for everything else give the library's count, and the tokens before a position
wherever they say a token boundary falls there."""

from __future__ import annotations

import random

import pytest

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
