"""Split a domain's chunked documents into train and holdout examples, by document.

Documents (never pieces) are assigned to one side, so no document contributes to both.
Within one source and one side, consecutive pieces are packed greedily into examples of at
most `max_chars` characters; short documents (an HPO term, a short licence) thus share an
example with their neighbours in the shuffled order, and the examples of every domain are
of comparable length. The holdout quota is shared among a domain's sources in proportion to
their text, so a two-source domain (finance) holds out both kinds of text."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

SEPARATOR = "\n\n"

Chunked = Sequence[tuple[str, list[str]]]  # (doc_id, pieces) in doc_id order


@dataclass(frozen=True)
class Example:
    """One training example and the documents its text came from."""

    text: str
    docs: tuple[str, ...]


class Packer:
    """Greedy packing of pieces into examples of at most `max_chars` characters."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.examples: list[Example] = []
        self._open: list[str] = []
        self._open_docs: list[str] = []
        self._open_len = 0

    def add(self, piece: str, doc_id: str) -> None:
        if len(piece) > self.max_chars:
            raise ValueError(f"piece of {len(piece)} chars exceeds max_chars={self.max_chars}")
        extra = len(piece) + (len(SEPARATOR) if self._open else 0)
        if self._open and self._open_len + extra > self.max_chars:
            self._close()
            extra = len(piece)
        self._open.append(piece)
        if doc_id not in self._open_docs:
            self._open_docs.append(doc_id)
        self._open_len += extra

    def _close(self) -> None:
        self.examples.append(Example(SEPARATOR.join(self._open), tuple(self._open_docs)))
        self._open, self._open_docs, self._open_len = [], [], 0

    def count(self) -> int:
        return len(self.examples) + (1 if self._open else 0)

    def count_if_added(self, pieces: Sequence[str]) -> int:
        """What `count()` would be after adding `pieces`, without adding them."""
        closed, open_len, is_open = len(self.examples), self._open_len, bool(self._open)
        for piece in pieces:
            extra = len(piece) + (len(SEPARATOR) if is_open else 0)
            if is_open and open_len + extra > self.max_chars:
                closed, open_len, extra = closed + 1, 0, len(piece)
            open_len += extra
            is_open = True
        return closed + (1 if is_open else 0)

    def finish(self) -> list[Example]:
        if self._open:
            self._close()
        return self.examples


@dataclass
class SourceSplit:
    """One source's part of a domain split."""

    train_docs: list[str] = field(default_factory=list)
    holdout_docs: list[str] = field(default_factory=list)
    train: list[Example] = field(default_factory=list)
    holdout: list[Example] = field(default_factory=list)


def rng_for(seed: int, *parts: str) -> random.Random:
    # str seeds are hashed with SHA-512 by random.seed (version 2): stable across processes
    # and independent of PYTHONHASHSEED.
    return random.Random(":".join([str(seed), *parts]))


def share_quota(total: int, weights: Mapping[str, int]) -> dict[str, int]:
    """Split `total` into integers proportional to `weights` (largest remainder, ties by
    name), so the parts always sum to `total`."""
    names = sorted(weights)
    mass = sum(weights.values())
    if mass == 0:
        return {n: 0 for n in names}
    exact = {n: total * weights[n] / mass for n in names}
    quota = {n: int(exact[n]) for n in names}
    left = total - sum(quota.values())
    for n in sorted(names, key=lambda n: (-(exact[n] - quota[n]), n))[:left]:
        quota[n] += 1
    return quota


def _pack(docs: Sequence[str], pieces: Mapping[str, list[str]], max_chars: int) -> list[Example]:
    packer = Packer(max_chars)
    for doc_id in docs:
        for piece in pieces[doc_id]:
            packer.add(piece, doc_id)
    return packer.finish()


def split_source(
    chunked: Chunked, *, holdout_examples: int, max_chars: int, rng: random.Random
) -> SourceSplit:
    """Shuffle documents with `rng` and move documents to holdout until its packed examples
    reach `holdout_examples`; the rest go to train. A document that would overshoot the
    quota is passed over for a smaller one (its surplus examples could only be thrown
    away), and taken last only if nothing smaller fills the quota. Holdout is trimmed to
    the quota; train is left whole (the domain-level budget cuts it)."""
    order = [doc_id for doc_id, _ in chunked]
    pieces = dict(chunked)
    rng.shuffle(order)
    packer = Packer(max_chars)
    chosen: set[str] = set()
    passed_over: list[str] = []
    for doc_id in order:
        if packer.count() >= holdout_examples:
            break
        if packer.count_if_added(pieces[doc_id]) > holdout_examples:
            passed_over.append(doc_id)
            continue
        for piece in pieces[doc_id]:
            packer.add(piece, doc_id)
        chosen.add(doc_id)
    if packer.count() < holdout_examples and passed_over:
        for piece in pieces[passed_over[0]]:
            packer.add(piece, passed_over[0])
        chosen.add(passed_over[0])
    split = SourceSplit()
    split.holdout_docs = [d for d in order if d in chosen]
    split.train_docs = [d for d in order if d not in chosen]
    split.holdout = packer.finish()[:holdout_examples]
    split.train = _pack(split.train_docs, pieces, max_chars)
    return split


def split_domain(
    chunked_by_source: Mapping[str, Chunked], *, holdout_examples: int, max_chars: int, seed: int, domain: str
) -> dict[str, SourceSplit]:
    """Split every source of one domain; the holdout quota is shared by text mass."""
    weights = {
        name: sum(len(p) for _, pieces in chunked for p in pieces) for name, chunked in chunked_by_source.items()
    }
    quota = share_quota(holdout_examples, weights)
    return {
        name: split_source(
            chunked_by_source[name],
            holdout_examples=quota[name],
            max_chars=max_chars,
            rng=rng_for(seed, domain, name, "split"),
        )
        for name in sorted(chunked_by_source)
    }


@dataclass
class Selection:
    """The examples of one domain after the budget: (source, example) pairs in output order."""

    train: list[tuple[str, Example]]
    holdout: list[tuple[str, Example]]


def select_budget(
    splits: Mapping[str, SourceSplit], *, train_examples: int, holdout_examples: int, seed: int, domain: str
) -> Selection:
    """Pool the sources' examples, shuffle with the seed and keep the first N (train) / M
    (holdout). Sampling from the pool keeps sources in proportion to their text."""
    selected = []
    for side, budget in (("train", train_examples), ("holdout", holdout_examples)):
        pool = [(name, ex) for name in sorted(splits) for ex in getattr(splits[name], side)]
        rng_for(seed, domain, side, "select").shuffle(pool)
        selected.append(pool[:budget])
    return Selection(train=selected[0], holdout=selected[1])
