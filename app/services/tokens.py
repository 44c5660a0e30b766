"""Trained tokens: what a job is billed for, counted at upload and applied at job creation.

**The definition** (docs/user-guide.md, "Pricing and the free tier"): a job's trained tokens
are every real (non-padding) token of the training sequences that go through the model in
training steps: the example rendered as crma_core.data renders it (a chat through the model's
chat template, system prompt and role markers included; prompt + completion or text with the
tokenizer's special tokens and eos), cut to the job's `max_seq_len`, once per epoch, whether
or not the loss is taken on it; examples that the cut leaves nothing to learn from are
dropped and not counted; validation passes are not counted. crma_core counts the same thing
in training (`crma_core.data.trained_tokens`), packed or not.

**At upload** (`TokenEstimator`, fed by app/services/uploads.py): for each catalog model
installed in the model store, app/services/token_counter.py gives every example's exact
length and the position of its first trained token, kept as two histograms
(`files.token_lengths[<model>]`); per model family, `files.token_counts` holds the untruncated
total (exact for a family with an installed model, `tokenizer:<model>`; otherwise the
bytes-per-token heuristic, `heuristic:<n>_bytes_per_token`).

Counting exactly costs about as much CPU as the rest of validation several times over, so
a file is counted exactly up to EXACT_COUNT_BYTES of example text (every file most users
upload); past that, each further example's length is its text's bytes times the tokens per
byte the exactly counted examples of the same file showed. Such a count is marked inexact
(`tokenizer_partial:<model>`) and an estimate from it carries PARTIAL_MARGIN; the job is still
billed for the tokens it trains, counted exactly by crma_core.

**At job creation** (`job_tokens`): epochs x the tokens of one epoch at the job's
max_seq_len, read off the histograms: exact. Without them (the model was not installed when
the file was uploaded) the heuristic count, times HEURISTIC_MARGIN so the hold covers the
usual error of the heuristic, and marked inexact. With `max_steps` below the planned steps
the estimate is the tokens of the longest rows those steps could take (an upper bound).

Heuristic ratios (UTF-8 bytes per token on English prose and chat, measured on the public
tokenizers): Llama-family SentencePiece/BPE vocabularies (32k-49k) ~3.7, Mistral v0.3 (32,768)
~3.7, Gemma-2 (256k) ~4.4. Every example also pays EXAMPLE_OVERHEAD_TOKENS (bos/eos) and each
chat message CHAT_MESSAGE_OVERHEAD_TOKENS (role markers of the chat template)."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.schemas.jobs import MIN_SEQ_LEN
from app.services.token_counter import ExampleCounter
from crma_core import formats
from crma_core.catalog import CATALOG, CatalogModel
from crma_core.settings import planned_steps

logger = logging.getLogger(__name__)

FAMILIES = tuple(sorted({m.family for m in CATALOG.values()}))
BYTES_PER_TOKEN = {"llama": 3.7, "mistral": 3.7, "gemma2": 4.4}
EXAMPLE_OVERHEAD_TOKENS = 2
CHAT_MESSAGE_OVERHEAD_TOKENS = 4
# A heuristic count can be well off (code, other languages); the hold of a job estimated
# with it covers this much more, and what is not trained is released at the end.
HEURISTIC_MARGIN = 1.5
# A model's count that is exact but for a few examples (spot check failed, template refused
# some): the same, for the small error.
PARTIAL_MARGIN = 1.1
# Example text counted exactly per upload; the rest of a larger file is extrapolated (above).
EXACT_COUNT_BYTES = 32 * 1024 * 1024


def installed_models(model_store_dir: Path) -> list[CatalogModel]:
    """Catalog models whose tokenizer is in the model store (`<store>/<id>/tokenizer.json`,
    with its tokenizer_config.json and chat template: an install, or those files alone)."""
    return [m for m in CATALOG.values() if (model_store_dir / m.id / "tokenizer.json").is_file()]


class ModelLengths:
    """One model's exact counts of a file: histograms of example lengths and of `first`
    (see token_counter.ExampleCounter.count; kept only above MIN_SEQ_LEN)."""

    def __init__(self, model: CatalogModel, counter: ExampleCounter) -> None:
        self.model, self.counter = model, counter
        self.lengths: Counter[int] = Counter()
        self.first: Counter[int] = Counter()
        self.tokens = 0
        self.refused = 0  # examples the chat template refused (crma_core would refuse them)
        self.counted_bytes = self.counted_tokens = 0  # the examples counted exactly
        self.extrapolated = 0  # examples past EXACT_COUNT_BYTES

    def add(self, obj: dict, fmt: str, text_bytes: int = 0) -> None:
        try:
            length, first = self.counter.count(obj, fmt, first_from=MIN_SEQ_LEN)
        except ValueError:
            self.refused += 1
            return
        self.counted_bytes += text_bytes
        self.counted_tokens += length
        self._record(length, first)

    def add_extrapolated(self, text_bytes: int) -> None:
        """An example past the exact budget: its length from its text's bytes at the tokens
        per byte counted so far (no `first`: no drop is assumed, so the estimate is high)."""
        per_byte = self.counted_tokens / self.counted_bytes if self.counted_bytes else \
            1 / BYTES_PER_TOKEN[self.model.family]
        self.extrapolated += 1
        self._record(max(1, math.ceil(text_bytes * per_byte)), 0)

    def _record(self, length: int, first: int) -> None:
        self.tokens += length
        # No max_seq_len is above the context length: longer rows count as that long.
        self.lengths[min(length, self.model.context_length)] += 1
        if first > MIN_SEQ_LEN:
            self.first[min(first, self.model.context_length + 1)] += 1

    @property
    def exact(self) -> bool:
        return self.counter.exact and not self.refused and not self.extrapolated

    def stored(self) -> dict[str, Any]:
        return {"exact": self.exact, "rows": sum(self.lengths.values()), "tokens": self.tokens,
                "lengths": sorted(self.lengths.items()), "first": sorted(self.first.items())}


class TokenEstimator:
    """Accumulates validated examples (`add`); `totals()` gives the per-family counts and
    methods and the per-model histograms (see the module)."""

    def __init__(self, model_store_dir: Path, *, exact_bytes: int = EXACT_COUNT_BYTES) -> None:
        self.exact_bytes = exact_bytes
        self.models: list[ModelLengths] = []
        for model in installed_models(model_store_dir):
            try:
                counter = ExampleCounter(model_store_dir / model.id)
            except Exception:  # noqa: BLE001 - a broken install: that family's heuristic
                logger.warning("cannot count tokens for %s; using the heuristic", model.id,
                               exc_info=True)
                continue
            self.models.append(ModelLengths(model, counter))
        self.heuristic_bytes = 0
        self.overhead = 0

    @property
    def counts_exactly(self) -> bool:
        return bool(self.models)

    def add(self, obj: dict, fmt: str) -> None:
        messages = len(obj["messages"]) if fmt == formats.CHAT else 0
        text_bytes = len(formats.clean_text(obj, fmt).encode("utf-8"))
        exactly = self.heuristic_bytes < self.exact_bytes
        self.heuristic_bytes += text_bytes
        self.overhead += EXAMPLE_OVERHEAD_TOKENS + CHAT_MESSAGE_OVERHEAD_TOKENS * messages
        for model in self.models:
            if exactly:
                model.add(obj, fmt, text_bytes)
            else:
                model.add_extrapolated(text_bytes)

    def totals(self) -> tuple[dict[str, int], dict[str, str], dict[str, Any]]:
        """(tokens per family, how each was counted, histograms per installed model)."""
        tokens, methods = {}, {}
        for family in FAMILIES:
            exact = next((m for m in self.models if m.model.family == family), None)
            if exact is not None:
                tokens[family] = exact.tokens
                methods[family] = f"{'tokenizer' if exact.exact else 'tokenizer_partial'}:" \
                                  f"{exact.model.id}"
            else:
                ratio = BYTES_PER_TOKEN[family]
                tokens[family] = math.ceil(self.heuristic_bytes / ratio) + self.overhead
                methods[family] = f"heuristic:{ratio}_bytes_per_token"
        return tokens, methods, {m.model.id: m.stored() for m in self.models}


# -- job creation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class JobTokens:
    """What a job will train: `tokens` over all its epochs (or its max_steps), exact or an
    upper bound; `per_epoch` at its max_seq_len."""

    tokens: int
    per_epoch: int
    exact: bool


def epoch_tokens(stored: Mapping[str, Any], *, max_seq_len: int,
                 train_on_inputs: bool = False) -> int:
    """The trained tokens of one epoch at `max_seq_len` from a model's stored histograms:
    every kept example's length cut to max_seq_len; an example is dropped when its first
    trained token lies at or beyond max_seq_len (with train_on_inputs none is)."""
    total = sum(count * min(length, max_seq_len) for length, count in stored["lengths"])
    if not train_on_inputs:
        # A dropped example is longer than max_seq_len: it would have counted max_seq_len.
        total -= max_seq_len * sum(c for first, c in stored["first"] if first > max_seq_len)
    return total


def _longest(stored: Mapping[str, Any], *, rows: int, max_seq_len: int, epochs: int) -> int:
    """Tokens of the `rows` longest rows (cut to max_seq_len) over `epochs` passes: an upper
    bound of what `rows` rows in any order can train."""
    total = 0
    for length, count in sorted(stored["lengths"], reverse=True):
        take = min(rows, count * epochs)
        total += take * min(length, max_seq_len)
        rows -= take
        if rows <= 0:
            break
    return total


def job_tokens(training_file: Any, *, model: CatalogModel, settings: Any) -> JobTokens:
    """The trained tokens of a job on `training_file` (a files row with token_counts,
    token_lengths, example_count) for `model` with JobSettings `settings` (see the module)."""
    hp = settings.hyperparameters
    train_on_inputs = bool(getattr(hp, "train_on_inputs", False))
    stored = (getattr(training_file, "token_lengths", None) or {}).get(model.id)
    if stored is None:
        counted = int((training_file.token_counts or {}).get(model.family, 0))
        per_epoch = math.ceil(counted * HEURISTIC_MARGIN)
        return JobTokens(_steps_share(per_epoch * hp.n_epochs, training_file, hp), per_epoch,
                         exact=False)
    per_epoch = epoch_tokens(stored, max_seq_len=hp.max_seq_len, train_on_inputs=train_on_inputs)
    exact = bool(stored.get("exact"))
    if not exact:
        per_epoch = math.ceil(per_epoch * PARTIAL_MARGIN)
    total = per_epoch * hp.n_epochs
    rows = max(int(stored["rows"]), 1)
    planned = planned_steps(rows, epochs=hp.n_epochs, batch_size=hp.batch_size)
    if hp.max_steps is not None and hp.max_steps < planned:
        if getattr(hp, "packing", False):
            # Packed rows (fewer than the examples) hold up to max_seq_len tokens each.
            bound = hp.max_steps * hp.batch_size * hp.max_seq_len
        else:
            taken = hp.max_steps * hp.batch_size
            # Rows repeat only in the passes those steps reach (each epoch takes every row once).
            bound = _longest(stored, rows=taken, max_seq_len=hp.max_seq_len,
                             epochs=min(hp.n_epochs, math.ceil(taken / rows)))
        return JobTokens(min(total, bound), per_epoch, exact=False)
    return JobTokens(total, per_epoch, exact=exact)


def _steps_share(tokens: int, training_file: Any, hp: Any) -> int:
    """Without lengths, max_steps trains its share of the planned steps (rounded up)."""
    if hp.max_steps is None:
        return tokens
    planned = planned_steps(max(int(training_file.example_count), 1), epochs=hp.n_epochs,
                            batch_size=hp.batch_size)
    return -(-tokens * min(hp.max_steps, planned) // planned)
