"""The job state machine: one explicit transition table, shared by API and worker.

validating_files -> queued -> running -> succeeded | failed | cancelled (OpenAI's names).
`running -> queued` happens only through the reaper (expired lease) or a worker that
checkpointed and released its lease on shutdown; `running -> running` is a new attempt taking
over an expired lease (the claim bumps the fencing number). Terminal states never change.

A continual run has no state machine of its own: its status is `run_status` of its stages'
statuses, here and nowhere else."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class JobStatus(StrEnum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.VALIDATING_FILES: frozenset({JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED,
         JobStatus.CANCELLED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def can_transition(current: str, target: str) -> bool:
    return JobStatus(target) in TRANSITIONS[JobStatus(current)]


def is_terminal(status: str) -> bool:
    return JobStatus(status) in TERMINAL


PENDING = frozenset({JobStatus.VALIDATING_FILES, JobStatus.QUEUED})


def run_status(stage_statuses: Iterable[str]) -> JobStatus:
    """A continual run's status from its stages' (in stage order): failed if one failed,
    else cancelled if one was cancelled, succeeded when all did, queued while none has
    started, running otherwise. A run without stages is queued."""
    statuses = [JobStatus(s) for s in stage_statuses]
    if JobStatus.FAILED in statuses:
        return JobStatus.FAILED
    if JobStatus.CANCELLED in statuses:
        return JobStatus.CANCELLED
    if statuses and all(s == JobStatus.SUCCEEDED for s in statuses):
        return JobStatus.SUCCEEDED
    if all(s in PENDING for s in statuses):
        return JobStatus.QUEUED
    return JobStatus.RUNNING


class ErrorCode(StrEnum):
    """Machine-readable `error.code` of a failed job (docs/user-guide.md, "Fine-tuning jobs")."""

    INVALID_TRAINING_FILE = "invalid_training_file"
    QUOTA_EXCEEDED = "quota_exceeded"
    INSUFFICIENT_CREDIT = "insufficient_credit"
    BUDGET_EXCEEDED = "budget_exceeded"
    OUT_OF_MEMORY = "out_of_memory"
    WORKER_LOST = "worker_lost"
    MODEL_UNAVAILABLE = "model_unavailable"
    INTERNAL_ERROR = "internal_error"


# Failures that are our fault: the job costs nothing (docs/user-guide.md, "Pricing and the
# free tier").
PLATFORM_FAULT_CODES = frozenset(
    {ErrorCode.OUT_OF_MEMORY, ErrorCode.WORKER_LOST, ErrorCode.INTERNAL_ERROR,
     ErrorCode.MODEL_UNAVAILABLE}
)
