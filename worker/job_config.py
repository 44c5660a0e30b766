"""A job's stored settings turned into crma_core's recipe settings.

Stored shapes (app/schemas/jobs.py): `hyperparameters` = {"n_epochs", "batch_size",
"learning_rate_multiplier"} with "auto" already resolved by the API; `adapter` = {"crma",
"n_streams", "rank", "lora_r", "lora_alpha", "quantization"}."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from app.settings import Settings

# Evaluate the validation file about this many times per run.
EVALS_PER_RUN = 10


@dataclass(frozen=True)
class RecipeSettings:
    crma: Any  # crma_core.CRMAConfig | None
    lora: Any  # crma_core.LoraSettings
    train: Any  # crma_core.TrainConfig


def recipe_settings(
    *, settings: Settings, hyperparameters: dict[str, Any], adapter: dict[str, Any],
    seed: int, token_budget: int | None, example_count: int, has_validation: bool,
) -> RecipeSettings:
    from crma_core.config import CRMAConfig
    from crma_core.settings import LoraSettings, TrainConfig

    epochs = int(hyperparameters.get("n_epochs") or 3)
    batch_size = int(hyperparameters.get("batch_size") or 1)
    multiplier = float(hyperparameters.get("learning_rate_multiplier") or 1.0)
    defaults = TrainConfig()
    device = settings.worker_device
    steps = epochs * max(1, math.ceil(max(example_count, 1) / batch_size))
    train = TrainConfig(
        epochs=epochs, batch_size=batch_size,
        lr_main=defaults.lr_main * multiplier, lr_mix=defaults.lr_mix * multiplier,
        lr_gate=defaults.lr_gate * multiplier, seed=int(seed or 0),
        eval_every=max(1, steps // EVALS_PER_RUN) if has_validation else None,
        checkpoint_every_steps=settings.checkpoint_every_steps,
        checkpoint_every_seconds=settings.checkpoint_every_s,
        token_budget=token_budget, device=device,
        dtype="bfloat16" if device.startswith("cuda") else "float32",
    )
    lora = LoraSettings(r=int(adapter.get("lora_r", 16)), alpha=int(adapter.get("lora_alpha", 32)),
                        quantization=adapter.get("quantization"))
    crma = None
    if adapter.get("crma", True):
        crma = CRMAConfig(n=int(adapter.get("n_streams", 4)), r=int(adapter.get("rank", 1)))
    return RecipeSettings(crma=crma, lora=lora, train=train)
