"""JobSettings: resolved once at creation, stored versioned, read back whatever version wrote
it, and turned into crma_core's configs by one function whose defaults are crma_core's."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.domain.job_settings import (
    AdapterSettings,
    ContinualSettings,
    Hyperparameters,
    JobSettings,
    continual_config,
    estimated_stage_tokens,
    load_job_settings,
    recipe_configs,
    resolve_job_settings,
)
from crma_core.config import CRMAConfig
from crma_core.settings import LoraSettings, TrainConfig


def configs(settings: JobSettings, **overrides):  # noqa: ANN202
    values = dict(seed=7, token_budget=None, example_count=100, has_validation=False,
                  device="cpu", checkpoint_every_steps=200, checkpoint_every_s=300.0)
    return recipe_configs(settings, **{**values, **overrides})


def test_auto_is_decided_at_creation_and_the_rest_defaults_to_crma_core() -> None:
    settings = resolve_job_settings(
        hyperparameters={"n_epochs": "auto", "batch_size": "auto",
                         "learning_rate_multiplier": "auto"},
        adapter=None, example_count=10)
    # No validation file: no evaluations; a checkpoint per epoch.
    assert settings.hyperparameters == Hyperparameters(n_epochs=10, batch_size=1,
                                                       learning_rate_multiplier=1.0, n_evals=0,
                                                       n_checkpoints=10)
    adapter = settings.adapter
    assert (adapter.n_streams, adapter.rank) == (CRMAConfig().n, CRMAConfig().r)
    assert (adapter.lora_r, adapter.lora_alpha) == (LoraSettings().r, LoraSettings().alpha)
    assert JobSettings().hyperparameters.batch_size == TrainConfig().batch_size


def test_stored_settings_round_trip_and_old_rows_load() -> None:
    settings = JobSettings(hyperparameters=Hyperparameters(n_epochs=2, batch_size=8),
                           adapter=AdapterSettings(crma=False, quantization="nf4"))
    assert settings.stored()["version"] == 2
    assert load_job_settings(settings.stored()) == settings
    version_1 = {"version": 1,
                 "hyperparameters": {"n_epochs": 2, "batch_size": 8,
                                     "learning_rate_multiplier": 1.0},
                 "adapter": {"crma": False, "n_streams": 4, "rank": 1, "lora_r": 16,
                             "lora_alpha": 32, "quantization": "nf4"}}
    assert load_job_settings(version_1) == settings
    with pytest.raises(ValidationError):
        load_job_settings({"version": 2, "hyperparameters": {"n_epochs": 1, "typo": 3}})


def test_one_translation_into_crma_core() -> None:
    settings = JobSettings(hyperparameters=Hyperparameters(n_epochs=2, batch_size=4,
                                                           learning_rate_multiplier=0.5),
                           adapter=AdapterSettings(n_streams=8, rank=2, lora_r=4, lora_alpha=8))
    built = configs(settings, has_validation=True, token_budget=1000)
    base = TrainConfig()
    assert (built.train.epochs, built.train.batch_size, built.train.seed) == (2, 4, 7)
    assert built.train.lr_main == base.lr_main * 0.5 and built.train.lr_mix == base.lr_mix * 0.5
    # Rows stored before n_evals existed evaluate 10 times, as the worker did.
    assert built.train.n_evals == 10 and built.train.eval_every is None
    assert built.train.token_budget == 1000 and built.train.dtype == "float32"
    assert built.crma == CRMAConfig(n=8, r=2)
    assert (built.lora.r, built.lora.alpha) == (4, 8)
    plain = configs(JobSettings(adapter=AdapterSettings(crma=False)), device="cuda:0")
    assert plain.crma is None and plain.train.dtype == "bfloat16"
    assert plain.train.eval_every is None and plain.train.n_evals is None


def test_the_multiplier_scales_every_rate_crma_s_included() -> None:
    settings = resolve_job_settings(
        hyperparameters={"learning_rate_multiplier": 10, "crma_learning_rate": 2e-6,
                         "crma_gate_learning_rate": "auto", "max_steps": 48,
                         "max_seq_len": 64},
        adapter=None, example_count=400)
    train = configs(settings).train
    base = TrainConfig()
    assert train.lr_main == pytest.approx(base.lr_main * 10)
    assert train.lr_rw == pytest.approx(2e-6 * 10)
    assert train.lr_mix == pytest.approx(base.lr_mix * 10)
    assert train.lr_gate == pytest.approx(base.lr_gate * 10)
    assert (train.max_steps, train.max_seq_len) == (48, 64)
    # Unset: crma_core's defaults, unscaled at multiplier 1.
    plain = configs(resolve_job_settings(hyperparameters=None, adapter=None,
                                         example_count=400)).train
    assert (plain.lr_rw, plain.lr_mix, plain.lr_gate) == (base.lr_rw, base.lr_mix, base.lr_gate)
    assert (plain.max_steps, plain.max_seq_len) == (None, base.max_seq_len)
    assert load_job_settings(settings.stored()) == settings
    # Rows stored before these fields existed load with crma_core's defaults.
    old = {"version": 2, "hyperparameters": {"n_epochs": 1, "batch_size": 2,
                                             "learning_rate_multiplier": 1.0}}
    assert load_job_settings(old).hyperparameters.crma_learning_rate == base.lr_rw
    assert load_job_settings(old).continual is None


def test_a_continual_stage_s_config_carries_the_run_s_budget_and_baseline() -> None:
    settings = resolve_job_settings(hyperparameters={"n_epochs": 1}, adapter=None,
                                    example_count=20,
                                    continual={"drift_budget_pct": 0.0, "baseline": True})
    assert settings.continual == ContinualSettings(drift_budget_pct=0.0, baseline=True)
    built = configs(settings, has_validation=True)
    config = continual_config(settings, built, mode="modular")
    assert (config.mode, config.drift_budget_pct, config.baseline) == ("modular", 0.0, True)
    assert config.train == built.train and config.lora == built.lora
    assert config.crma == built.crma
    # A stage stored without continual settings gets crma_core's defaults.
    default = continual_config(JobSettings(), configs(JobSettings()), mode="naive")
    assert (default.drift_budget_pct, default.baseline) == (0.5, False)


def test_the_estimate_doubles_with_a_baseline() -> None:
    # max_steps is applied by app/services/tokens.job_tokens (tests/app/test_trained_tokens.py).
    settings = JobSettings(hyperparameters=Hyperparameters(n_epochs=3, batch_size=1))
    assert estimated_stage_tokens(settings, tokens=3000) == (3000, 0)
    with_baseline = settings.model_copy(update={"continual": ContinualSettings(baseline=True)})
    assert estimated_stage_tokens(with_baseline, tokens=3000) == (3000, 3000)
