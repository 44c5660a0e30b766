"""The per-model bounds on a job's settings, under the API's names.

crma_core.limits holds the bounds (keyed by TrainConfig / LoraSettings fields) and checks a
model's configs against them; this module names them as a request does
(`hyperparameters.n_epochs`, `adapter.lora_r`, ...): `public_limits` for GET /v1/models,
`limit_problems` for the 400 a job outside them gets, `widest` for the request schema's
model-independent bounds (the widest any catalog model allows)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crma_core.catalog import CATALOG, CatalogModel
from crma_core.limits import model_limits
from crma_core.settings import LINEAR_MODULES, LR_SCHEDULES, LoraSettings, TrainConfig

_LR_MAIN = TrainConfig().lr_main  # learning_rate_multiplier scales it


@dataclass(frozen=True)
class Knob:
    """A crma_core field (`section`.`name`) as the request names it; the request's value is
    crma_core's divided by `scale`."""

    section: str  # "train" or "lora"
    name: str
    param: str
    scale: float = 1.0


KNOBS = (
    Knob("train", "epochs", "hyperparameters.n_epochs"),
    Knob("train", "batch_size", "hyperparameters.batch_size"),
    Knob("train", "lr_main", "hyperparameters.learning_rate_multiplier", _LR_MAIN),
    Knob("train", "max_seq_len", "hyperparameters.max_seq_len"),
    Knob("train", "warmup_ratio", "hyperparameters.warmup_ratio"),
    Knob("train", "weight_decay", "hyperparameters.weight_decay"),
    Knob("train", "max_grad_norm", "hyperparameters.max_grad_norm"),
    Knob("train", "n_evals", "hyperparameters.n_evals"),
    Knob("train", "n_checkpoints", "hyperparameters.n_checkpoints"),
    Knob("lora", "r", "adapter.lora_r"),
    Knob("lora", "alpha", "adapter.lora_alpha"),
    Knob("lora", "dropout", "adapter.lora_dropout"),
    Knob("lora", "target_modules", "adapter.lora_trainable_modules"),
    Knob("lora", "quantization", "adapter.quantization"),
)
_BY_FIELD = {f"{k.section}.{k.name}": k for k in KNOBS}


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(f"{value:.6g}")


def public_limits(model: CatalogModel) -> dict[str, Any]:
    """`{"hyperparameters": {name: {"min", "max"}}, "adapter": {...}, "lr_scheduler_types",
    "lora_trainable_modules", "quantization"}` for `model`, in the request's names and units."""
    limits = model_limits(model)
    out: dict[str, Any] = {"hyperparameters": {}, "adapter": {}}
    for knob in KNOBS:
        bound = getattr(limits, knob.section).get(knob.name)
        if bound is not None:
            group, name = knob.param.split(".")
            out[group][name] = {"min": _number(bound.min / knob.scale),
                                "max": _number(bound.max / knob.scale)}
    out["lr_scheduler_types"] = list(limits.lr_schedules)
    out["lora_trainable_modules"] = ["all-linear", *limits.target_modules]
    out["quantization"] = list(limits.quantization)
    return out


def limit_problems(model: CatalogModel, *, train: TrainConfig, lora: LoraSettings,
                   values: dict[str, Any]) -> list[tuple[str, str]]:
    """(param, message) for every setting outside `model`'s bounds; `values` holds the
    request-side value of each param (for the message)."""
    from crma_core.limits import limit_issues

    limits = model_limits(model)
    problems = []
    for issue in limit_issues(model, train=train, lora=lora):
        knob = _BY_FIELD.get(issue.field)
        if knob is None:  # a field the API does not expose (the worker sets it)
            continue
        bound = getattr(limits, knob.section).get(knob.name)
        value = values.get(knob.param)
        if bound is not None:
            message = (f"{knob.param} must be between {_number(bound.min / knob.scale)} and "
                       f"{_number(bound.max / knob.scale)} for {model.id}, got {value}")
        else:
            message = f"{knob.param}: {issue.message}"
        problems.append((knob.param, message))
    return problems


def widest(section: str, name: str) -> tuple[float, float]:
    """The widest (min, max) of a crma_core field over the catalog's models."""
    bounds = [getattr(model_limits(m), section)[name] for m in CATALOG.values()]
    return min(b.min for b in bounds), max(b.max for b in bounds)


LR_SCHEDULER_TYPES = LR_SCHEDULES
TRAINABLE_MODULES = LINEAR_MODULES
