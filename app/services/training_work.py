"""What packing saves: the tokens a job's batches put through the model, padding included,
packed against unpacked, read off the training file's per-model length histograms
(app/services/tokens.py). The estimate's duration is the trained tokens at the model's
throughput (`Settings.throughput_tokens_per_s`, measured on unpacked batches) times
`duration_factor`: 1 unpacked, the packed share of that work with `packing`.

Unpacked, every batch is padded to its longest row: an epoch of N rows in batches of B puts
about N x E[the longest of B rows] tokens through the model (rows drawn at random, as each
epoch shuffles them). Packed, rows are filled up to max_seq_len with whole examples
(crma_core.data.pack_examples: an example that does not fit starts the next row, so a row
loses about half an example on average) and padded only to the longest packed row."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Packed rows are at least this full, however long the examples are.
MIN_PACKED_FILL = 0.5


def _cut_lengths(stored: Mapping[str, Any], max_seq_len: int) -> list[tuple[int, int]]:
    lengths: dict[int, int] = {}
    for length, count in stored["lengths"]:
        cut = min(int(length), max_seq_len)
        lengths[cut] = lengths.get(cut, 0) + int(count)
    return sorted(lengths.items())


def unpacked_work(stored: Mapping[str, Any], *, max_seq_len: int, batch_size: int) -> float:
    """Tokens one epoch puts through the model unpacked, padding included (see the module)."""
    lengths = _cut_lengths(stored, max_seq_len)
    rows = sum(count for _, count in lengths)
    if not rows:
        return 0.0
    expected_longest, below = 0.0, 0
    for length, count in lengths:
        # P(longest of batch_size rows == length) from the lengths' distribution.
        share = ((below + count) / rows) ** batch_size - (below / rows) ** batch_size
        expected_longest += length * share
        below += count
    return rows * expected_longest


def packed_work(stored: Mapping[str, Any], *, max_seq_len: int) -> float:
    """Tokens one epoch puts through the model packed, padding included (see the module)."""
    lengths = _cut_lengths(stored, max_seq_len)
    rows = sum(count for _, count in lengths)
    tokens = sum(length * count for length, count in lengths)
    if not rows:
        return 0.0
    fill = max(MIN_PACKED_FILL, 1 - tokens / rows / (2 * max_seq_len))
    return tokens / fill


def duration_factor(training_file: Any, *, model_id: str, settings: Any) -> float:
    """The share of the unpacked work a job does (1.0 unpacked, or without histograms)."""
    hp = settings.hyperparameters
    stored = (getattr(training_file, "token_lengths", None) or {}).get(model_id)
    if not hp.packing or not stored or not stored.get("lengths"):
        return 1.0
    unpacked = unpacked_work(stored, max_seq_len=hp.max_seq_len, batch_size=hp.batch_size)
    if unpacked <= 0:
        return 1.0
    return min(1.0, packed_work(stored, max_seq_len=hp.max_seq_len) / unpacked)
