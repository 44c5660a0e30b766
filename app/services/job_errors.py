"""Exceptions raised while running a job, mapped to the job's `error` (the codes of
docs/user-guide.md, "Fine-tuning jobs").

The message shown to the user never carries a stack trace; the runner logs the trace."""

from __future__ import annotations

import sys

from app.domain.job_state import ErrorCode
from app.services.job_inputs import ModelUnavailable

INTERNAL_MESSAGE = "An internal error occurred while training this job; it will not be charged."
OOM_MESSAGE = ("Training ran out of memory on the worker; try a smaller batch size or a "
               "shorter maximum sequence length. The job will not be charged.")


def _is_oom(exc: BaseException) -> bool:
    # torch is only loaded where a job trained (the worker); an exception from it implies it.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def classify(exc: BaseException) -> tuple[ErrorCode, str]:
    """(error code, user-facing message) for an exception raised by a job."""
    from crma_core.errors import DataError, StaleCheckpointError

    if _is_oom(exc):
        return ErrorCode.OUT_OF_MEMORY, OOM_MESSAGE
    if isinstance(exc, DataError):
        # crma_core's data errors name the file and line and never include server paths.
        return ErrorCode.INVALID_TRAINING_FILE, f"The training data cannot be used: {exc}"[:1000]
    if isinstance(exc, ModelUnavailable):
        return ErrorCode.MODEL_UNAVAILABLE, str(exc)
    if isinstance(exc, StaleCheckpointError):
        # Our update broke the resume: the platform's fault, so free, but say why.
        return ErrorCode.INTERNAL_ERROR, (f"The job could not be resumed: {exc}. It will not "
                                          "be charged.")
    return ErrorCode.INTERNAL_ERROR, INTERNAL_MESSAGE
