"""GET /v1/models: the base-model catalog, and your fine-tuned models next to it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.schemas.common import EXAMPLE_MODEL, ListEnvelope


class BoundPublic(BaseModel):
    min: float
    max: float


class ModelLimitsPublic(BaseModel):
    """What a job on this model may ask for, under the request's names: a 400 names the
    field and its bound otherwise (docs/user-guide.md, "Hyperparameters")."""

    hyperparameters: dict[str, BoundPublic]
    adapter: dict[str, BoundPublic]
    lr_scheduler_types: list[str]
    lora_trainable_modules: list[str]
    quantization: list[str]


class ModelPublic(BaseModel):
    id: str = Field(examples=[EXAMPLE_MODEL])
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "crma"
    display_name: str
    family: str
    parameters: int
    context_length: int
    free_tier: bool = Field(description="The free plan may fine-tune it.")
    qlora: bool = Field(description="4-bit NF4 QLoRA is offered (CUDA workers).")
    available: bool = Field(description="Its weights are in the model store.")
    status: Literal["installed", "installing", "failed", "not_installed"] = Field(
        "installed", description="installed (= available); installing (jobs created now wait "
        "for it and start when it lands); failed (install_error says why; jobs of it fail "
        "uncharged); not_installed (no installer is at work: jobs of it fail).")
    install_error: str | None = None
    price_per_1m_tokens: str = Field(description="USD per 1M trained tokens.")
    price_per_1m_tokens_micros: int
    hf_name: str
    limits: ModelLimitsPublic | None = None
    max_output_tokens: int = Field(1024, description="The largest max_tokens a chat or text "
                                   "completion may ask of this model.")
    inference_price_per_1m_tokens: str = Field(
        "0.00", description="USD per 1M tokens (prompt + completion) when called through "
        "/v1/chat/completions or /v1/completions (its fine-tuned models too).")
    inference_price_per_1m_tokens_micros: int = 0


class ModelList(ListEnvelope):
    data: list[ModelPublic]


class FineTunedModelPublic(BaseModel):
    """One of your callable models: a succeeded job's `fine_tuned_model`, a checkpoint's
    `fine_tuned_model_checkpoint` (retrieve only) or a continual run's model."""

    id: str = Field(examples=["ft:smollm2-135m-instruct:acct-abc:capitals:ftjob-abc"])
    object: Literal["model"] = "model"
    created: int
    owned_by: str = Field(description="Your account id.")
    kind: Literal["fine_tune", "checkpoint", "continual_run"]
    base_model: str
    source_id: str = Field(description="The job (ftjob-...) or continual run (clrun-...).")
    domains: list[str] | None = Field(
        None, description="A continual run's domains (retrieve only; null in the list).")
    context_length: int
    max_output_tokens: int = Field(description="The largest max_tokens a completion may ask.")
    inference_price_per_1m_tokens: str = Field(
        description="USD per 1M tokens (prompt + completion), the base model's.")
    inference_price_per_1m_tokens_micros: int


class AnyModelList(ListEnvelope):
    data: list[ModelPublic | FineTunedModelPublic]
