"""How a job's exceptions become its `error` (the codes of docs/user-guide.md; never a
stack trace)."""

from __future__ import annotations

import torch

from app.domain.job_state import ErrorCode
from crma_core.errors import DataError, NoTrainableTokensError
from app.services.job_errors import INTERNAL_MESSAGE, classify
from app.services.job_inputs import ModelUnavailable


def test_out_of_memory_in_its_forms() -> None:
    for exc in (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                MemoryError(), RuntimeError("[enforce fail] DefaultCPUAllocator: out of memory")):
        code, message = classify(exc)
        assert code == ErrorCode.OUT_OF_MEMORY and "GiB" not in message


def test_bad_data_found_while_training_is_the_users_file() -> None:
    code, message = classify(NoTrainableTokensError("training.jsonl: no trained tokens"))
    assert code == ErrorCode.INVALID_TRAINING_FILE and "training.jsonl" in message
    assert classify(DataError("x"))[0] == ErrorCode.INVALID_TRAINING_FILE


def test_anything_else_is_internal_without_details() -> None:
    code, message = classify(KeyError("/srv/secret/path"))
    assert (code, message) == (ErrorCode.INTERNAL_ERROR, INTERNAL_MESSAGE)
    assert classify(ModelUnavailable("The base model 'm' is not installed"))[0] == \
        ErrorCode.MODEL_UNAVAILABLE
