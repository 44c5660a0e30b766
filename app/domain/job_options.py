"""Resolving a request's hyperparameters and adapter settings into the concrete values stored
on the job (the worker never sees "auto").

Auto rules: epochs follow app.domain.hyperparameters (OpenAI's rule); the batch size grows
with the file (about 0.2% of the examples, 1..32) like OpenAI's; the learning-rate multiplier
is 1.0, i.e. the recipe's base rates."""

from __future__ import annotations

from typing import Any

from app.domain.hyperparameters import resolve_epochs

AUTO = "auto"
MAX_AUTO_BATCH = 32
DEFAULT_ADAPTER: dict[str, Any] = {
    "crma": True, "n_streams": 4, "rank": 1, "lora_r": 16, "lora_alpha": 32,
    "quantization": None,
}


def auto_batch_size(example_count: int) -> int:
    return max(1, min(MAX_AUTO_BATCH, example_count // 500))


def resolve_hyperparameters(requested: dict[str, Any] | None, *, example_count: int) -> dict[str, Any]:
    requested = requested or {}
    batch = requested.get("batch_size", AUTO)
    lr = requested.get("learning_rate_multiplier", AUTO)
    return {
        "n_epochs": resolve_epochs(requested.get("n_epochs", AUTO), example_count=example_count),
        "batch_size": auto_batch_size(example_count) if batch == AUTO else int(batch),
        "learning_rate_multiplier": 1.0 if lr == AUTO else float(lr),
    }


def resolve_adapter(requested: dict[str, Any] | None) -> dict[str, Any]:
    return {**DEFAULT_ADAPTER, **(requested or {})}


def job_queue(*, free_tier_model: bool) -> str:
    """Free-tier models train on the `small` worker pool, everything else on `large`."""
    return "small" if free_tier_model else "large"


def fine_tuned_model_name(*, model: str, account_id: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's naming: ft:<base>:<org>[:<suffix>]:<job id>."""
    parts = ["ft", model, account_id] + ([suffix] if suffix else []) + [job_id]
    return ":".join(parts)
