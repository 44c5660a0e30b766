"""LoraSettings and TrainConfig: the recipe's knobs, validated at construction (no torch)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from crma_core.errors import ConfigError


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
    """peft LoRA on every linear projection of the decoder (not the LM head).

    init: "default" (Kaiming A, zero B) or "pissa" (principal singular vectors; single-task
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
    tokens. LR: linear warm-up over ``warmup_steps`` then ``lr_schedule`` ("constant",
    "linear" or "cosine" decay to 0 at the last planned step). ``eval_every`` (steps) and
    the checkpoint intervals are off when None. ``token_budget`` caps trained tokens.
    """

    epochs: int = 3
    batch_size: int = 4
    lr_main: float = 2e-4
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

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.max_seq_len < 2:
            raise ConfigError("epochs and batch_size must be >= 1, max_seq_len >= 2")
        if min(self.lr_main, self.lr_mix, self.lr_gate) < 0 or self.weight_decay < 0:
            raise ConfigError("learning rates and weight decay must be >= 0")
        if self.clip not in ("zclip", "max_norm"):
            raise ConfigError(f"clip must be 'zclip' or 'max_norm', got {self.clip!r}")
        if self.clip == "max_norm" and self.max_grad_norm is None:
            raise ConfigError("clip='max_norm' needs max_grad_norm")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.lr_schedule not in ("constant", "linear", "cosine"):
            raise ConfigError(f"unknown lr_schedule {self.lr_schedule!r}")
        for name in ("eval_every", "checkpoint_every_steps", "max_steps", "token_budget",
                     "eval_batch_size", "loss_chunk_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1 or None")
        if self.checkpoint_every_seconds is not None and self.checkpoint_every_seconds <= 0:
            raise ConfigError("checkpoint_every_seconds must be > 0 or None")
        if self.warmup_steps < 0:
            raise ConfigError("warmup_steps must be >= 0")

    def planned_steps(self, num_rows: int) -> int:
        return planned_steps(num_rows, epochs=self.epochs, batch_size=self.batch_size,
                             max_steps=self.max_steps)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data)
