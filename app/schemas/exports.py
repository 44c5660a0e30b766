"""Merged-weights exports of a fine-tuning job (wire types)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.schemas.common import ListEnvelope, RequestModel
from app.schemas.jobs import ArtifactPublic, JobErrorPublic

ExportFormat = Literal["merged", "merged_crma"]
ExportDtype = Literal["float32", "bfloat16", "float16"]


class ExportCreate(RequestModel):
    format: ExportFormat = Field("merged", description=(
        "`merged`: the LoRA merged into the base weights, a standard transformers folder "
        "(a job with CRMA on is refused: CRMA cannot be merged exactly). `merged_crma`: the "
        "same plus CRMA kept as custom code (load with trust_remote_code=True)."))
    dtype: ExportDtype = Field("bfloat16", description="The folder's weight dtype (the merge "
                                                       "is summed in float32, rounded once).")

    model_config = RequestModel.model_config | {
        "json_schema_extra": {"examples": [{"format": "merged", "dtype": "bfloat16"}]}
    }


class ExportPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.export"] = "fine_tuning.job.export"
    job_id: str
    format: ExportFormat
    dtype: ExportDtype
    status: Literal["queued", "running", "succeeded", "failed"]
    error: JobErrorPublic | None = None
    price: str = Field(description="USD held for this export (0 on the free plan).")
    cost: str = Field(description="USD charged: the price once it succeeded, else 0.")
    bytes: int | None = Field(None, description="Total size of the folder's files.")
    created_at: int
    finished_at: int | None = None
    files: list[ArtifactPublic] = Field(
        default_factory=list, description="The folder's files with sha256 and download URLs "
                                          "(once succeeded).")


class ExportList(ListEnvelope):
    data: list[ExportPublic]
