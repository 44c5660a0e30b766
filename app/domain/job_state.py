"""The job state machine: one explicit transition table, shared by API and worker.

validating_files -> queued -> running -> succeeded | failed | cancelled (OpenAI's names).
`running -> queued` happens only through the reaper (expired lease) or a worker that
checkpointed and released its lease on shutdown. Terminal states never change."""

from __future__ import annotations

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
        {JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def can_transition(current: str, target: str) -> bool:
    return JobStatus(target) in TRANSITIONS[JobStatus(current)]


def is_terminal(status: str) -> bool:
    return JobStatus(status) in TERMINAL


class ErrorCode(StrEnum):
    """Machine-readable `error.code` of a failed job (API.md)."""

    INVALID_TRAINING_FILE = "invalid_training_file"
    QUOTA_EXCEEDED = "quota_exceeded"
    INSUFFICIENT_CREDIT = "insufficient_credit"
    BUDGET_EXCEEDED = "budget_exceeded"
    OUT_OF_MEMORY = "out_of_memory"
    WORKER_LOST = "worker_lost"
    MODEL_UNAVAILABLE = "model_unavailable"
    INTERNAL_ERROR = "internal_error"


# Failures that are our fault: the job costs nothing (API.md, billing rules).
PLATFORM_FAULT_CODES = frozenset(
    {ErrorCode.OUT_OF_MEMORY, ErrorCode.WORKER_LOST, ErrorCode.INTERNAL_ERROR,
     ErrorCode.MODEL_UNAVAILABLE}
)
