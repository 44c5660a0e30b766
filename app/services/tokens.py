"""Token estimates per model family for uploaded files.

When a model of the family is installed in the model store (`<store>/<id>/tokenizer.json`),
its tokenizer (the `tokenizers` library, no transformers/torch) counts the first
`EXACT_TEXT_BYTES` of text exactly and the rest is extrapolated at the measured
tokens-per-byte ratio (method `tokenizer:<id>`, or `tokenizer_sample:<id>` once extrapolated).
Otherwise a documented bytes-per-token heuristic is used (method
`heuristic:<bytes>_bytes_per_token`).

Heuristic ratios (UTF-8 bytes per token on English prose and chat, measured on the public
tokenizers): Llama-family SentencePiece/BPE vocabularies (32k-49k) ~3.7, Mistral v0.3 (32,768)
~3.7, Gemma-2 (256k) ~4.4. Every example also pays EXAMPLE_OVERHEAD_TOKENS (bos/eos) and each
chat message CHAT_MESSAGE_OVERHEAD_TOKENS (role markers of the chat template)."""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

from crma_core.catalog import CATALOG

logger = logging.getLogger(__name__)

FAMILIES = tuple(sorted({m.family for m in CATALOG.values()}))
BYTES_PER_TOKEN = {"llama": 3.7, "mistral": 3.7, "gemma2": 4.4}
EXAMPLE_OVERHEAD_TOKENS = 2
CHAT_MESSAGE_OVERHEAD_TOKENS = 4
EXACT_TEXT_BYTES = 4 * 1024 * 1024
_BATCH = 256

_tokenizers: dict[tuple[str, float], object] = {}
_tokenizers_lock = threading.Lock()


def _load_tokenizer(path: Path) -> object | None:
    try:
        key = (str(path), path.stat().st_mtime)
    except OSError:
        return None
    with _tokenizers_lock:
        if key not in _tokenizers:
            from tokenizers import Tokenizer

            try:
                _tokenizers[key] = Tokenizer.from_file(str(path))
            except Exception:  # noqa: BLE001 - a broken file falls back to the heuristic
                logger.warning("unreadable tokenizer %s; using the heuristic", path)
                return None
        return _tokenizers[key]


def find_tokenizer(model_store_dir: Path, family: str) -> tuple[str, object] | None:
    """(model id, tokenizer) of the first installed catalog model of `family`, if any."""
    for model_id in sorted(m.id for m in CATALOG.values() if m.family == family):
        path = model_store_dir / model_id / "tokenizer.json"
        if path.is_file():
            tokenizer = _load_tokenizer(path)
            if tokenizer is not None:
                return model_id, tokenizer
    return None


@dataclass
class FamilyCounter:
    family: str
    tokenizer: object | None = None
    model_id: str | None = None
    exact_tokens: int = 0
    exact_bytes: int = 0
    extra_bytes: int = 0
    pending: list[str] = field(default_factory=list)
    pending_bytes: int = 0

    def add(self, text: str, size: int) -> None:
        if self.tokenizer is None:
            self.extra_bytes += size
        elif self.exact_bytes + self.pending_bytes < EXACT_TEXT_BYTES:
            self.pending.append(text)
            self.pending_bytes += size
            if len(self.pending) >= _BATCH:
                self._flush()
        else:
            self.extra_bytes += size

    def _flush(self) -> None:
        if self.pending:
            encoded = self.tokenizer.encode_batch(self.pending, add_special_tokens=False)
            self.exact_tokens += sum(len(e.ids) for e in encoded)
            self.exact_bytes += self.pending_bytes
            self.pending, self.pending_bytes = [], 0

    def text_tokens(self) -> int:
        if self.tokenizer is None:
            return math.ceil(self.extra_bytes / BYTES_PER_TOKEN[self.family])
        self._flush()
        ratio = self.exact_tokens / self.exact_bytes if self.exact_bytes else 0.0
        return self.exact_tokens + math.ceil(self.extra_bytes * ratio)

    def method(self) -> str:
        if self.tokenizer is None:
            return f"heuristic:{BYTES_PER_TOKEN[self.family]}_bytes_per_token"
        kind = "tokenizer_sample" if self.extra_bytes else "tokenizer"
        return f"{kind}:{self.model_id}"


class TokenEstimator:
    """Accumulates example texts; `totals()` gives tokens and method per family."""

    def __init__(self, model_store_dir: Path) -> None:
        self.counters = []
        for family in FAMILIES:
            found = find_tokenizer(model_store_dir, family)
            model_id, tokenizer = found if found else (None, None)
            self.counters.append(FamilyCounter(family, tokenizer=tokenizer, model_id=model_id))
        self.overhead = 0

    def add(self, text: str, *, messages: int = 0) -> None:
        size = len(text.encode("utf-8"))
        for counter in self.counters:
            counter.add(text, size)
        self.overhead += EXAMPLE_OVERHEAD_TOKENS + CHAT_MESSAGE_OVERHEAD_TOKENS * messages

    def totals(self) -> tuple[dict[str, int], dict[str, str]]:
        tokens = {c.family: c.text_tokens() + self.overhead for c in self.counters}
        methods = {c.family: c.method() for c in self.counters}
        return tokens, methods
