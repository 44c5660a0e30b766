"""Exact token counts of training examples for one installed model, without transformers:
the model's tokenizer.json through the `tokenizers` library and its chat template through
app/services/chat_template.py, so the API counts what crma_core.data trains on.

`ExampleCounter.count(obj, fmt)` gives, for one validated example, its length (the tokens of
the rendered sequence crma_core.data.tokenize_example builds, before truncation) and `first`,
one more than the position of its first trained token (counting from position 1: the first
position is never scored), so the example is dropped by crma_core.data.load_examples exactly
when max_seq_len < first.

Speed. The `tokenizers` library costs ~80 µs for a 370-byte chat row (it builds offsets, token
strings and masks for every token). For byte-level BPE tokenizers (SmolLM2's, GPT-2's: no
normalizer, the ByteLevel pre-tokenizer with its regex, every added token special) the count
is computed the way that pipeline computes it, piece by piece: the text is split at added
tokens (one token each), the rest cut into pre-tokens by the same regex, and each pre-token's
BPE length looked up in a cache (`model.tokenize` on a miss). That gives the same numbers
several times faster; it is checked against the library on a fixed set of awkward strings when
a counter is built and on every SPOT_CHECK_EVERY-th example, and a counter whose check fails
counts with the library from then on and reports itself inexact.

Most text needs no regex at all. In an ASCII piece whose whitespace characters are single
spaces and newlines, none next to another whitespace character (`_simple`), every pre-token
is a newline alone or a space-free chunk with at most the one space before it (the regex's
` ?X+` alternatives take every non-space character after a space, and nothing else spans a
space), so the piece's count is the newlines plus the counts of its chunks, split at spaces
and newlines by str.split and each looked up in a cache of chunk counts (worked out by the
regex on a miss). Whole pieces that repeat (a system prompt, the template's role lines) are
cached too. tests/app/test_trained_tokens.py checks the counts against tokenizers."""

from __future__ import annotations

import json
import logging
import re
from bisect import bisect_left
from itertools import accumulate
from pathlib import Path
from typing import Any

from app.services.chat_template import ChatRenderer, load_template
from crma_core import formats

log = logging.getLogger(__name__)

# The pre-tokenizer regex of tokenizers' ByteLevel (GPT-2's), for the `regex` module.
BYTE_LEVEL_PATTERN = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"
                      r"|\s+(?!\S)|\s+")
# The same on ASCII text, for the standard library's `re` (twice as fast): \p{L}, \p{N} and \s
# restricted to ASCII (letters, digits, and the White_Space characters \t \n \v \f \r space).
_S, _NS = r"[\t\n\x0b\x0c\r ]", r"[^\t\n\x0b\x0c\r ]"
ASCII_PATTERN = (r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\t\n\x0b\x0c\r A-Za-z0-9]+"
                 rf"|{_S}+(?!{_NS})|{_S}+")
SPOT_CHECK_EVERY = 256
CACHE_LIMIT = 500_000  # pre-tokens remembered (bounded memory on files of unique words)
CHUNK_CACHE_LIMIT = 200_000  # space-free chunks remembered, each of heads and words
PIECE_CACHE_LIMIT = 4_096  # whole pieces (a repeated system prompt stays; unique ones churn)
SELF_CHECK = ("Hello world", "  two  spaces\n\n\n and tabs\t\tend  ", "it's we'll they'd 123456",
              "ünïcödé 中文字符 émoji 🤖 done", "a<|im_end|>b<|im_start|>user\n", "x\r\n\r\ny",
              "'S'T '''' 'll", "...!!! ??", "\u00a0nbsp\u2003em", "12ab34", "a\x1cb \x1d\x1f c",
              "\x85 y\xa0z\x0b\x0c", "tab\t\tx  \n", "")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what ByteLevel maps bytes through)."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) \
        | set(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return chars


class _Lengths(dict):
    """Pre-token -> its BPE length, worked out on a miss (bounded: cleared when full)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.byte_chars = _bytes_to_unicode()

    def __missing__(self, word: str) -> int:
        mapped = "".join(self.byte_chars[b] for b in word.encode("utf-8"))
        count = len(self.model.tokenize(mapped))
        if len(self) >= CACHE_LIMIT:
            self.clear()
        self[word] = count
        return count


class _Cache(dict):
    """key -> compute(key) on a miss (bounded: cleared when `limit` entries are held)."""

    def __init__(self, compute: Any, limit: int) -> None:
        super().__init__()
        self.compute, self.limit = compute, limit

    def __missing__(self, key: str) -> int:
        value = self.compute(key)
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value


# Whitespace other than single spaces and newlines, or two whitespace characters in a row:
# a piece with none of these is `_simple` (see the module).
def _simple(piece: str) -> bool:
    return piece.isascii() and not (  # substring tests: each a fast scan in C
        "  " in piece or " \n" in piece or "\n " in piece or "\n\n" in piece
        or "\t" in piece or "\r" in piece or "\x0b" in piece or "\x0c" in piece)


def _kind(char: str) -> int:
    return 1 if char.isalpha() else 2 if char.isdigit() else 3


def _boundary(before: str, after: str) -> bool:
    """Whether a pre-token certainly ends between two adjacent characters of a `_simple`
    piece: after a (lone) newline, before a (lone) space or newline, or where an ASCII
    letter, digit or other character meets one of another kind (not after an apostrophe,
    which may begin a contraction, and not after a space, which begins the next pre-token)."""
    if before == "\n" or after in " \n":
        return True
    return before not in " '" and _kind(before) != _kind(after)


class _PieceCounter:
    """Token counts of text the way a byte-level BPE pipeline counts it (see the module)."""

    def __init__(self, tokenizer: Any, added: list[str]) -> None:
        import regex

        self.split = None
        if added:
            by_length = sorted(added, key=len, reverse=True)  # leftmost-longest, as tokenizers
            self.split = regex.compile("(" + "|".join(map(regex.escape, by_length)) + ")").split
        self.findall_unicode = regex.compile(BYTE_LEVEL_PATTERN).findall
        self.findall_ascii = re.compile(ASCII_PATTERN).findall
        self.lengths = _Lengths(tokenizer.model)
        # A chunk without whitespace -> its count alone (a line's first) and after a space.
        self.heads = _Cache(self._regex_count, CHUNK_CACHE_LIMIT)
        self.words = _Cache(lambda chunk: self._regex_count(" " + chunk), CHUNK_CACHE_LIMIT)
        self.pieces = _Cache(self._piece_count, PIECE_CACHE_LIMIT)
        self.newline = self._regex_count("\n")

    def _regex_count(self, piece: str) -> int:
        words = (self.findall_ascii if piece.isascii() else self.findall_unicode)(piece)
        return sum(map(self.lengths.__getitem__, words))

    def _simple_count(self, piece: str) -> int:
        """The count of a `_simple` piece, from its chunks (see the module)."""
        heads, words = self.heads.__getitem__, self.words.__getitem__
        lines = piece.split("\n")
        total = self.newline * (len(lines) - 1)
        for line in lines:
            first, *rest = line.split(" ")
            total += heads(first) + sum(map(words, rest))
        return total

    def _piece_count(self, piece: str) -> int:
        return self._simple_count(piece) if _simple(piece) else self._regex_count(piece)

    def count(self, text: str, start: int | None = None) -> tuple[int, int | None]:
        """(tokens of `text`, tokens before character `start` when a token boundary certainly
        falls there, i.e. an added token or a pre-token starts at it; else None)."""
        lookup = self.lengths.__getitem__
        piece_count = self.pieces.__getitem__
        total, position, before = 0, 0, None
        for index, piece in enumerate(self.split(text) if self.split else (text,)):
            if position == start:
                before = total
            end = position + len(piece)
            if index % 2:  # an added token
                total += 1
            elif not (start is not None and position < start < end):
                total += piece_count(piece)
            elif _simple(piece) and _boundary(piece[start - position - 1],
                                              piece[start - position]):
                left, right = piece[:start - position], piece[start - position:]
                before = total + piece_count(left)
                total = before + piece_count(right)
            elif piece:
                words = (self.findall_ascii if piece.isascii() else self.findall_unicode)(piece)
                if start is not None and position < start < end:
                    ends = list(accumulate(map(len, words)))
                    cut = bisect_left(ends, start - position)
                    if ends[cut] == start - position:
                        before = total + sum(map(lookup, words[:cut + 1]))
                total += sum(map(lookup, words))
            position = end
        if position == start:
            before = total
        return total, before


def _fast_path(config: dict[str, Any]) -> bool:
    """Whether the tokenizer is the byte-level BPE shape _PieceCounter reproduces."""
    pre, model = config.get("pre_tokenizer") or {}, config.get("model") or {}
    added = config.get("added_tokens") or []
    return (config.get("normalizer") is None
            and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
            and not pre.get("add_prefix_space", False)
            and model.get("type") == "BPE" and model.get("dropout") is None
            and not model.get("continuing_subword_prefix")
            and not model.get("end_of_word_suffix")
            and all(t.get("special") and not (t.get("lstrip") or t.get("rstrip")
                                              or t.get("single_word")) for t in added))


class ExampleCounter:
    """Exact (length, first) of examples for the model in `model_dir` (see the module)."""

    def __init__(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer

        path = model_dir / "tokenizer.json"
        self.tokenizer = Tokenizer.from_file(str(path))
        config = json.loads(path.read_text(encoding="utf-8"))
        source, specials = load_template(model_dir)
        self.renderer = ChatRenderer(source, specials) if source else None
        eos = specials.get("eos_token")
        self.eos = 1 if eos is not None and self.tokenizer.token_to_id(eos) is not None else 0
        probe = self.tokenizer.encode("a", add_special_tokens=True)
        mask = probe.special_tokens_mask
        self.added_before = mask.index(0) if 0 in mask else 0  # what the post-processor
        self.added_total = sum(mask)                            # adds (bos, ...)
        self.exact = True
        self.examples = 0
        self.pieces: _PieceCounter | None = None
        self._plans: dict[Any, tuple[list[int], int] | None] | None = None  # _chat_by_parts
        if _fast_path(config):
            pieces = _PieceCounter(self.tokenizer, [t["content"] for t in config["added_tokens"]])
            if all(pieces.count(s)[0] == self._library_count(s) for s in SELF_CHECK):
                self.pieces = pieces
                self._added = [t["content"] for t in config["added_tokens"]]
                self._plans = {}
            else:
                log.warning("%s: the fast token count disagrees with tokenizers; not used",
                            model_dir.name)

    def _library_count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def _count(self, text: str, start: int | None = None) -> tuple[int, int | None]:
        """(tokens of `text`, tokens before `start` if known cheaply; see _PieceCounter)."""
        if self.pieces is None:
            return self._library_count(text), None
        count, before = self.pieces.count(text, start)
        if self.examples % SPOT_CHECK_EVERY == 1 and count != self._library_count(text):
            log.warning("the fast token count disagreed with tokenizers; using tokenizers")
            self.pieces, self.exact = None, False
            return self._library_count(text), None
        return count, before

    def count(self, obj: dict, fmt: str, *, first_from: int = 0) -> tuple[int, int]:
        """(length, first) of one validated example. `first` is 0 for an example of at most
        `first_from` tokens (no max_seq_len of at least `first_from` drops it, so it is not
        worked out). ValueError if the chat template refuses the conversation (crma_core
        would refuse it too)."""
        self.examples += 1
        if fmt == formats.CHAT:
            if self.renderer is None:
                raise ValueError("the model has no chat template")
            by_parts = None
            if self.pieces is not None and self._plans is not None:
                by_parts = self._chat_by_parts(obj["messages"], first_from)
                if by_parts is not None and self.examples % SPOT_CHECK_EVERY != 1:
                    return by_parts
            try:
                text, start, end = self.renderer.render(obj["messages"])
            except Exception as error:  # noqa: BLE001 - jinja errors have many types
                raise ValueError(f"the chat template refused this conversation: {error}") \
                    from None
            length, before = self._count(text, start)
            counted = (length, 0) if length <= first_from else (
                length, self._first(text, start, end, length, before, add_special_tokens=False))
            if by_parts is not None and by_parts != counted:  # a spot-checked example
                log.warning("the by-parts chat count disagreed with the whole text's; not used")
                self._plans, self.exact = None, False
            return counted
        if fmt == formats.PROMPT_COMPLETION:
            text, start = obj["prompt"] + obj["completion"], len(obj["prompt"])
            length, before = self._count(text, start)
            length += self.added_total + self.eos
            if length <= first_from:
                return length, 0
            return length, self._first(text, start, len(text), length, before,
                                       add_special_tokens=True)
        length = self._count(obj["text"])[0] + self.added_total + self.eos
        return length, 2  # every token trains: the one at position 1 is the first scored

    def _chat_by_parts(self, messages: list[dict], first_from: int) -> tuple[int, int] | None:
        """`count` of a chat from its shape's constant texts, counted once per shape, and its
        contents, each counted alone; None where that is not certainly the same count (the
        spot-checked examples take the whole-text path). See _plan."""
        try:
            parts = self.renderer.parts(messages)
        except Exception:  # noqa: BLE001 - the whole-text path reports what is wrong
            return None
        if parts is None:
            return None
        shape, contents = parts
        plan = self._plans.get(shape, False)
        if plan is False:
            plan = self._plans[shape] = self._plan(shape)
        if plan is None:
            return None
        constants, first = plan
        count = self.pieces.count
        length = sum(constants)
        before = None
        for index, content in enumerate(contents):
            # Each content must start with a non-space (after the constant's lone newline).
            if not content or content[0].isspace():
                return None
            if index == first:
                before = length - sum(constants[index + 1:])
            length += count(content)[0]
        if length <= first_from:
            return length, 0
        if first == 0:
            return length, 2
        return length, max(before, 1) + 1

    def _plan(self, shape: Any) -> tuple[list[int], int] | None:
        """Per shape: its constants' counts and its first assistant turn, when the text is
        certainly cut into tokens at every constant/content junction, so that the constants
        and the contents can be counted apart: every constant but the last ends with a lone
        newline (a pre-token of its own before a content that starts with a non-space) and
        every constant but the first starts with an added token (a token of its own), no added
        token can span a junction, and the first assistant turn's content starts where
        `render` says the trained part starts."""
        full, first = shape.full, shape.first_assistant
        added = self._added
        for index, constant in enumerate(full):
            if index < len(full) - 1 and not (
                    len(constant) >= 2 and constant[-1] == "\n" and not constant[-2].isspace()):
                return None
            if index and not any(constant.startswith(token) for token in added):
                return None
            for token in added:
                for cut in range(1, len(token)):
                    if (index < len(full) - 1 and constant.endswith(token[:cut])) or \
                            (index and constant.startswith(token[cut:])):
                        return None
        if first and sum(map(len, shape.prefix)) != sum(map(len, full[:first + 1])):
            return None
        return [self.pieces.count(constant)[0] for constant in full], first

    def _first(self, text: str, start: int, end: int, length: int, before: int | None, *,
               add_special_tokens: bool) -> int:
        """One more than the position of the first token (from position 1) whose first
        character lies in [start, end) (crma_core's loss mask), or `length` + 1 if none.
        `before`: the tokens before `start` when a boundary is known to fall there."""
        if start == 0:
            return 2
        if before is not None and start < len(text) and not text[start].isspace():
            before += self.added_before if add_special_tokens else 0
            return max(before, 1) + 1
        encoded = self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        for position, (low, high) in enumerate(encoded.offsets):
            if position >= 1 and high > low and start <= low < end:
                return position + 1
        return length + 1
