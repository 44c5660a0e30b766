"""Where a job trains and what its fine-tuned model is called."""

from __future__ import annotations


def job_queue(*, free_tier_model: bool) -> str:
    """Free-tier models train on the `small` worker pool, everything else on `large`."""
    return "small" if free_tier_model else "large"


def fine_tuned_model_name(*, model: str, account_id: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's naming: ft:<base>:<org>[:<suffix>]:<job id>."""
    parts = ["ft", model, account_id] + ([suffix] if suffix else []) + [job_id]
    return ":".join(parts)


CHECKPOINT_MARK = "ckpt-step-"


def checkpoint_model_name(fine_tuned_model: str, step: int) -> str:
    """OpenAI's checkpoint naming: <fine_tuned_model>:ckpt-step-<step>."""
    return f"{fine_tuned_model}:{CHECKPOINT_MARK}{step}"


def parse_fine_tuned_model(name: str) -> tuple[str, int | None] | None:
    """(job id, checkpoint step or None) named by a `fine_tuned_model` or a
    `fine_tuned_model_checkpoint`; None when `name` has neither shape. The caller still
    compares the whole name with the job's (its base model, account and suffix)."""
    parts = name.split(":")
    if len(parts) < 4 or parts[0] != "ft":
        return None
    step = None
    if parts[-1].startswith(CHECKPOINT_MARK):
        digits = parts[-1][len(CHECKPOINT_MARK):]
        if not digits.isdigit() or len(digits) > 9:
            return None
        step, parts = int(digits), parts[:-1]
    if len(parts) < 4:
        return None
    return parts[-1], step


def run_model_name(*, model: str, account_id: str, run_id: str) -> str:
    """A continual run's model, in the same shape: ft:<base>:<org>:<run id> (what chat and
    text completions take; its domains are chosen per request)."""
    return ":".join(["ft", model, account_id, run_id])
