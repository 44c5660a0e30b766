"""LoraSettings and TrainConfig: the recipe's knobs, validated at construction (no torch).

Each knob's default lives here and only here: the CLI (`crma train --help`), the worker and
the API read them from these dataclasses. Bounds that depend on the base model (context
length, LoRA rank, module names) are in ``crma_core.limits``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from crma_core.errors import ConfigError

LR_SCHEDULES = ("constant", "linear", "cosine")
CLIPS = ("zclip", "max_norm", "none")
DTYPES = ("float32", "bfloat16")
# The decoder's linear projections in Llama, Mistral and Gemma-2 (what "all-linear" means).
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _from_dict(cls, data: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
    return cls(**data)


def batches_per_epoch(num_rows: int, batch_size: int) -> int:
    return -(-num_rows // batch_size)


def planned_steps(num_rows: int, *, epochs: int, batch_size: int,
                  max_steps: int | None = None) -> int:
    """Optimizer steps of a run over ``num_rows`` rows: ``epochs`` passes of
    ``ceil(num_rows / batch_size)`` batches, capped at ``max_steps``. The one place that
    counts them (the loop, the worker's progress events and its evaluation interval)."""
    planned = epochs * batches_per_epoch(num_rows, batch_size)
    return min(planned, max_steps) if max_steps else planned


@dataclass(frozen=True)
class LoraSettings:
    """peft LoRA on the decoder's linear projections (not the LM head).

    target_modules: "all-linear" or a tuple of module names (``LINEAR_MODULES``); dropout
    applies to the LoRA branch's input. init: "default" (Kaiming A, zero B) or "pissa" (principal singular vectors; single-task
    only, the saved adapter is converted back to a plain LoRA on the original base).
    quantization: None or "nf4" (QLoRA through bitsandbytes; CUDA only).
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    init: str = "default"
    quantization: str | None = None
    target_modules: str | tuple[str, ...] = "all-linear"

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0:
            raise ConfigError("LoRA r must be >= 1 and alpha > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("LoRA dropout must be in [0, 1)")
        if self.init not in ("default", "pissa"):
            raise ConfigError(f"LoRA init must be 'default' or 'pissa', got {self.init!r}")
        if self.quantization not in (None, "nf4"):
            raise ConfigError(f"quantization must be None or 'nf4', got {self.quantization!r}")
        modules = self.target_modules
        if isinstance(modules, str):
            if modules != "all-linear":
                raise ConfigError("LoRA target_modules must be 'all-linear' or a list of "
                                  f"module names, got {modules!r}")
        elif not modules or not all(isinstance(m, str) and m for m in modules):
            raise ConfigError("LoRA target_modules must name at least one module")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if isinstance(self.target_modules, tuple):
            data["target_modules"] = list(self.target_modules)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoraSettings:
        data = dict(data)
        if isinstance(data.get("target_modules"), list):
            data["target_modules"] = tuple(data["target_modules"])
        return _from_dict(cls, data)


@dataclass(frozen=True)
class TrainConfig:
    """Single-task training settings.

    Steps are optimizer steps over batches of ``batch_size`` rows of at most ``max_seq_len``
    tokens (packed rows with ``packing``). ``batch_size`` is the effective batch: the rows go
    through the model ``micro_batch_size`` at a time (None: as many as fit
    ``memory_budget_mb``, or the device when that is None) and their gradients accumulate;
    the loss is the mean over every scored token of the whole batch, so the step is the
    same for any micro-batch size. LR: linear warm-up over ``warmup_steps`` (or
    ``warmup_ratio`` of the planned steps) then ``lr_schedule`` ("constant", "linear" or
    "cosine" decay to 0 at the last planned step). ``clip``: "zclip" (adaptive, capped at
    ``max_grad_norm``), "max_norm" (clip to ``max_grad_norm``) or "none".
    Learning rates per optimizer group: ``lr_main`` the LoRA A/B, ``lr_rw`` CRMA's
    read/write projections (far below lr_main: a CRMA that moves at the LoRA rate undoes
    what earlier continual domains' LoRAs co-adapted with; the default is the logged pilot's
    choice, docs/benchmarks.md), ``lr_mix`` its mixing logits, ``lr_gate`` its gate.
    ``train_on_inputs``: the loss covers prompt tokens too (chat: every turn;
    prompt/completion: the prompt). Evaluations: every ``eval_every`` steps, or ``n_evals``
    evenly spaced ones (the last at the end); with a validation file the final model is
    always scored on all of it. ``n_checkpoints`` evenly spaced checkpoints (the last at the
    end) come on top of the fault-tolerance intervals ``checkpoint_every_steps`` /
    ``checkpoint_every_seconds``. ``token_budget`` caps trained tokens.
    """

    epochs: int = 3
    batch_size: int = 4
    lr_main: float = 2e-4
    lr_rw: float = 5e-6
    lr_mix: float = 1e-3
    lr_gate: float = 1e-4
    weight_decay: float = 0.01
    max_seq_len: int = 1024
    packing: bool = False
    clip: str = "zclip"
    max_grad_norm: float | None = 1.0
    seed: int = 0
    eval_every: int | None = None
    eval_batch_size: int | None = None
    checkpoint_every_steps: int | None = None
    checkpoint_every_seconds: float | None = None
    max_steps: int | None = None
    token_budget: int | None = None
    gradient_checkpointing: bool = False
    device: str = "cpu"
    dtype: str = "float32"
    lr_schedule: str = "linear"
    warmup_steps: int = 0
    compile: bool = False
    loss_chunk_tokens: int | None = None
    micro_batch_size: int | None = None
    memory_budget_mb: int | None = None
    warmup_ratio: float = 0.0
    train_on_inputs: bool = False
    n_evals: int | None = None
    n_checkpoints: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.max_seq_len < 2:
            raise ConfigError("epochs and batch_size must be >= 1, max_seq_len >= 2")
        if min(self.lr_main, self.lr_rw, self.lr_mix, self.lr_gate) < 0 or self.weight_decay < 0:
            raise ConfigError("learning rates and weight decay must be >= 0")
        if self.clip not in CLIPS:
            raise ConfigError(f"clip must be one of {', '.join(CLIPS)}, got {self.clip!r}")
        if self.clip == "max_norm" and self.max_grad_norm is None:
            raise ConfigError("clip='max_norm' needs max_grad_norm")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError("max_grad_norm must be > 0 or None (clip='none' turns clipping off)")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                              f"got {self.lr_schedule!r}")
        for name in ("eval_every", "checkpoint_every_steps", "max_steps", "token_budget",
                     "eval_batch_size", "loss_chunk_tokens", "micro_batch_size",
                     "memory_budget_mb"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1 or None")
        if self.checkpoint_every_seconds is not None and self.checkpoint_every_seconds <= 0:
            raise ConfigError("checkpoint_every_seconds must be > 0 or None")
        if self.warmup_steps < 0:
            raise ConfigError("warmup_steps must be >= 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError("warmup_ratio must be in [0, 1)")
        if self.warmup_steps and self.warmup_ratio:
            raise ConfigError("set warmup_steps or warmup_ratio, not both")
        for name in ("n_evals", "n_checkpoints"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0 or None")
        if self.n_evals and self.eval_every:
            raise ConfigError("set eval_every or n_evals, not both")

    def planned_warmup_steps(self, total_steps: int) -> int:
        """Warm-up length in optimizer steps for a run of ``total_steps`` steps."""
        if self.warmup_ratio:
            return math.ceil(self.warmup_ratio * total_steps)
        return self.warmup_steps

    def planned_steps(self, num_rows: int) -> int:
        return planned_steps(num_rows, epochs=self.epochs, batch_size=self.batch_size,
                             max_steps=self.max_steps)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data)
