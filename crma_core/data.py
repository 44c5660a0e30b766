"""JSONL training data → token ids and loss masks → padded (optionally packed) batches.

Loss masking: chat trains the assistant turns (their content and the template's end-of-turn
tokens); prompt/completion trains the completion and eos; text trains every token. With
``train_on_inputs`` every format trains every token.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from crma_core import formats
from crma_core.errors import DataError, NoTrainableTokensError
from crma_core.settings import batches_per_epoch

IGNORE_INDEX = -100


@dataclass
class Example:
    """One tokenized row: ``labels[i]`` is ``input_ids[i]`` where trained, else -100.
    ``position_ids`` is set on packed rows (positions restart at every packed example)."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int] | None = None

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


@dataclass
class DatasetInfo:
    """What ``load_examples`` kept and dropped."""

    format: str
    lines: int
    examples: int
    dropped_no_trained_tokens: int = 0
    truncated: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def read_jsonl(path: Path) -> tuple[str, list[dict]]:
    """Parse and validate a JSONL file; returns (format, objects).

    Raises DataError naming the first few bad lines (1-based), or when the file is empty or
    mixes formats.
    """
    path = Path(path)
    objects: list[dict] = []
    problems: list[str] = []
    seen_formats: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"line {number}: invalid JSON ({exc.msg})")
                continue
            fmt, issues = formats.detect_and_validate(obj)
            problems += [f"line {number}: {i.field or '<line>'}: {i.code}: {i.message}"
                         for i in issues]
            if fmt is not None:
                seen_formats.setdefault(fmt, number)
            objects.append(obj)
    if len(seen_formats) > 1:
        problems.append(f"{formats.MIXED_FORMATS}: " + ", ".join(
            f"{fmt} (first at line {n})" for fmt, n in seen_formats.items()))
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise DataError(f"{path.name}: {shown}{more}")
    if not objects:
        raise DataError(f"{path.name}: no examples")
    return next(iter(seen_formats)), objects


def _render_chat(tokenizer, messages: list[dict], *, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def _merge_system(messages: list[dict]) -> list[dict]:
    """Fold system messages into the next user turn (for templates without a system role,
    like Gemma-2's, which raise on one)."""
    merged: list[dict] = []
    pending: list[str] = []
    for message in messages:
        if message["role"] == "system":
            pending.append(message["content"])
        elif pending and message["role"] == "user":
            merged.append({"role": "user",
                           "content": "\n\n".join(pending + [message["content"]])})
            pending = []
        else:
            merged.append(message)
    if pending:
        merged.insert(0, {"role": "user", "content": "\n\n".join(pending)})
    return merged


def chat_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the assistant turns.

    An assistant span runs from the end of the template's generation prompt to the end of
    that turn as rendered (so end-of-turn tokens train and the model learns to stop). Needs
    a prefix-stable template (true for ChatML, Llama, Mistral and Gemma templates).
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError("the tokenizer has no chat template; use prompt/completion or text data")
    try:
        text = _render_chat(tokenizer, messages, add_generation_prompt=False)
    except Exception:  # noqa: BLE001 - jinja raise_exception surfaces as several types
        messages = _merge_system(messages)
        text = _render_chat(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_render_chat(tokenizer, messages[:i], add_generation_prompt=True)) if i else 0
        upto = _render_chat(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not text.startswith(upto):
            raise DataError("the chat template is not prefix-stable; cannot mask prompts")
        spans.append((start, len(upto)))
    return text, spans


def _tokenize_with_spans(tokenizer, text: str, spans: list[tuple[int, int]] | None, *,
                         add_special_tokens: bool) -> tuple[list[int], list[int]]:
    encoded = tokenizer(text, add_special_tokens=add_special_tokens,
                        return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = []
    for token, (start, end) in zip(ids, encoded["offset_mapping"]):
        inside = spans is None or (end > start and any(s <= start < e for s, e in spans))
        labels.append(token if inside else IGNORE_INDEX)
    # Tokens the tokenizer adds itself (bos) have empty offsets: never trained.
    if spans is None:
        labels = [t if (s, e) != (0, 0) or not add_special_tokens else IGNORE_INDEX
                  for t, (s, e) in zip(labels, encoded["offset_mapping"])]
    return ids, labels


def tokenize_example(obj: dict, fmt: str, tokenizer, *, train_on_inputs: bool = False) -> Example:
    """Token ids and labels for one validated example (no truncation).

    train_on_inputs: label every token (chat: all turns and the template's markup;
    prompt/completion: the prompt too) instead of the responses only.
    """
    eos = tokenizer.eos_token_id
    if fmt == formats.CHAT:
        text, spans = chat_spans(tokenizer, obj["messages"])
        ids, labels = _tokenize_with_spans(tokenizer, text, None if train_on_inputs else spans,
                                           add_special_tokens=False)
        return Example(ids, labels)
    if fmt == formats.PROMPT_COMPLETION:
        prompt, completion = obj["prompt"], obj["completion"]
        spans = None if train_on_inputs else [(len(prompt), len(prompt) + len(completion))]
        ids, labels = _tokenize_with_spans(tokenizer, prompt + completion, spans,
                                           add_special_tokens=True)
    elif fmt == formats.TEXT:
        ids, labels = _tokenize_with_spans(tokenizer, obj["text"], None, add_special_tokens=True)
    else:
        raise DataError(f"unknown format {fmt!r}")
    if eos is not None:
        ids.append(eos)
        labels.append(eos)
    return Example(ids, labels)


def load_examples(path: Path, tokenizer, *, max_seq_len: int,
                  train_on_inputs: bool = False) -> tuple[list[Example], DatasetInfo]:
    """Read, validate, tokenize and truncate a JSONL file (masking: ``tokenize_example``).

    Examples whose trained tokens all fall beyond ``max_seq_len`` are dropped (counted in
    the info). Raises NoTrainableTokensError if no trained token is left at all.
    """
    fmt, objects = read_jsonl(path)
    examples: list[Example] = []
    info = DatasetInfo(format=fmt, lines=len(objects), examples=0)
    for obj in objects:
        example = tokenize_example(obj, fmt, tokenizer, train_on_inputs=train_on_inputs)
        if len(example.input_ids) > max_seq_len:
            info.truncated += 1
            example = Example(example.input_ids[:max_seq_len], example.labels[:max_seq_len])
        # The first position has no predecessor, so a label there is never scored.
        if sum(1 for x in example.labels[1:] if x != IGNORE_INDEX) == 0:
            info.dropped_no_trained_tokens += 1
            continue
        examples.append(example)
    info.examples = len(examples)
    if not examples:
        raise NoTrainableTokensError(
            f"{Path(path).name}: the loss mask leaves no token to train on in any of "
            f"{len(objects)} examples (every response empty or cut off by max_seq_len="
            f"{max_seq_len}?)")
    return examples, info


def pack_examples(examples: list[Example], max_seq_len: int) -> list[Example]:
    """Concatenate examples (in order) into rows of at most ``max_seq_len`` tokens.

    Positions restart at 0 for every example; transformers turns such position_ids into a
    block-diagonal causal mask when no attention mask is passed, so examples never attend
    to each other. Each example's first label is dropped (-100): unpacked, the first token
    has no predecessor and is never scored; packed, it would be predicted from the end of
    the previous example. So a packed row scores exactly what the separate rows score.
    """
    rows: list[Example] = []
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for example in examples:
        if ids and len(ids) + len(example.input_ids) > max_seq_len:
            rows.append(Example(ids, labels, positions))
            ids, labels, positions = [], [], []
        ids += example.input_ids
        labels += [IGNORE_INDEX] + example.labels[1:]
        positions += list(range(len(example.input_ids)))
    if ids:
        rows.append(Example(ids, labels, positions))
    return rows


def collate(rows: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rows into tensors: input_ids, labels, token_mask (1 = real token) and either
    attention_mask (unpacked) or position_ids (packed; padding gets its own positions)."""
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    packed = rows[0].position_ids is not None
    positions = torch.zeros((len(rows), width), dtype=torch.long) if packed else None
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        ids[i, :n] = torch.tensor(row.input_ids)
        labels[i, :n] = torch.tensor(row.labels)
        mask[i, :n] = 1
        if packed:
            positions[i, :n] = torch.tensor(row.position_ids)
            positions[i, n:] = torch.arange(width - n)
    batch = {"input_ids": ids, "labels": labels, "token_mask": mask}
    if packed:
        batch["position_ids"] = positions
    else:
        batch["attention_mask"] = mask
    return batch


def split_batch(batch: dict[str, torch.Tensor],
                micro_batch_size: int) -> list[dict[str, torch.Tensor]]:
    """A collated batch as micro-batches of at most ``micro_batch_size`` rows, in order, each
    cut to its own longest row (rows are right-padded, so the cut columns are padding)."""
    rows = batch["input_ids"].shape[0]
    if micro_batch_size >= rows:
        return [batch]
    parts = []
    for start in range(0, rows, micro_batch_size):
        part = {k: v[start:start + micro_batch_size] for k, v in batch.items()}
        width = int(part["token_mask"].sum(dim=1).max())
        parts.append({k: v[:, :width] for k, v in part.items()})
    return parts


# Lay a packed micro-batch out again only when that at least shrinks its width this much:
# attention costs rows x width^2 (a block-diagonal mask is still a full mask to SDPA), the
# rest of the model tokens x 1, so narrower rows of the same examples cost less.
NARROW_FACTOR = 0.75


def narrow_packed(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A packed batch (``position_ids``) with the same examples in rows as narrow as its
    longest example, filled first-fit in decreasing length; any other batch unchanged.

    What the model computes for each example does not depend on the row it sits in: every
    example attends only to itself (positions restart at 0), its first label is already
    dropped (``pack_examples``), and the LM head scores each token alone. So the losses,
    scored tokens and gradients are those of the packed batch (up to float summation
    order), while SDPA's attention, which a block-diagonal mask does not make cheaper, runs
    over rows of the longest example instead of ``max_seq_len``: on 512-token rows of
    ~45-token examples that is most of the attention's work. Rows are right-padded as
    ``collate`` pads them (padding gets its own positions, so it forms its own block)."""
    positions = batch.get("position_ids")
    if positions is None:
        return batch
    mask = batch["token_mask"]
    lengths = mask.sum(dim=1).tolist()
    segments: list[tuple[int, int, int]] = []  # (row, start, length)
    for row, n in enumerate(lengths):
        starts = (positions[row, :n] == 0).nonzero().flatten().tolist()
        for start, end in zip(starts, starts[1:] + [n]):
            segments.append((row, start, end - start))
    if not segments:
        return batch
    width = max(length for _, _, length in segments)
    if width > NARROW_FACTOR * positions.shape[1]:
        return batch
    free: list[int] = []  # room left in each new row
    placed: list[list[tuple[int, int, int]]] = []
    for segment in sorted(segments, key=lambda s: -s[2]):  # stable: ties keep their order
        for index, room in enumerate(free):
            if room >= segment[2]:
                break
        else:
            index = len(free)
            free.append(width)
            placed.append([])
        free[index] -= segment[2]
        placed[index].append(segment)
    ids, labels = batch["input_ids"], batch["labels"]
    padding = ids[mask == 0]
    pad_id = int(padding[0]) if padding.numel() else 0
    rows = len(placed)
    out_ids = torch.full((rows, width), pad_id, dtype=ids.dtype)
    out_labels = torch.full((rows, width), IGNORE_INDEX, dtype=labels.dtype)
    out_mask = torch.zeros((rows, width), dtype=mask.dtype)
    out_positions = torch.zeros((rows, width), dtype=positions.dtype)
    for index, members in enumerate(placed):
        at = 0
        for row, start, length in members:
            out_ids[index, at:at + length] = ids[row, start:start + length]
            out_labels[index, at:at + length] = labels[row, start:start + length]
            out_positions[index, at:at + length] = torch.arange(length)
            at += length
        out_mask[index, :at] = 1
        out_positions[index, at:] = torch.arange(width - at)
    return {"input_ids": out_ids, "labels": out_labels, "token_mask": out_mask,
            "position_ids": out_positions}


def batch_trained_tokens(batch: dict[str, torch.Tensor]) -> int:
    """The trained tokens of a training batch, what a fine-tuning job is billed for: every
    real (non-padding) token of its rows, loss-bearing or not (the prompt and the chat
    template's markup go through the model as much as the response does). A packed row holds
    the tokens of the examples packed into it, so packing counts the same. Anything trained
    (a continual run's baseline LoRA included) is counted with this one function; the service
    counts the same tokens at upload time from the examples' rendered lengths."""
    return int(batch["token_mask"].sum())


def scored_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Labels the loss scores: every trained label but a row's first (nothing predicts it)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def longest_row(rows: list[Example]) -> int:
    return max(len(r.input_ids) for r in rows)


def epoch_order(num_rows: int, *, seed: int, epoch: int) -> list[int]:
    """The row order of one epoch: a permutation fixed by (seed, epoch) alone."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_rows, generator=generator).tolist()


def epoch_batches(rows: list[Example], *, batch_size: int, seed: int, epoch: int,
                  start: int = 0, pad_id: int) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Yield (batch index, batch) of one epoch from batch ``start`` (to resume mid-epoch)."""
    order = epoch_order(len(rows), seed=seed, epoch=epoch)
    for index in range(start, batches_per_epoch(len(rows), batch_size)):
        chosen = [rows[j] for j in order[index * batch_size:(index + 1) * batch_size]]
        yield index, collate(chosen, pad_id)


def load_eval_batches(path: Path, tokenizer, *, max_seq_len: int, batch_size: int,
                      train_on_inputs: bool = False) -> list[dict[str, torch.Tensor]]:
    """A holdout JSONL file as batches for ``crma_core.loop.evaluate_loss``."""
    rows, _ = load_examples(path, tokenizer, max_seq_len=max_seq_len,
                            train_on_inputs=train_on_inputs)
    return eval_batches(rows, batch_size=batch_size, pad_id=tokenizer.pad_token_id)


def eval_batches(rows: list[Example], *, batch_size: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    """Validation batches in file order."""
    return [collate(rows[i:i + batch_size], pad_id) for i in range(0, len(rows), batch_size)]
