"""How much memory a training step takes, and the micro-batch that fits a budget.

A deliberately coarse, conservative model of LoRA (+ CRMA) training on a frozen base:

- fixed: the base weights, plus every trainable parameter's value, gradient and two AdamW
  moments in float32 (16 bytes each);
- per token: the activations autograd keeps for backward. A frozen linear layer keeps
  nothing for its own weight gradient, but its LoRA branch keeps the layer's input (and,
  with dropout, a dropped copy and its mask); attention keeps q, k, v (GQA heads repeated)
  and its output; the gated MLP keeps both projections, the activation and the product;
  RMSNorm keeps its float32 input. Eager attention (Gemma-2) also keeps the scores,
  soft-capped scores and probabilities: a term per token *per position*, quadratic in the
  row length. Gradient checkpointing keeps one hidden state per layer plus one layer's
  activations while it is recomputed;
- the LM head: one chunk of float32 logits and two buffers of its size
  (``crma_core.loss``, which takes its chunk size from here), and the gradient of each
  scored hidden state.

``ModelShape.of_catalog`` gives the shapes of the catalog's models without loading them
(the API's bounds and estimates); ``ModelShape.of_config`` those of a loaded model.
The training loop checks every micro-batch against the budget before running it and
treats "would not fit" as an out-of-memory error, so the halve-and-retry path is the same
on a CPU (where a real allocation failure would kill the process) as on a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from crma_core.catalog import CatalogModel
from crma_core.errors import ConfigError
from crma_core.settings import LINEAR_MODULES, LoraSettings, TrainConfig

MIB = 1 << 20
# One chunk's float32 logits at most this many elements (1 GiB) in ``crma_core.loss``: 8388
# tokens at a 32k vocabulary (one chunk for a TinyLlama 8×1024 batch), 1048 at Gemma-2's 256k.
LOGITS_BUDGET = 2**28
# Use at most this share of what the device reports free (allocator fragmentation, CUDA
# workspaces, the data and Python objects the model does not count).
DEVICE_SHARE = 0.85
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


@dataclass(frozen=True)
class ModelShape:
    """The architecture figures the memory model needs (one decoder family)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    parameters: int
    eager_attention: bool = False

    @classmethod
    def of_catalog(cls, model: CatalogModel) -> ModelShape:
        return cls(hidden_size=model.hidden_size, intermediate_size=model.intermediate_size,
                   num_layers=model.num_layers, num_attention_heads=model.num_attention_heads,
                   num_key_value_heads=model.num_key_value_heads, head_dim=model.head_dim,
                   vocab_size=model.vocab_size, parameters=model.parameters,
                   eager_attention=model.family == "gemma2")

    @classmethod
    def of_config(cls, config: Any, *, parameters: int) -> ModelShape:
        """From a transformers config (``model.config``) and the model's parameter count."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
                   num_layers=config.num_hidden_layers, num_attention_heads=heads,
                   num_key_value_heads=getattr(config, "num_key_value_heads", None) or heads,
                   head_dim=head_dim, vocab_size=config.vocab_size, parameters=parameters,
                   eager_attention=getattr(config, "_attn_implementation", None) == "eager")

    def module_widths(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each decoder linear projection."""
        h, i = self.hidden_size, self.intermediate_size
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


@dataclass(frozen=True)
class MemoryModel:
    """Bytes of one training step: ``fixed + rows·width·per_token + rows·width²·per_token_pair
    + logits(min(rows·width, chunk))``."""

    fixed_bytes: int
    per_token_bytes: int
    per_token_pair_bytes: int
    logits_bytes_per_token: int
    chunk_tokens: int

    def step_bytes(self, rows: int, width: int) -> int:
        tokens = rows * width
        return (self.fixed_bytes + tokens * self.per_token_bytes
                + tokens * width * self.per_token_pair_bytes
                + min(tokens, self.chunk_tokens) * self.logits_bytes_per_token)

    def largest_micro_batch(self, *, width: int, budget_bytes: int, limit: int) -> int:
        """The most rows of ``width`` tokens (at most ``limit``) that fit; 0 if not even one."""
        fits = 0
        low, high = 1, limit
        while low <= high:  # step_bytes grows with rows
            mid = (low + high) // 2
            if self.step_bytes(mid, width) <= budget_bytes:
                fits, low = mid, mid + 1
            else:
                high = mid - 1
        return fits


def memory_model(shape: ModelShape, *, lora: LoraSettings, train: TrainConfig,
                 crma_width: int = 0, weight_bytes: int | None = None) -> MemoryModel:
    """The memory model of training ``shape`` with these settings.

    crma_width: CRMA's K = n·r per layer (0 without CRMA); weight_bytes: the base weights
    as loaded (None: parameters × dtype size, about 4.5 bits each for NF4).
    """
    b = _DTYPE_BYTES[train.dtype]
    h, i, layers = shape.hidden_size, shape.intermediate_size, shape.num_layers
    widths = shape.module_widths()
    targets = (LINEAR_MODULES if lora.target_modules == "all-linear"
               else tuple(m for m in lora.target_modules if m in widths))
    q = shape.num_attention_heads * shape.head_dim
    # Elements kept per token and layer (see the module docstring).
    attention = 2 * h + 5 * q
    mlp = 2 * h + 4 * i
    lora_kept = lora.r * len(targets)
    if lora.dropout > 0:
        lora_kept += sum(widths[m][0] for m in targets) * (b + 1) // b  # copy + bool mask
    crma_kept = crma_width + h if crma_width else 0
    layer_bytes = (attention + mlp + lora_kept + crma_kept) * b + 2 * h * 4  # norms in fp32
    pair_bytes = shape.num_attention_heads * (3 * b + 4) if shape.eager_attention else 0
    if train.gradient_checkpointing:
        per_token = layers * h * b + layer_bytes
        pair = pair_bytes
    else:
        per_token = layers * layer_bytes
        pair = layers * pair_bytes
    per_token += layer_bytes  # backward's transient activation gradients (about a layer)
    per_token += 2 * h * b  # final norm output, and the gradient the fused head keeps
    if weight_bytes is None:
        weight_bytes = shape.parameters * (0.5625 if lora.quantization == "nf4" else b)
    lora_params = layers * lora.r * sum(sum(widths[m]) for m in targets)
    crma_params = layers * (2 * h * crma_width + 17) if crma_width else 0
    fixed = int(weight_bytes) + 16 * (lora_params + crma_params)
    chunk = chunk_size(shape.vocab_size, train.loss_chunk_tokens)
    return MemoryModel(fixed_bytes=fixed, per_token_bytes=per_token,
                       per_token_pair_bytes=pair, logits_bytes_per_token=3 * 4 * shape.vocab_size,
                       chunk_tokens=chunk)


def chunk_size(vocab_size: int, chunk_tokens: int | None = None) -> int:
    """Tokens per LM-head chunk: ``chunk_tokens`` if set, else as many as fit ``LOGITS_BUDGET``."""
    if chunk_tokens is not None:
        return int(chunk_tokens)
    return max(1, LOGITS_BUDGET // max(1, int(vocab_size)))


@dataclass(frozen=True)
class MicroBatchPlan:
    """How one optimizer step of ``batch_size`` rows runs: ``accumulation_steps`` forward/
    backward passes of at most ``micro_batch_size`` rows. ``source``: "configured" (set in
    TrainConfig), "budget" (TrainConfig.memory_budget_mb) or "device" (free memory)."""

    batch_size: int
    micro_batch_size: int
    width: int
    budget_bytes: int | None
    estimate_bytes: int
    source: str

    @property
    def accumulation_steps(self) -> int:
        return math.ceil(self.batch_size / self.micro_batch_size)

    def to_dict(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "micro_batch_size": self.micro_batch_size,
                "accumulation_steps": self.accumulation_steps, "width": self.width,
                "budget_bytes": self.budget_bytes, "estimate_bytes": self.estimate_bytes,
                "source": self.source}


def balanced_micro_batch(batch_size: int, largest: int) -> int:
    """The micro-batch size for the fewest passes of at most ``largest`` rows, as even as can
    be (64 rows with at most 14 at once: 5 passes of 13, not 4 of 14 and one of 8)."""
    passes = math.ceil(batch_size / max(1, largest))
    return math.ceil(batch_size / passes)


def plan_micro_batch(model: MemoryModel, *, batch_size: int, width: int,
                     budget_bytes: int | None, configured: int | None = None,
                     source: str = "budget", strict: bool = True) -> MicroBatchPlan:
    """Pick the micro-batch for rows of at most ``width`` tokens.

    ``configured`` wins when given (the loop still halves it if a pass does not fit). When
    not even one row fits the budget: ConfigError if ``strict``, else one row at a time
    (the estimate is conservative; the device may still manage it).
    """
    if configured is not None:
        micro = min(configured, batch_size)
        source = "configured"
    elif budget_bytes is None:
        micro = batch_size
    else:
        largest = model.largest_micro_batch(width=width, budget_bytes=budget_bytes,
                                            limit=batch_size)
        if largest == 0 and strict:
            raise ConfigError(
                f"one row of {width} tokens needs about "
                f"{model.step_bytes(1, width) / MIB:.0f} MiB to train, over the "
                f"{budget_bytes / MIB:.0f} MiB memory budget (shorten max_seq_len, turn on "
                "gradient_checkpointing or raise memory_budget_mb)")
        micro = balanced_micro_batch(batch_size, max(1, largest))
    return MicroBatchPlan(batch_size=batch_size, micro_batch_size=micro, width=width,
                          budget_bytes=budget_bytes,
                          estimate_bytes=model.step_bytes(micro, width), source=source)


def device_budget_bytes(device: str, *, held_bytes: int) -> int:
    """What training may use on ``device``: ``DEVICE_SHARE`` of the free memory plus
    ``held_bytes`` already allocated to the model (counted in the model's fixed bytes).

    CUDA: the driver's free memory; CPU: the kernel's MemAvailable (Linux), else the
    physical memory.
    """
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
    else:
        free = _available_ram()
    return int(free * DEVICE_SHARE) + held_bytes


def _available_ram() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True)
class MemoryLimit:
    """The budget the loop enforces before every forward pass (see the module docstring)."""

    model: MemoryModel
    budget_bytes: int

    def check(self, rows: int, width: int) -> None:
        """Raise ``torch.OutOfMemoryError`` if ``rows`` rows of ``width`` tokens do not fit."""
        need = self.model.step_bytes(rows, width)
        if need > self.budget_bytes:
            import torch

            raise torch.OutOfMemoryError(
                f"a pass of {rows} rows x {width} tokens needs about {need / MIB:.1f} MiB, "
                f"over the {self.budget_bytes / MIB:.1f} MiB budget")


def plan_for_model(model: Any, *, width: int, lora: LoraSettings, train: TrainConfig,
                   crma_width: int = 0) -> tuple[MicroBatchPlan, MemoryLimit | None]:
    """The micro-batch plan for a loaded (peft) model on ``train.device``, and the limit the
    loop enforces: ``train.memory_budget_mb`` when set; otherwise the device's free memory,
    enforced on a CPU only (a GPU raises its own out-of-memory errors, and the estimate is
    conservative)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    frozen = [p for p in base.parameters() if not p.requires_grad]
    weight_bytes = sum(p.numel() * p.element_size() for p in frozen)
    shape = ModelShape.of_config(base.config, parameters=sum(p.numel() for p in frozen))
    estimate = memory_model(shape, lora=lora, train=train, crma_width=crma_width,
                            weight_bytes=weight_bytes)
    if train.memory_budget_mb is not None:
        budget, source, enforce = train.memory_budget_mb * MIB, "budget", True
    else:
        budget = device_budget_bytes(train.device, held_bytes=weight_bytes)
        source, enforce = "device", not train.device.startswith("cuda")
    plan = plan_micro_batch(estimate, batch_size=train.batch_size, width=width,
                            budget_bytes=budget, configured=train.micro_batch_size,
                            source=source, strict=source == "budget")
    return plan, MemoryLimit(estimate, budget) if enforce else None


def plan_for_catalog(model: CatalogModel, *, width: int, lora: LoraSettings, train: TrainConfig,
                     crma_width: int = 0) -> MicroBatchPlan:
    """The micro-batch plan a worker would make for ``model`` (its catalog shape, no weights
    loaded) with ``train.memory_budget_mb``: what the API's estimate shows. Without a budget
    the worker plans against its device's free memory, which only it knows: the plan is then
    the whole batch in one pass (``budget_bytes`` None, source "device"). One row that does
    not fit the budget is planned as one row at a time (the worker refuses the job with the
    ConfigError ``plan_micro_batch`` gives when strict)."""
    estimate = memory_model(ModelShape.of_catalog(model), lora=lora, train=train,
                            crma_width=crma_width)
    budget = train.memory_budget_mb * MIB if train.memory_budget_mb is not None else None
    return plan_micro_batch(estimate, batch_size=train.batch_size, width=width,
                            budget_bytes=budget, configured=train.micro_batch_size,
                            source="budget" if budget is not None else "device", strict=False)
