"""The events a training attempt records, built from what crma_core reports: each function
gives (dedupe key, message, data) for one kind; app/services/attempts.py writes them
(fenced by the lease). Metric names are OpenAI's (`train_loss`,
`train_mean_token_accuracy`, `valid_loss`, `valid_mean_token_accuracy`, `full_valid_loss`,
...); dedupe keys are per step, so a resumed attempt that replays steps adds nothing twice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MIB = 2**20


@dataclass(frozen=True)
class TrainingEvent:
    dedupe_key: str
    message: str
    data: dict[str, Any]
    type: str = "metrics"
    level: str = "info"


def step_event(metrics, *, total_steps: int | None) -> TrainingEvent:  # noqa: ANN001
    """A training step (crma_core.StepMetrics), plus our gradient-stability figures."""
    data: dict[str, Any] = {
        "step": metrics.step, "total_steps": total_steps, "train_loss": metrics.loss,
        "train_mean_token_accuracy": metrics.mean_token_accuracy,
        "learning_rate": metrics.lr, "grad_norm": metrics.grad_norm, "clipped": metrics.clipped,
        "tokens_per_s": round(metrics.tokens_per_s, 2), "trained_tokens": metrics.trained_tokens,
        "epoch": metrics.epoch, "micro_batch_size": metrics.micro_batch_size,
        "accumulation_steps": metrics.accumulation_steps,
    }
    crma = metrics.crma or {}
    for key, name in (("spectral_norm", "crma_spectral_norm_max"),
                      ("marginal_error", "crma_marginal_error_max")):
        values = [float(v) for v in crma.get(key) or []]
        if values:
            data[name] = max(values)
    alphas = [float(v) for v in crma.get("alpha") or []]
    if alphas:
        data["crma_alpha_mean"] = sum(alphas) / len(alphas)
        data["crma_alpha_max"] = max(alphas)
    total = f"/{total_steps}" if total_steps else ""
    accuracy = metrics.mean_token_accuracy
    said = f", token accuracy={accuracy:.4f}" if accuracy is not None else ""
    return TrainingEvent(f"metrics:step:{metrics.step}",
                         f"Step {metrics.step}{total}: training loss={metrics.loss:.4f}{said}",
                         data)


def eval_event(metrics) -> TrainingEvent:  # noqa: ANN001 - crma_core.EvalMetrics
    """An evaluation of the whole validation file; `is_best`: the lowest loss so far."""
    accuracy = metrics.val_mean_token_accuracy
    said = f", token accuracy={accuracy:.4f}" if accuracy is not None else ""
    best = " (best so far)" if metrics.is_best else ""
    return TrainingEvent(
        f"eval:step:{metrics.step}",
        f"Step {metrics.step}: validation loss={metrics.val_loss:.4f}{said}{best}",
        {"step": metrics.step, "valid_loss": metrics.val_loss,
         "valid_mean_token_accuracy": accuracy, "is_best": metrics.is_best})


def memory_plan_event(plan: dict[str, Any], *, attempt: int) -> TrainingEvent:
    """How each step runs (crma_core MicroBatchPlan.to_dict()): the micro-batch chosen to
    fit the memory budget, and the gradient-accumulation passes per step."""
    budget = plan.get("budget_bytes")
    where = {"budget": "the worker's memory budget", "device": "the device's free memory",
             "configured": "as configured"}.get(plan.get("source"), "")
    limit = f" (budget {budget / MIB:,.0f} MiB: {where})" if budget else ""
    return TrainingEvent(
        f"memory_plan:{attempt}",
        f"Each step of {plan['batch_size']} rows runs as {plan['accumulation_steps']} "
        f"pass(es) of at most {plan['micro_batch_size']} rows with gradients accumulated; "
        f"about {plan['estimate_bytes'] / MIB:,.0f} MiB per pass{limit}",
        plan, type="message")


def memory_event(event, *, attempt: int) -> TrainingEvent:  # noqa: ANN001 - MemoryEvent
    """A pass did not fit in memory: the step is retried with half the micro-batch."""
    return TrainingEvent(
        f"memory:{attempt}:{event.step}:{event.micro_batch_size}",
        f"Out of memory at step {event.step} with {event.previous} rows per pass; the step "
        f"is retried with {event.micro_batch_size} ({event.message})",
        event.to_dict(), type="message", level="warn")


def final_metrics_event(metrics: dict[str, Any]) -> TrainingEvent | None:
    """The finished run's figures (crma_core TrainResult.summary()); None if it trained
    nothing."""
    if metrics.get("train_loss") is None:
        return None
    parts = [f"{label}={metrics[key]:.4f}" for key, label in (
        ("train_loss", "training loss"), ("full_valid_loss", "full validation loss"),
        ("full_valid_mean_token_accuracy", "validation token accuracy"),
        ("full_valid_loss_lora_only", "validation loss of the LoRA alone"))
        if metrics.get(key) is not None]
    if metrics.get("best_step") is not None and metrics.get("best_valid_loss") is not None:
        parts.append(f"best validation loss {metrics['best_valid_loss']:.4f} at step "
                     f"{metrics['best_step']} (its weights: best/ in the artifacts)")
    return TrainingEvent("final_metrics", f"Training finished: {', '.join(parts)}", metrics)
