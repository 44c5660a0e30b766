"""A job's settings: one typed, versioned object, built once at creation from the request,
the training file and crma_core's defaults, stored as JSON on the job (`jobs.settings`), and
turned into crma_core's configs by `recipe_configs` (the worker hands those to the recipe).

Every default lives in crma_core (`TrainConfig`, `LoraSettings`, `CRMAConfig`); the fields
below read theirs. The API's bounds on what a caller may ask for live in the request schemas
(app/schemas/jobs.py); crma_core validates its configs again when they are built.

Stored versions: 1 is the two dicts jobs held before this object existed (`{"version": 1,
"hyperparameters": {...}, "adapter": {...}}`, written by migration 0004); 2 is
`JobSettings.model_dump()`. A field added later with a default needs no new version: rows
written before it load with the default. docs/architecture.md, "Adding a hyperparameter",
is the recipe for a new knob."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.domain.hyperparameters import (
    DEFAULT_N_EVALS,
    auto_batch_size,
    auto_epochs,
    auto_n_checkpoints,
    auto_n_evals,
)
from crma_core.config import CRMAConfig
from crma_core.continual_config import DEFAULT_DRIFT_BUDGET_PCT, ContinualConfig
from crma_core.settings import LoraSettings, TrainConfig, planned_steps

VERSION = 2
AUTO = "auto"
LrScheduler = Literal["linear", "cosine", "constant"]  # crma_core.settings.LR_SCHEDULES

_TRAIN, _LORA, _CRMA = TrainConfig(), LoraSettings(), CRMAConfig()


class _Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Hyperparameters(_Settings):
    """The training knobs, resolved ("auto" is decided at creation)."""

    n_epochs: int = _TRAIN.epochs
    batch_size: int = _TRAIN.batch_size
    learning_rate_multiplier: float = 1.0
    # CRMA's own base rates (read/write projections, mixing logits, gate), each scaled by
    # learning_rate_multiplier like the LoRA's.
    crma_learning_rate: float = _TRAIN.lr_rw
    crma_mixing_learning_rate: float = _TRAIN.lr_mix
    crma_gate_learning_rate: float = _TRAIN.lr_gate
    max_steps: int | None = _TRAIN.max_steps
    max_seq_len: int = _TRAIN.max_seq_len
    # The training recipe (docs/user-guide.md, "Hyperparameters").
    lr_scheduler_type: LrScheduler = _TRAIN.lr_schedule  # type: ignore[assignment]
    warmup_ratio: float = _TRAIN.warmup_ratio
    weight_decay: float = _TRAIN.weight_decay
    # The cap of ZClip's adaptive clipping; 0 turns clipping off.
    max_grad_norm: float = _TRAIN.max_grad_norm or 0.0
    train_on_inputs: bool = _TRAIN.train_on_inputs
    packing: bool = _TRAIN.packing
    # None (rows stored before these fields): DEFAULT_N_EVALS evaluations with a validation
    # file, and only the worker's fault-tolerance checkpoints.
    n_evals: int | None = _TRAIN.n_evals
    n_checkpoints: int | None = _TRAIN.n_checkpoints


class AdapterSettings(_Settings):
    """LoRA on every linear projection, and CRMA next to it unless `crma` is false."""

    crma: bool = True
    n_streams: int = _CRMA.n
    rank: int = _CRMA.r
    lora_r: int = _LORA.r
    lora_alpha: int = _LORA.alpha
    lora_dropout: float = _LORA.dropout
    # "all-linear" or the projection names (crma_core.settings.LINEAR_MODULES).
    lora_trainable_modules: str | tuple[str, ...] = _LORA.target_modules
    quantization: Literal["nf4"] | None = _LORA.quantization


class ContinualSettings(_Settings):
    """A continual-run stage's run-level settings (crma_core's ContinualConfig defaults)."""

    drift_budget_pct: float = DEFAULT_DRIFT_BUDGET_PCT
    baseline: bool = False


class StartingAdapter(_Settings):
    """Where a continued job's adapter starts: the final adapter of a succeeded job
    (`checkpoint_step` None) or one of a job's checkpoints. `name` is the
    `fine_tuned_model` / `fine_tuned_model_checkpoint` the request gave as its model."""

    name: str
    job_id: str
    checkpoint_step: int | None = None


class JobSettings(_Settings):
    version: Literal[2] = VERSION
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    adapter: AdapterSettings = Field(default_factory=AdapterSettings)
    continual: ContinualSettings | None = None  # continual-run stages only
    # None: the adapter starts fresh (LoRA B = 0, CRMA at identity).
    start_from: StartingAdapter | None = None

    def stored(self) -> dict[str, Any]:
        """The JSON written to `jobs.settings`."""
        return self.model_dump(mode="json")


DEFAULT_ADAPTER = AdapterSettings()
DEFAULT_HYPERPARAMETERS = Hyperparameters()


# Request fields with no "auto" rule: "auto" or null means crma_core's default.
_DEFAULTED = ("crma_learning_rate", "crma_mixing_learning_rate", "crma_gate_learning_rate",
              "max_steps", "max_seq_len", "lr_scheduler_type", "warmup_ratio", "weight_decay",
              "max_grad_norm", "train_on_inputs", "packing")


def _given(requested: Mapping[str, Any], name: str) -> bool:
    return requested.get(name) not in (AUTO, None)


def resolve_job_settings(
    *, hyperparameters: Mapping[str, Any] | None, adapter: Mapping[str, Any] | None,
    example_count: int, continual: Mapping[str, Any] | None = None,
    start_from: StartingAdapter | None = None, has_validation: bool = False,
) -> JobSettings:
    """The settings of a new job: the request's values (already validated by the request
    schema), "auto" decided for a training file of `example_count` examples (and whether
    the job has a validation file), the rest from crma_core's defaults. `continual`
    (drift_budget_pct, baseline) for a continual stage."""
    requested = dict(hyperparameters or {})
    epochs = requested["n_epochs"] if _given(requested, "n_epochs") else auto_epochs(example_count)
    resolved = Hyperparameters(
        n_epochs=epochs,
        batch_size=requested["batch_size"] if _given(requested, "batch_size")
        else auto_batch_size(example_count),
        learning_rate_multiplier=requested["learning_rate_multiplier"]
        if _given(requested, "learning_rate_multiplier") else 1.0,
        n_evals=requested["n_evals"] if _given(requested, "n_evals")
        else auto_n_evals(has_validation=has_validation),
        # A continual stage checkpoints only for fault tolerance (crma_core.continual).
        n_checkpoints=requested["n_checkpoints"] if _given(requested, "n_checkpoints")
        else auto_n_checkpoints(epochs) if continual is None else None,
        **{k: requested[k] for k in _DEFAULTED if _given(requested, k)},
    )
    return JobSettings(hyperparameters=resolved,
                       adapter=AdapterSettings(**dict(adapter or {})),
                       continual=None if continual is None else ContinualSettings(**continual),
                       start_from=start_from)


def load_job_settings(stored: Mapping[str, Any] | None) -> JobSettings:
    """A job's settings from its stored JSON, whatever version wrote it."""
    data = dict(stored or {})
    version = data.pop("version", 1)
    if version == 1:
        return JobSettings(hyperparameters=Hyperparameters(**(data.get("hyperparameters") or {})),
                           adapter=AdapterSettings(**(data.get("adapter") or {})))
    return JobSettings.model_validate({"version": version, **data})


def estimated_stage_tokens(settings: JobSettings, *, tokens: int) -> tuple[int, int]:
    """(the job's own, the baseline LoRA's) estimated trained tokens, from `tokens`, the
    job's own (app/services/tokens.job_tokens: epochs, max_seq_len and max_steps applied): a
    continual stage with `baseline` trains the same rows a second time for the baseline
    LoRA."""
    baseline = settings.continual is not None and settings.continual.baseline
    return tokens, tokens if baseline else 0


@dataclass(frozen=True)
class RecipeConfigs:
    """crma_core's configs for one job: `crma` is None for plain LoRA."""

    crma: CRMAConfig | None
    lora: LoraSettings
    train: TrainConfig


def recipe_configs(
    settings: JobSettings, *, seed: int, token_budget: int | None, example_count: int,
    has_validation: bool, device: str, checkpoint_every_steps: int | None,
    checkpoint_every_s: float | None, memory_budget_mb: int | None = None,
) -> RecipeConfigs:
    """The one translation of a job's settings (plus what the worker decides: device,
    checkpoint cadence, memory budget) into crma_core's CRMAConfig, LoraSettings and
    TrainConfig.

    A continual stage's loop (crma_core.continual) plans evaluations by `eval_every` and
    warm-up by `warmup_steps`: its n_evals and warmup_ratio become those, over the steps
    planned for `example_count` rows."""
    hp, adapter = settings.hyperparameters, settings.adapter
    multiplier = hp.learning_rate_multiplier
    n_evals = (DEFAULT_N_EVALS if hp.n_evals is None else hp.n_evals) if has_validation else 0
    schedule: dict[str, Any] = {"n_evals": n_evals or None, "warmup_ratio": hp.warmup_ratio}
    if settings.continual is not None:
        steps = planned_steps(max(example_count, 1), epochs=hp.n_epochs,
                              batch_size=hp.batch_size, max_steps=hp.max_steps)
        schedule = {"eval_every": max(1, steps // n_evals) if n_evals else None,
                    "warmup_steps": math.ceil(hp.warmup_ratio * steps)}
    train = TrainConfig(
        epochs=hp.n_epochs, batch_size=hp.batch_size, max_steps=hp.max_steps,
        max_seq_len=hp.max_seq_len, lr_main=_TRAIN.lr_main * multiplier,
        lr_rw=hp.crma_learning_rate * multiplier,
        lr_mix=hp.crma_mixing_learning_rate * multiplier,
        lr_gate=hp.crma_gate_learning_rate * multiplier,
        lr_schedule=hp.lr_scheduler_type, weight_decay=hp.weight_decay,
        clip=_TRAIN.clip if hp.max_grad_norm > 0 else "none",
        max_grad_norm=hp.max_grad_norm if hp.max_grad_norm > 0 else None,
        train_on_inputs=hp.train_on_inputs, packing=hp.packing,
        n_checkpoints=hp.n_checkpoints or None, memory_budget_mb=memory_budget_mb,
        seed=int(seed), checkpoint_every_steps=checkpoint_every_steps,
        checkpoint_every_seconds=checkpoint_every_s, token_budget=token_budget, device=device,
        dtype="bfloat16" if device.startswith("cuda") else "float32", **schedule,
    )
    lora = LoraSettings(r=adapter.lora_r, alpha=adapter.lora_alpha, dropout=adapter.lora_dropout,
                        target_modules=adapter.lora_trainable_modules,
                        quantization=adapter.quantization)
    crma = CRMAConfig(n=adapter.n_streams, r=adapter.rank) if adapter.crma else None
    return RecipeConfigs(crma=crma, lora=lora, train=train)


def continual_config(settings: JobSettings, configs: RecipeConfigs, *,
                     mode: str) -> ContinualConfig:
    """crma_core's ContinualConfig for a stage of a run in `mode`, from the stage's settings
    and its `recipe_configs` (what the worker passes to run_stage)."""
    run = settings.continual or ContinualSettings()
    return ContinualConfig(mode=mode, lora=configs.lora, crma=configs.crma or CRMAConfig(),
                           train=configs.train, score_base=True,
                           drift_budget_pct=run.drift_budget_pct, baseline=run.baseline)


def planned_width(settings: JobSettings, *, token_lengths: Mapping[str, Any] | None) -> int:
    """Tokens per row the worker plans its micro-batch for: max_seq_len with packing (rows
    are filled to it); otherwise the training file's longest example cut to max_seq_len
    when its lengths were counted for the model at upload, else max_seq_len (an upper
    bound)."""
    max_seq_len = settings.hyperparameters.max_seq_len
    if settings.hyperparameters.packing or not token_lengths or not token_lengths.get("lengths"):
        return max_seq_len
    return min(max_seq_len, max(int(length) for length, _ in token_lengths["lengths"]))


def micro_batch_plan(settings: JobSettings, model: Any, *, example_count: int,
                     has_validation: bool, device: str, memory_budget_mb: int | None,
                     token_lengths: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """How each optimizer step of a job would run on a worker with `memory_budget_mb` (the
    setting worker_memory_budget_mb; None: the worker's free device memory, which only it
    knows): crma_core's plan from `model`'s catalog shape (crma_core.memory.plan_for_catalog),
    as the estimate shows it."""
    from crma_core.memory import MIB, plan_for_catalog

    configs = recipe_configs(settings, seed=0, token_budget=None, example_count=example_count,
                             has_validation=has_validation, device=device,
                             checkpoint_every_steps=None, checkpoint_every_s=None,
                             memory_budget_mb=memory_budget_mb)
    crma = configs.crma
    plan = plan_for_catalog(model, width=planned_width(settings, token_lengths=token_lengths),
                            lora=configs.lora, train=configs.train,
                            crma_width=crma.n * crma.r if crma else 0)
    return {"batch_size": plan.batch_size, "micro_batch_size": plan.micro_batch_size,
            "accumulation_steps": plan.accumulation_steps, "width": plan.width,
            "memory_budget_mb": memory_budget_mb,
            "estimated_mb_per_pass": round(plan.estimate_bytes / MIB, 1),
            "fits": plan.budget_bytes is None or plan.estimate_bytes <= plan.budget_bytes,
            "source": plan.source}
