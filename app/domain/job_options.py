"""Where a job trains and what its fine-tuned model is called."""

from __future__ import annotations


def job_queue(*, free_tier_model: bool) -> str:
    """Free-tier models train on the `small` worker pool, everything else on `large`."""
    return "small" if free_tier_model else "large"


def fine_tuned_model_name(*, model: str, account_id: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's naming: ft:<base>:<org>[:<suffix>]:<job id>."""
    parts = ["ft", model, account_id] + ([suffix] if suffix else []) + [job_id]
    return ":".join(parts)
