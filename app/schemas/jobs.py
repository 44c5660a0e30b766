"""Fine-tuning jobs: OpenAI's `fine_tuning.job`, `.event` and `.checkpoint` shapes, plus our
adapter settings, budget, cost and usage.

What is stored and trained is the resolved `JobSettings` (app/domain/job_settings.py); the
defaults below are its (crma_core's), the bounds the API's."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)

from app.domain.hyperparameters import DEFAULT_N_EVALS, MAX_EPOCHS
from app.domain.job_limits import LR_SCHEDULER_TYPES, TRAINABLE_MODULES, widest
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


def _number_or_auto(name: str, low: float, high: float):  # noqa: ANN202 - a validator factory
    def check(value: object) -> object:
        if value is None or value == "auto":
            return "auto"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number or 'auto'")
        if not low <= value <= high:
            raise ValueError(f"{name} must be between {low:g} and {high:g}")
        return float(value)

    return BeforeValidator(check)


def _number(name: str, section: str, field: str, what: str, default: float):  # noqa: ANN202
    """A float knob bounded by crma_core.limits (the widest over the catalog)."""
    low, high = widest(section, field)
    if name == "max_grad_norm":
        low = 0.0  # 0 turns clipping off (crma_core's clip="none")
    return Annotated[Annotated[float, Field(ge=low, le=high)] | Auto,
                     _number_or_auto(name, low, high)], Field(
        "auto", description=f"{what} 'auto' is {default:g}; {low:g}-{high:g}.")


def _count(name: str, field: str, what: str):  # noqa: ANN202
    low, high = (int(v) for v in widest("train", field))
    return Annotated[Annotated[int, Field(ge=low, le=high)] | Auto,
                     _whole_or_auto(name, low, high)], Field(
        "auto", description=f"{what} ({low}-{high})")


def _scheduler(value: object) -> object:
    """A schedule name, or Together's `{"lr_scheduler_type": ..., "lr_scheduler_args": ...}`
    (the only args accepted are those of the schedule as trained: decay to 0)."""
    if isinstance(value, dict):
        unknown = set(value) - {"lr_scheduler_type", "lr_scheduler_args"}
        if unknown:
            raise ValueError(f"unknown lr_scheduler fields: {', '.join(sorted(unknown))}")
        args = value.get("lr_scheduler_args") or {}
        if any(args.get(k, d) != d for k, d in (("min_lr_ratio", 0.0), ("num_cycles", 0.5))) \
                or set(args) - {"min_lr_ratio", "num_cycles"}:
            raise ValueError("lr_scheduler_args: the schedule decays to 0 (min_lr_ratio 0, "
                             "one half-cosine); other arguments are not offered")
        value = value.get("lr_scheduler_type", "auto")
    if value is None:
        return "auto"
    return value


def _modules(value: object) -> object:
    """"all-linear", a list of projection names, or Together's comma-separated string; a
    tuple without repeats (a job continued from another compares it with the source's)."""
    if isinstance(value, str) and value != "all-linear":
        value = [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        unknown = [m for m in value if m not in TRAINABLE_MODULES]
        if unknown or not value:
            raise ValueError(f"lora_trainable_modules: {', '.join(map(str, unknown)) or 'none'}"
                             f" not among {', '.join(TRAINABLE_MODULES)} (or 'all-linear')")
        return tuple(dict.fromkeys(value))
    return value


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

_WARMUP = _number("warmup_ratio", "train", "warmup_ratio", "Share of the planned steps over "
                  "which the learning rate rises linearly from 0.",
                  DEFAULT_HYPERPARAMETERS.warmup_ratio)
_DECAY = _number("weight_decay", "train", "weight_decay", "AdamW's decoupled weight decay on "
                 "the LoRA and CRMA weights.", DEFAULT_HYPERPARAMETERS.weight_decay)
_GRAD_NORM = _number("max_grad_norm", "train", "max_grad_norm", "Gradient-norm cap: "
                     "gradients are clipped adaptively (ZClip) and never above this norm; 0 "
                     "turns clipping off.", DEFAULT_HYPERPARAMETERS.max_grad_norm)
_N_EVALS = _count("n_evals", "n_evals", "Evaluations of the validation file, evenly spaced, the "
                  f"last at the end; 'auto': {DEFAULT_N_EVALS} with a validation file, else 0")
_N_CHECKPOINTS = _count("n_checkpoints", "n_checkpoints", "Checkpoints evenly spaced over the "
                        "run, the last at the end, each evaluated when there is a validation "
                        "file; 'auto': one per epoch. Fine-tuning jobs only")


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
        "auto", validation_alias=AliasChoices("max_seq_len", "max_seq_length"),
        description=f"Tokens per training row; longer examples are cut "
        f"({MIN_SEQ_LEN}-{MAX_SEQ_LEN}, at most the model's context length; 'auto' is "
        f"{DEFAULT_HYPERPARAMETERS.max_seq_len}). Also accepted as `max_seq_length`.")
    lr_scheduler_type: Annotated[Literal[LR_SCHEDULER_TYPES] | Auto,  # type: ignore[valid-type]
                                 BeforeValidator(_scheduler)] = Field(
        "auto", validation_alias=AliasChoices("lr_scheduler_type", "lr_scheduler"),
        description="Learning-rate schedule after the warm-up: linear or cosine decay to 0 at "
        f"the last step, or constant ('auto' is {DEFAULT_HYPERPARAMETERS.lr_scheduler_type})."
        " Also accepted as `lr_scheduler`, a name or Together's object "
        '`{"lr_scheduler_type": "cosine"}`.')
    warmup_ratio: _WARMUP[0] = _WARMUP[1]
    weight_decay: _DECAY[0] = _DECAY[1]
    max_grad_norm: _GRAD_NORM[0] = _GRAD_NORM[1]
    train_on_inputs: StrictBool | Auto = Field(
        "auto", description="Take the loss on the prompt too (chat: every turn, not only the "
        "assistant's; prompt/completion: the prompt). 'auto' is "
        f"{str(DEFAULT_HYPERPARAMETERS.train_on_inputs).lower()}.")
    packing: StrictBool | Auto = Field(
        "auto", description="Pack several examples into each row of max_seq_len tokens "
        "(each attends only to itself; the loss is the same): fewer, fuller rows, so fewer "
        f"steps. 'auto' is {str(DEFAULT_HYPERPARAMETERS.packing).lower()}.")
    n_evals: _N_EVALS[0] = _N_EVALS[1]
    n_checkpoints: _N_CHECKPOINTS[0] = _N_CHECKPOINTS[1]


class SupervisedIn(RequestModel):
    hyperparameters: HyperparametersIn | None = None


class MethodIn(RequestModel):
    """OpenAI's `method` object; only supervised fine-tuning is offered."""

    type: Literal["supervised"] = Field(description="Only 'supervised' (no dpo or "
                                        "reinforcement here).")
    supervised: SupervisedIn | None = None


class AdapterIn(RequestModel):
    crma: bool = Field(DEFAULT_ADAPTER.crma,
                       description="Attach CRMA next to LoRA (false: plain LoRA).")
    n_streams: int = Field(DEFAULT_ADAPTER.n_streams, ge=2, le=16,
                           description="CRMA streams n (mixing matrix n x n).")
    rank: int = Field(DEFAULT_ADAPTER.rank, ge=1, le=8, description="CRMA rank r per stream.")
    lora_r: int = Field(DEFAULT_ADAPTER.lora_r, ge=1, le=256, description="LoRA rank.")
    lora_alpha: int = Field(DEFAULT_ADAPTER.lora_alpha, ge=1, le=1024,
                            description="LoRA scaling alpha.")
    lora_dropout: float = Field(DEFAULT_ADAPTER.lora_dropout, ge=0,
                                le=widest("lora", "dropout")[1],
                                description="Dropout on the LoRA branch's input.")
    lora_trainable_modules: Annotated[Literal["all-linear"] | tuple[str, ...],
                                      BeforeValidator(_modules)] = Field(
        DEFAULT_ADAPTER.lora_trainable_modules,
        validation_alias=AliasChoices("lora_trainable_modules", "lora_target_modules"),
        description="The decoder projections that get a LoRA: 'all-linear' or a list (or a "
        f"comma-separated string) of {', '.join(TRAINABLE_MODULES)}. Also accepted as "
        "`lora_target_modules`.")
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
    method: MethodIn | None = Field(
        None, description="OpenAI's newer form: `{\"type\": \"supervised\", \"supervised\": "
        "{\"hyperparameters\": {...}}}`, the same hyperparameters (give them here or in "
        "`hyperparameters`, not both).")
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

    @model_validator(mode="after")
    def _method_hyperparameters(self) -> JobCreate:
        """`method.supervised.hyperparameters` is where OpenAI's newer clients send them."""
        nested = self.method.supervised.hyperparameters \
            if self.method and self.method.supervised else None
        if nested is not None:
            if self.hyperparameters is not None:
                raise ValueError("give hyperparameters or method.supervised.hyperparameters, "
                                 "not both")
            self.hyperparameters = nested
        return self

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
    estimated_tokens: int = Field(description="Trained tokens this job is expected to need "
                                  "(docs/user-guide.md, 'Pricing and the free tier').")
    token_budget: int | None = Field(description="Training stops before this many trained "
                                     "tokens: what the hold buys (or the free plan's cap).")
    trained_tokens: int
    hold: str = Field(description="USD held for this job.")
    hold_micros: int
    capped_by: Literal["max_cost", "free_plan"] | None = Field(
        None, description="Set when the budget is below the estimate: the job stops early "
        "(max_cost, or the free plan's tokens per run) and publishes what it trained.")


class HyperparametersPublic(BaseModel):
    """The job's resolved hyperparameters (what "auto" became)."""

    n_epochs: int
    batch_size: int = Field(description="The effective batch: rows per optimizer step "
                            "(run as micro-batches with gradient accumulation).")
    learning_rate_multiplier: float
    crma_learning_rate: float
    crma_mixing_learning_rate: float
    crma_gate_learning_rate: float
    max_steps: int | None
    max_seq_len: int
    lr_scheduler_type: str
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    train_on_inputs: bool
    packing: bool
    n_evals: int | None
    n_checkpoints: int | None


class MethodPublic(BaseModel):
    type: Literal["supervised"] = "supervised"
    supervised: dict[str, HyperparametersPublic]


class JobMetricsPublic(BaseModel):
    """The finished run's figures, under OpenAI's checkpoint-metric names: the last step's
    training loss and token accuracy, the final model on the whole validation file
    (`full_valid_*`; `full_valid_loss_lora_only` with CRMA switched off, i.e. what the LoRA
    alone gives in plain peft), and the evaluation with the lowest validation loss (its
    weights are the `best/` files of the artifacts)."""

    step: int | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    full_valid_loss_lora_only: float | None = None
    best_step: int | None = None
    best_valid_loss: float | None = None


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
    method: MethodPublic
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
    metrics: JobMetricsPublic | None = Field(
        None, description="Set once a fine-tuning job has finished training (see "
        "JobMetricsPublic).")


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


class CheckpointMetricsPublic(BaseModel):
    """OpenAI's checkpoint metrics: the training step that ends at the checkpoint, the
    validation file scored there (null where no evaluation ran), and `full_valid_*` on the
    run's last checkpoint; plus the trained tokens so far."""

    step: int | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    trained_tokens: int | None = None


class CheckpointPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    step_number: int
    metrics: CheckpointMetricsPublic
    fine_tuning_job_id: str
    best: bool = Field(False, description="The job's checkpoint with the lowest valid_loss "
                       "(at most one; none before an evaluated checkpoint).")


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
