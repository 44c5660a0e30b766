"""Bounds on the training knobs for each catalog model (no torch).

What the API serves at GET /v1/models/{id} and checks a job's settings against before it
queues: ``model_limits(model).to_dict()`` and ``limit_issues(model, train=, lora=)``.
TrainConfig and LoraSettings already refuse values that make no sense for any model; these
bounds add what depends on the model (its context length, its width for the LoRA rank,
its module names, QLoRA) and the service's own caps (epochs, batch, evaluations).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crma_core.catalog import CatalogModel
from crma_core.settings import CLIPS, LINEAR_MODULES, LR_SCHEDULES, LoraSettings, TrainConfig

# The widest LoRA rank offered on any model; narrower models get a quarter of their width.
MAX_LORA_R = 256


@dataclass(frozen=True)
class Bound:
    """An inclusive range."""

    min: float
    max: float

    def holds(self, value: float) -> bool:
        return self.min <= value <= self.max

    def to_dict(self) -> dict[str, float]:
        return {"min": self.min, "max": self.max}


@dataclass(frozen=True)
class LimitIssue:
    """``field`` ("train.<TrainConfig field>" or "lora.<LoraSettings field>") is out of bounds."""

    field: str
    message: str


@dataclass(frozen=True)
class ModelLimits:
    """Per-model bounds, keyed by TrainConfig / LoraSettings field names."""

    model_id: str
    train: dict[str, Bound]
    lora: dict[str, Bound]
    lr_schedules: tuple[str, ...] = LR_SCHEDULES
    clips: tuple[str, ...] = CLIPS
    target_modules: tuple[str, ...] = LINEAR_MODULES
    quantization: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_id,
            "train": {k: b.to_dict() for k, b in self.train.items()},
            "lora": {k: b.to_dict() for k, b in self.lora.items()},
            "lr_schedules": list(self.lr_schedules), "clips": list(self.clips),
            "target_modules": ["all-linear", *self.target_modules],
            "quantization": list(self.quantization), "defaults": self.defaults,
        }


def model_limits(model: CatalogModel) -> ModelLimits:
    """The bounds for ``model`` (see the module docstring)."""
    train_defaults, lora_defaults = TrainConfig(), LoraSettings()
    return ModelLimits(
        model_id=model.id,
        train={
            "epochs": Bound(1, 50),
            "batch_size": Bound(1, 256),
            "micro_batch_size": Bound(1, 256),
            "max_seq_len": Bound(32, model.context_length),
            "lr_main": Bound(1e-7, 1e-2),
            "warmup_steps": Bound(0, 10_000),
            "warmup_ratio": Bound(0.0, 0.5),
            "weight_decay": Bound(0.0, 1.0),
            "max_grad_norm": Bound(0.01, 100.0),
            "n_evals": Bound(0, 100),
            "n_checkpoints": Bound(0, 20),
        },
        lora={
            "r": Bound(1, min(MAX_LORA_R, model.hidden_size // 4)),
            "alpha": Bound(1, 1024),
            "dropout": Bound(0.0, 0.5),
        },
        quantization=("nf4",) if model.qlora else (),
        defaults={
            "train": {k: getattr(train_defaults, k) for k in (
                "epochs", "batch_size", "micro_batch_size", "max_seq_len", "lr_main",
                "lr_schedule", "warmup_steps", "warmup_ratio", "weight_decay", "clip",
                "max_grad_norm", "train_on_inputs", "packing", "n_evals", "n_checkpoints")},
            "lora": {k: getattr(lora_defaults, k) for k in ("r", "alpha", "dropout",
                                                            "target_modules")},
        },
    )


def limit_issues(model: CatalogModel, *, train: TrainConfig,
                 lora: LoraSettings) -> list[LimitIssue]:
    """Every setting outside ``model``'s bounds (empty when all are within)."""
    limits = model_limits(model)
    issues = []
    for prefix, settings, bounds in (("train", train, limits.train), ("lora", lora, limits.lora)):
        for name, bound in bounds.items():
            value = getattr(settings, name)
            if value is not None and not bound.holds(value):
                issues.append(LimitIssue(f"{prefix}.{name}",
                                         f"must be between {bound.min} and {bound.max} for "
                                         f"{model.id}, got {value}"))
    if isinstance(lora.target_modules, tuple):
        unknown = [m for m in lora.target_modules if m not in limits.target_modules]
        if unknown:
            issues.append(LimitIssue("lora.target_modules",
                                     f"{', '.join(unknown)} not in {model.id}'s decoder; "
                                     f"choose from {', '.join(limits.target_modules)} "
                                     "or 'all-linear'"))
    if lora.quantization is not None and lora.quantization not in limits.quantization:
        issues.append(LimitIssue("lora.quantization",
                                 f"{lora.quantization} is not offered for {model.id}"))
    if train.micro_batch_size is not None and train.micro_batch_size > train.batch_size:
        issues.append(LimitIssue("train.micro_batch_size",
                                 f"must not exceed batch_size ({train.batch_size}), got "
                                 f"{train.micro_batch_size}"))
    return issues
