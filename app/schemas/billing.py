"""Wire types of the billing endpoints: balance, ledger, usage and the two estimates.

Money is shown twice: integer micro-dollars (`*_micros`, exact) and a USD decimal string
(exact too, e.g. "0.35"), like the job object's `cost` / `cost_micros`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.schemas.common import ListEnvelope
from app.schemas.jobs import HyperparametersPublic


class FreeRunsPublic(BaseModel):
    limit: int = Field(description="Runs per UTC day (a continual-run stage counts as a run).")
    remaining: int
    reset_at: int = Field(description="Unix time of the next UTC midnight.")


class BalancePublic(BaseModel):
    object: Literal["billing.balance"] = "billing.balance"
    account_id: str
    plan: Literal["free", "pro"]
    currency: Literal["usd"] = "usd"
    available: str = Field(description="USD that new jobs can hold.", examples=["12.50"])
    available_micros: int
    held: str = Field(description="USD held for queued and running jobs.", examples=["0.35"])
    held_micros: int
    free_runs: FreeRunsPublic | None = Field(description="Free plan only.")


class LedgerEntryPublic(BaseModel):
    account: Literal["self", "platform"] = Field(
        description="`self` for your buckets, `platform` for the other side of the posting."
    )
    bucket: Literal["available", "held", "revenue", "funding"]
    amount: str
    amount_micros: int = Field(description="Signed; a transaction's entries sum to zero.")


class LedgerTransactionPublic(BaseModel):
    id: str = Field(examples=["ltx-abc123"])
    object: Literal["billing.transaction"] = "billing.transaction"
    created_at: int
    kind: Literal["credit", "hold", "capture", "release"]
    source_id: str = Field(description="The job a hold/capture/release belongs to, or the "
                           "credit's reference.")
    memo: str | None
    entries: list[LedgerEntryPublic]


class LedgerList(ListEnvelope):
    data: list[LedgerTransactionPublic]


class UsageBucketPublic(BaseModel):
    object: Literal["usage.bucket"] = "usage.bucket"
    date: str = Field(description="UTC day the jobs finished (YYYY-MM-DD).",
                      examples=["2026-01-31"])
    model: str
    jobs: int
    trained_tokens: int
    cost: str
    cost_micros: int


class InferenceUsageBucketPublic(BaseModel):
    object: Literal["usage.inference_bucket"] = "usage.inference_bucket"
    date: str = Field(description="UTC day the requests started (YYYY-MM-DD).")
    model: str = Field(description="The base model (a fine-tuned model is billed as its base).")
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: str
    cost_micros: int


class UsageList(ListEnvelope):
    data: list[UsageBucketPublic] = Field(description="Training: jobs and continual-run stages.")
    inference: list[InferenceUsageBucketPublic] = Field(
        default_factory=list, description="Chat and text completions.")
    start_date: str
    end_date: str
    total_trained_tokens: int
    total_training_cost: str
    total_training_cost_micros: int
    total_inference_tokens: int = Field(description="Prompt + completion tokens.")
    total_inference_cost: str
    total_inference_cost_micros: int
    total_cost: str = Field(description="Training and inference.")
    total_cost_micros: int


class MicroBatchPlanPublic(BaseModel):
    """How each optimizer step would run (crma_core's memory model on the model's catalog
    shape): `batch_size` rows as `accumulation_steps` forward/backward passes of at most
    `micro_batch_size` rows, gradients accumulated (the same step as one pass over the
    batch). The worker plans again for the rows it loads and halves the micro-batch after an
    out-of-memory pass (a `memory` event)."""

    batch_size: int
    micro_batch_size: int
    accumulation_steps: int
    width: int = Field(description="Tokens per row planned for: max_seq_len with packing, "
                       "else the file's longest example cut to max_seq_len.")
    memory_budget_mb: int | None = Field(description="The workers' memory budget per step "
                                         "(null: each worker's free device memory, which "
                                         "it measures when the job starts).")
    estimated_mb_per_pass: float
    fits: bool = Field(description="False: not even one row fits the budget; the job "
                       "would fail (shorten max_seq_len).")
    source: Literal["budget", "device", "configured"] = Field(
        description="`budget`: planned against memory_budget_mb; `device`: the workers plan "
        "against their free memory when the job starts (shown: one pass of the whole "
        "batch).")


class StageEstimatePublic(BaseModel):
    name: str | None = None
    n_epochs: int
    estimated_tokens: int = Field(description="Tokens in the training file x epochs (the "
                                  "planned share with max_steps; twice with a continual "
                                  "run's baseline).")
    trained_tokens: int = Field(description="What would be trained: the estimate, capped by "
                                "the token budget (free-tier cap or max_cost).")
    token_budget: int | None
    expected_duration_s: int
    hyperparameters: HyperparametersPublic | None = Field(
        None, description="The resolved hyperparameters (what \"auto\" becomes for this "
        "file), as the job would show them.")
    adapter: dict[str, Any] | None = Field(None, description="The resolved adapter settings.")
    micro_batch_plan: MicroBatchPlanPublic | None = None


class EstimateBase(BaseModel):
    model: str
    estimated_tokens: int
    trained_tokens: int
    price: str = Field(description="USD this would hold and at most charge (0 on the free plan).")
    price_micros: int
    list_price: str = Field(description="USD list price of the full estimate.")
    list_price_micros: int
    expected_duration_s: int = Field(description="At the model's typical throughput.")
    allowed_to_proceed: bool
    reason: str | None = Field(
        None, description="When not allowed: quota_exceeded, insufficient_credit or "
        "model_not_available_on_plan."
    )
    message: str | None = None
    plan: Literal["free", "pro"]
    available: str = Field(description="USD of credit available now.")
    available_micros: int
    free_runs_remaining: int | None = Field(description="Free plan: runs left today (not "
                                            "counting this request).")
    free_runs: FreeRunsPublic | None


class JobEstimatePublic(EstimateBase, StageEstimatePublic):
    object: Literal["fine_tuning.job.estimate"] = "fine_tuning.job.estimate"


class ContinualEstimatePublic(EstimateBase):
    object: Literal["continual.run.estimate"] = "continual.run.estimate"
    runs_needed: int = Field(description="Free-tier runs this takes: one per stage.")
    baseline_tokens: int = Field(0, description="Of estimated_tokens, those of the per-domain "
                                 "LoRA baseline (`baseline: true`): trained and billed like "
                                 "the run's own.")
    stages: list[StageEstimatePublic]
