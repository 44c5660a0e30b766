"""Continual-learning runs: an ordered list of domains trained one after another; the
report holds the drift matrix (holdout loss of every domain after every stage)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from app.schemas.common import EXAMPLE_MODEL, ListEnvelope, RequestModel
from crma_core.continual_config import DEFAULT_DRIFT_BUDGET_PCT
from app.schemas.jobs import (
    FILE_REFERENCE,
    AdapterIn,
    HyperparametersIn,
    Metadata,
    check_metadata,
)

MAX_DOMAINS = 16
MAX_DRIFT_BUDGET_PCT = 100.0
MODES_DESCRIPTION = (
    "modular: a new LoRA per domain plus one CRMA shared by all domains that keeps training "
    "through them; each domain is served by its LoRA and a CRMA state chosen under "
    "drift_budget_pct (the shared one, or the one its own stage ended with). "
    "frozen: a new LoRA per domain and no CRMA (one plain LoRA per domain; earlier domains "
    "never change). naive: one LoRA trained on every domain in turn, no CRMA (forgets "
    "earlier domains; the reference for forgetting).")


class DomainIn(RequestModel):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.-]*$",
                      examples=["cooking"])
    training_file: str = Field(description=FILE_REFERENCE)
    validation_file: str = Field(description="Holdout file (an id or a filename): drift is "
                                 "measured on it.")


class ContinualRunCreate(RequestModel):
    model: str = Field(examples=[EXAMPLE_MODEL])
    mode: Literal["modular", "frozen", "naive"] = Field("modular",
                                                        description=MODES_DESCRIPTION)
    drift_budget_pct: float = Field(
        DEFAULT_DRIFT_BUDGET_PCT, ge=0, le=MAX_DRIFT_BUDGET_PCT, allow_inf_nan=False,
        description="modular: no earlier domain is served with a CRMA state whose holdout loss "
        "is more than this many percent above the loss its own stage ended with (0 allowed: "
        "an earlier domain then moves to a newer CRMA only if its loss does not rise). "
        "Ignored by frozen and naive.")
    baseline: bool = Field(
        False, description="Also train the per-domain LoRA baseline (what frozen mode trains) "
        "beside each stage, so the report compares the run with it (backward, forward "
        "transfer, general retention). Its tokens are trained and billed too (about twice "
        "the tokens). Not for mode frozen (it is the baseline).")
    domains: list[DomainIn] = Field(min_length=1, max_length=MAX_DOMAINS)
    hyperparameters: HyperparametersIn | None = None
    adapter: AdapterIn | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: Metadata | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: Metadata | None) -> Metadata | None:
        return check_metadata(value)

    @field_validator("baseline")
    @classmethod
    def _baseline_needs_another_mode(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("mode") == "frozen":
            raise ValueError("mode frozen is the per-domain LoRA baseline itself; use "
                             "baseline with mode modular or naive")
        return value

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
    drift_budget_pct: float
    baseline: bool
    hyperparameters: dict[str, Any]
    adapter: dict[str, Any]
    metadata: Metadata | None
    stages: list[StagePublic]
    fine_tuned_model: str | None = Field(
        None, description="The run's model for /v1/chat/completions and /v1/completions "
        "(ft:<base>:<account>:<run id>), once a stage has succeeded: each request is routed "
        "to the domain whose adapter fits its prompt best, or names one in `domain`.")
    report: dict[str, Any] | None = Field(
        description="Once a stage has finished (docs/user-guide.md, 'Continual runs'): "
        "`versus_baseline` (modular/naive with `baseline: true`: each earlier domain's final "
        "loss and each domain's own loss after its stage vs the per-domain LoRA baseline, "
        "positive = better than the baseline), `general_retention` (loss on a general-text "
        "holdout under each domain's served adapter vs the base model), `serving` (which "
        "CRMA state serves each domain and why), the served loss matrix L[t][i] (holdout "
        "loss of domain i after stage t), `drift_pct` per earlier domain, and for modular "
        "the shared CRMA's `shared_matrix` and `shared_drift_pct`; `warnings` names a stage "
        "that left its own domain worse than the untrained base model (it diverged)."
    )
    error: dict[str, Any] | None


class ContinualRunList(ListEnvelope):
    data: list[ContinualRunPublic]
