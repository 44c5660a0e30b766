"""The model catalog as served by GET /v1/models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.schemas.common import EXAMPLE_MODEL, ListEnvelope


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
    price_per_1m_tokens: str = Field(description="USD per 1M trained tokens.")
    price_per_1m_tokens_micros: int
    hf_name: str


class ModelList(ListEnvelope):
    data: list[ModelPublic]
