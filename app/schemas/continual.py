"""Continual-learning runs: an ordered list of domains trained one after another; the
report holds the drift matrix (holdout loss of every domain after every stage)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from app.schemas.common import EXAMPLE_MODEL, ListEnvelope, RequestModel
from app.schemas.jobs import (
    FILE_REFERENCE,
    AdapterIn,
    HyperparametersIn,
    Metadata,
    check_metadata,
)

MAX_DOMAINS = 16


class DomainIn(RequestModel):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.-]*$",
                      examples=["cooking"])
    training_file: str = Field(description=FILE_REFERENCE)
    validation_file: str = Field(description="Holdout file (an id or a filename): drift is "
                                 "measured on it.")


class ContinualRunCreate(RequestModel):
    model: str = Field(examples=[EXAMPLE_MODEL])
    mode: Literal["modular", "frozen", "naive"] = Field(
        "modular", description="modular: one adapter per domain over a frozen shared base; "
        "frozen: earlier adapters frozen; naive: one adapter trained on every domain in turn."
    )
    domains: list[DomainIn] = Field(min_length=1, max_length=MAX_DOMAINS)
    hyperparameters: HyperparametersIn | None = None
    adapter: AdapterIn | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: Metadata | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: Metadata | None) -> Metadata | None:
        return check_metadata(value)

    @field_validator("domains")
    @classmethod
    def _unique_names(cls, value: list[DomainIn]) -> list[DomainIn]:
        names = [d.name for d in value]
        if len(set(names)) != len(names):
            raise ValueError("domain names must be unique within a run")
        return value

    model_config = RequestModel.model_config | {
        "json_schema_extra": {
            "examples": [{
                "model": EXAMPLE_MODEL,
                "mode": "modular",
                # The README's continual example files (examples/continual/).
                "domains": [
                    {"name": "cooking", "training_file": "cooking_train.jsonl",
                     "validation_file": "cooking_valid.jsonl"},
                    {"name": "astronomy", "training_file": "astronomy_train.jsonl",
                     "validation_file": "astronomy_valid.jsonl"},
                ],
                "hyperparameters": {"n_epochs": 1, "batch_size": 4},
            }]
        }
    }


class DomainsAppend(RequestModel):
    domains: list[DomainIn] = Field(min_length=1, max_length=MAX_DOMAINS)


class StagePublic(BaseModel):
    index: int
    name: str
    training_file: str
    validation_file: str
    job_id: str
    status: str
    trained_tokens: int
    error: dict[str, Any] | None


class ContinualRunPublic(BaseModel):
    id: str = Field(examples=["clrun-abc123"])
    object: Literal["continual.run"] = "continual.run"
    created_at: int
    finished_at: int | None
    model: str
    mode: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    seed: int
    hyperparameters: dict[str, Any]
    adapter: dict[str, Any]
    metadata: Metadata | None
    stages: list[StagePublic]
    report: dict[str, Any] | None = Field(
        description="Once stages have finished: the loss matrix L[t][i] (holdout loss of "
        "domain i after stage t), drift per domain and the summary."
    )
    error: dict[str, Any] | None


class ContinualRunList(ListEnvelope):
    data: list[ContinualRunPublic]
