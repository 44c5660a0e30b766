"""Fine-tuning jobs: OpenAI's `fine_tuning.job`, `.event` and `.checkpoint` shapes, plus our
adapter settings, budget, cost and usage.

What is stored and trained is the resolved `JobSettings` (app/domain/job_settings.py); the
defaults below are its (crma_core's), the bounds the API's."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, field_validator

from app.domain.hyperparameters import MAX_EPOCHS
from app.domain.job_settings import DEFAULT_ADAPTER, DEFAULT_HYPERPARAMETERS
from app.schemas.common import (
    EXAMPLE_MODEL,
    EXAMPLE_TRAINING_FILE,
    EXAMPLE_VALIDATION_FILE,
    ListEnvelope,
    RequestModel,
)

Auto = Literal["auto"]
MAX_STEPS = 1_000_000
MIN_SEQ_LEN, MAX_SEQ_LEN = 32, 131_072  # crma_core.limits bounds it per model


def _whole_or_auto(name: str, low: int, high: int):  # noqa: ANN202 - a validator factory
    def check(value: object) -> object:
        if value is None or value == "auto":
            return "auto"
        # JSON Schema's `integer` is any number with no fractional part: 223.0 is 223.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer or 'auto'")
        if not low <= value <= high:
            raise ValueError(f"{name} must be between {low} and {high}")
        return value

    return BeforeValidator(check)


def _multiplier_or_auto(value: object) -> object:
    if value is None or value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("learning_rate_multiplier must be a number or 'auto'")
    if not 0 < value <= 10:
        raise ValueError("learning_rate_multiplier must be > 0 and <= 10")
    return float(value)


def _rate_or_auto(name: str, high: float):  # noqa: ANN202 - a validator factory
    def check(value: object) -> object:
        if value is None or value == "auto":
            return "auto"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number or 'auto'")
        if not 0 <= value <= high:
            raise ValueError(f"{name} must be between 0 and {high:g}")
        return float(value)

    return BeforeValidator(check)


def _rate(name: str, default: float, high: float, what: str):  # noqa: ANN202
    return Annotated[Annotated[float, Field(ge=0, le=high)] | Auto,
                     _rate_or_auto(name, high)], Field(
        "auto", description=f"{what} Base rate, scaled by learning_rate_multiplier; 'auto' "
        f"is {default:g}; 0 <= rate <= {high:g} (0 keeps that part of CRMA fixed). Only "
        "used where CRMA trains (adapter.crma, continual mode modular).")


_CRMA_RW = _rate("crma_learning_rate", DEFAULT_HYPERPARAMETERS.crma_learning_rate, 1e-2,
                 "Learning rate of CRMA's read/write projections (far below LoRA's: a CRMA "
                 "that moves fast undoes what earlier continual domains' LoRAs adapted to).")
_CRMA_MIX = _rate("crma_mixing_learning_rate",
                  DEFAULT_HYPERPARAMETERS.crma_mixing_learning_rate, 1e-1,
                  "Learning rate of CRMA's stream-mixing logits.")
_CRMA_GATE = _rate("crma_gate_learning_rate", DEFAULT_HYPERPARAMETERS.crma_gate_learning_rate,
                   1e-2, "Learning rate of CRMA's output gate.")


class HyperparametersIn(RequestModel):
    """Each value may be "auto" (or null): resolved from the training file at creation.
    Numbers are strict: `true`, `"3"` or `2.5` is a 422, not silently 1, 3 or 2 (`3.0` is the
    integer 3, as JSON Schema has it)."""

    n_epochs: Annotated[Annotated[int, Field(ge=1, le=MAX_EPOCHS)] | Auto,
                        _whole_or_auto("n_epochs", 1, MAX_EPOCHS)] = Field(
        "auto", description=f"Passes over the training file (1-{MAX_EPOCHS}).")
    batch_size: Annotated[Annotated[int, Field(ge=1, le=256)] | Auto,
                          _whole_or_auto("batch_size", 1, 256)] = Field(
        "auto", description="Examples per optimizer step (1-256).")
    learning_rate_multiplier: Annotated[Annotated[float, Field(gt=0, le=10)] | Auto,
                                        BeforeValidator(_multiplier_or_auto)] = (
        Field("auto", description="Scales every base learning rate: LoRA's 2e-4 and CRMA's "
              "three (crma_learning_rate, crma_mixing_learning_rate, "
              "crma_gate_learning_rate); 0 < m <= 10."))
    crma_learning_rate: _CRMA_RW[0] = _CRMA_RW[1]
    crma_mixing_learning_rate: _CRMA_MIX[0] = _CRMA_MIX[1]
    crma_gate_learning_rate: _CRMA_GATE[0] = _CRMA_GATE[1]
    max_steps: Annotated[Annotated[int, Field(ge=1, le=MAX_STEPS)] | Auto,
                         _whole_or_auto("max_steps", 1, MAX_STEPS)] = Field(
        "auto", description=f"Stop after this many optimizer steps (1-{MAX_STEPS}; 'auto': "
        "every epoch runs). Per stage in a continual run.")
    max_seq_len: Annotated[Annotated[int, Field(ge=MIN_SEQ_LEN, le=MAX_SEQ_LEN)] | Auto,
                           _whole_or_auto("max_seq_len", MIN_SEQ_LEN, MAX_SEQ_LEN)] = Field(
        "auto", description=f"Tokens per training row; longer examples are cut "
        f"({MIN_SEQ_LEN}-{MAX_SEQ_LEN}; 'auto' is "
        f"{DEFAULT_HYPERPARAMETERS.max_seq_len}).")


class AdapterIn(RequestModel):
    crma: bool = Field(DEFAULT_ADAPTER.crma,
                       description="Attach CRMA next to LoRA (false: plain LoRA).")
    n_streams: int = Field(DEFAULT_ADAPTER.n_streams, ge=2, le=16,
                           description="CRMA streams n (mixing matrix n x n).")
    rank: int = Field(DEFAULT_ADAPTER.rank, ge=1, le=8, description="CRMA rank r per stream.")
    lora_r: int = Field(DEFAULT_ADAPTER.lora_r, ge=1, le=256, description="LoRA rank.")
    lora_alpha: int = Field(DEFAULT_ADAPTER.lora_alpha, ge=1, le=1024,
                            description="LoRA scaling alpha.")
    quantization: Literal["nf4"] | None = Field(
        DEFAULT_ADAPTER.quantization,
        description="`nf4` for QLoRA (CUDA workers, models with qlora=true).",
    )


Metadata = dict[str, str]

FILE_REFERENCE = ("Id of an uploaded, processed file (`file-...`), or its filename: your newest "
                  "processed file of that name (so the example works once the README's "
                  "example files are uploaded).")


def check_metadata(value: Metadata | None) -> Metadata | None:
    if value is None:
        return value
    if len(value) > 16:
        raise ValueError("metadata may hold at most 16 pairs")
    for key, item in value.items():
        if not 1 <= len(key) <= 64 or len(item) > 512:
            raise ValueError("metadata keys are 1-64 characters, values at most 512")
    return value


class JobCreate(RequestModel):
    model: str = Field(description=(
        "A base model id from GET /v1/models, or one of your `fine_tuned_model` or "
        "`fine_tuned_model_checkpoint` names: the job then continues from that adapter "
        "(same base model and adapter settings, fresh optimizer)."), examples=[EXAMPLE_MODEL])
    training_file: str = Field(description=FILE_REFERENCE)
    validation_file: str | None = Field(None, description="Optional held-out file (an id, or "
                                        "a filename as for training_file).")
    hyperparameters: HyperparametersIn | None = None
    suffix: str | None = Field(
        None, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
        description="Up to 64 characters added to the fine-tuned model name.",
    )
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: Metadata | None = Field(None, description="Up to 16 string pairs.")
    adapter: AdapterIn | None = None
    max_cost: Decimal | None = Field(
        None, gt=0, le=1_000_000, decimal_places=6,
        description="Budget in USD: training stops there and still delivers the adapter.",
        examples=["2.50"],
    )

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: Metadata | None) -> Metadata | None:
        return check_metadata(value)

    model_config = RequestModel.model_config | {
        "json_schema_extra": {
            "examples": [{
                "model": EXAMPLE_MODEL,
                "training_file": EXAMPLE_TRAINING_FILE,
                "validation_file": EXAMPLE_VALIDATION_FILE,
                "hyperparameters": {"n_epochs": 1, "batch_size": 4},
                "adapter": {"crma": True, "n_streams": 4, "rank": 1},
                "suffix": "capitals",
            }]
        }
    }


class JobErrorPublic(BaseModel):
    code: str
    message: str
    param: str | None = None


class UsagePublic(BaseModel):
    estimated_tokens: int
    token_budget: int | None
    trained_tokens: int
    hold: str = Field(description="USD held for this job.")
    hold_micros: int


class HyperparametersPublic(BaseModel):
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float


class JobPublic(BaseModel):
    id: str = Field(examples=["ftjob-abc123"])
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    model: str
    fine_tuned_model: str | None
    organization_id: str
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
    hyperparameters: HyperparametersPublic
    training_file: str
    validation_file: str | None
    result_files: list[str]
    trained_tokens: int | None
    error: JobErrorPublic | None
    seed: int
    estimated_finish: int | None
    metadata: Metadata | None
    suffix: str | None
    integrations: list[Any] = Field(default_factory=list)
    # ours
    adapter: dict[str, Any]
    attempt: int
    cost: str = Field(description="USD charged (final once the job is terminal).")
    cost_micros: int
    max_cost: str | None
    usage: UsagePublic
    cancel_requested: bool
    continual_run_id: str | None = None
    stage_index: int | None = None


class JobList(ListEnvelope):
    data: list[JobPublic]


class EventPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    data: dict[str, Any] | None
    type: str


class EventList(ListEnvelope):
    data: list[EventPublic]


class CheckpointPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    step_number: int
    metrics: dict[str, Any]
    fine_tuning_job_id: str


class CheckpointList(ListEnvelope):
    data: list[CheckpointPublic]
    first_id: str | None = None
    last_id: str | None = None


class ArtifactPublic(BaseModel):
    name: str = Field(description="Path inside the adapter bundle, e.g. lora/adapter_config.json")
    bytes: int
    sha256: str
    url: str = Field(description="A presigned URL (S3, valid a few minutes) or an API path "
                     "that streams the file (send your API key).")


class ArtifactList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ArtifactPublic]
