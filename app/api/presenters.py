"""Rows -> public wire objects (allow-lists: only fields of the *Public schemas leave)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from fastapi.responses import Response
from pydantic import BaseModel

from app.db.models import Checkpoint, File, Job, JobEvent
from app.domain.job_options import (
    checkpoint_model_name,
    fine_tuned_model_name,
    run_model_name,
)
from app.domain.job_limits import public_limits
from app.domain.job_settings import load_job_settings
from app.domain.pricing import format_usd
from app.schemas.continual import ContinualRunPublic, StagePublic
from app.schemas.files import FilePublic
from app.schemas.jobs import (
    CheckpointMetricsPublic,
    CheckpointPublic,
    EventPublic,
    HyperparametersPublic,
    JobErrorPublic,
    JobMetricsPublic,
    JobPublic,
    MethodPublic,
    UsagePublic,
)
from app.schemas.models import FineTunedModelPublic, ModelPublic
from app.services.admission import cap_reason
from app.services.continual_runs import RunView
from app.services.inference_targets import FineTunedModel
from app.services.models import ModelOffer
from crma_core.catalog import CATALOG


def unix(value: datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite returns naive datetimes; we store UTC
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp())


def file_public(row: File) -> FilePublic:
    return FilePublic(
        id=row.id, bytes=row.bytes, created_at=unix(row.created_at), filename=row.filename,
        purpose=row.purpose, status=row.status, sha256=row.sha256, format=row.format,
        example_count=row.example_count, token_estimates=dict(row.token_counts or {}),
        token_estimate_method=dict(row.token_estimate_method or {}),
        errors=list(row.errors or []),
    )


def _estimated_finish(job: Job, throughput: dict[str, int]) -> int | None:
    """started_at + the tokens this run will train / the model's throughput."""
    rate = throughput.get(job.model)
    if job.status != "running" or not rate or job.started_at is None:
        return None
    tokens = min(job.estimated_tokens, job.token_budget or job.estimated_tokens)
    return unix(job.started_at + timedelta(seconds=tokens / rate))


def _job_metrics(job: Job) -> JobMetricsPublic | None:
    """The finished run's metrics: `result_metrics` where the hot reads select only that part
    of `result` (app/services/job_reads.py), else from the mapped row's `result`."""
    metrics = getattr(job, "result_metrics", None)
    if metrics is None and "result_metrics" not in vars(job):
        result = getattr(job, "result", None)
        metrics = result.get("metrics") if isinstance(result, dict) else None
    return JobMetricsPublic(**metrics) if isinstance(metrics, dict) else None


def job_public(job: Job, *, throughput: dict[str, int] | None = None) -> JobPublic:
    job_settings = load_job_settings(job.settings)
    hp = job_settings.hyperparameters
    hyperparameters = HyperparametersPublic(**hp.model_dump(include=set(
        HyperparametersPublic.model_fields)))
    error = job.error if isinstance(job.error, dict) and job.error else None
    return JobPublic(
        id=job.id, created_at=unix(job.created_at), finished_at=unix(job.finished_at),
        model=job.model,
        fine_tuned_model=job.fine_tuned_model or (
            fine_tuned_model_name(model=job.model, account_id=job.account_id, suffix=job.suffix,
                                  job_id=job.id) if job.status == "succeeded" else None),
        organization_id=job.account_id, status=job.status,
        hyperparameters=hyperparameters,
        method=MethodPublic(supervised={"hyperparameters": hyperparameters}),
        training_file=job.training_file_id, validation_file=job.validation_file_id,
        result_files=[],
        # OpenAI reports null until something was trained.
        trained_tokens=job.trained_tokens if job.trained_tokens or job.status == "succeeded"
        else None,
        error=JobErrorPublic(code=str(error.get("code", "internal_error")),
                             message=str(error.get("message", "")),
                             param=error.get("param")) if error else None,
        seed=job.seed, estimated_finish=_estimated_finish(job, throughput or {}),
        metadata=job.user_metadata, suffix=job.suffix, adapter=job_settings.adapter.model_dump(),
        attempt=job.attempt, cost=format_usd(job.cost_micros), cost_micros=job.cost_micros,
        max_cost=format_usd(job.max_cost_micros) if job.max_cost_micros is not None else None,
        usage=UsagePublic(
            estimated_tokens=job.estimated_tokens, token_budget=job.token_budget,
            trained_tokens=job.trained_tokens, hold=format_usd(job.hold_micros),
            hold_micros=job.hold_micros,
            capped_by=cap_reason(estimated_tokens=job.estimated_tokens,
                                 token_budget=job.token_budget,
                                 max_cost_micros=job.max_cost_micros),
        ),
        cancel_requested=job.cancel_requested_at is not None,
        continual_run_id=job.continual_run_id, stage_index=job.stage_index,
        metrics=_job_metrics(job),
    )


def event_public(event: JobEvent) -> EventPublic:
    level = event.level if event.level in ("info", "warn", "error") else "info"
    return EventPublic(id=event.id, created_at=unix(event.created_at), level=level,
                       message=event.message, data=event.data, type=event.type)


def checkpoint_public(checkpoint: Checkpoint, job: Job, *,
                      best_step: int | None = None) -> CheckpointPublic:
    name = fine_tuned_model_name(model=job.model, account_id=job.account_id, suffix=job.suffix,
                                 job_id=job.id)
    metrics = {k: v for k, v in (checkpoint.metrics or {}).items()
               if k in CheckpointMetricsPublic.model_fields}
    metrics.setdefault("step", checkpoint.step)  # OpenAI's metrics name their step
    return CheckpointPublic(
        id=checkpoint.id, created_at=unix(checkpoint.created_at),
        fine_tuned_model_checkpoint=checkpoint_model_name(name, checkpoint.step),
        step_number=checkpoint.step, metrics=CheckpointMetricsPublic(**metrics),
        fine_tuning_job_id=job.id, best=checkpoint.step == best_step,
    )


def run_public(view: RunView) -> ContinualRunPublic:
    run = view.run
    return ContinualRunPublic(
        id=run.id, created_at=unix(run.created_at), finished_at=unix(view.finished_at),
        model=run.model, mode=run.mode, status=view.status, seed=run.seed,
        drift_budget_pct=view.continual.drift_budget_pct, baseline=view.continual.baseline,
        hyperparameters=dict(run.hyperparameters or {}), adapter=dict(run.adapter or {}),
        metadata=run.user_metadata, report=run.report, error=run.error,
        fine_tuned_model=run_model_name(model=run.model, account_id=run.account_id,
                                        run_id=run.id)
        if any(s.status == "succeeded" for s in view.stages) else None,
        stages=[
            StagePublic(index=s.index, name=s.name, training_file=s.training_file_id,
                        validation_file=s.validation_file_id, job_id=s.job_id, status=s.status,
                        trained_tokens=s.trained_tokens, error=s.error)
            for s in view.stages
        ],
    )


def model_public(offer: ModelOffer, *,
                 inference_prices: Mapping[str, int] | None = None) -> ModelPublic:
    m = offer.model
    inference = int((inference_prices or {}).get(m.id, 0))
    return ModelPublic(
        id=m.id, display_name=m.display_name, family=m.family, parameters=m.parameters,
        context_length=m.context_length, free_tier=m.free_tier, qlora=m.qlora,
        available=offer.available, status=offer.status, install_error=offer.install_error,
        price_per_1m_tokens=offer.price_usd,
        price_per_1m_tokens_micros=offer.price_micros_per_mtok, hf_name=m.hf_name,
        limits=public_limits(m),
        max_output_tokens=m.max_output_tokens,
        inference_price_per_1m_tokens=format_usd(inference),
        inference_price_per_1m_tokens_micros=inference,
    )


def fine_tuned_model_public(model: FineTunedModel, *, inference_prices: Mapping[str, int],
                            domains: list[str] | None = None) -> FineTunedModelPublic:
    base = CATALOG[model.base_model]
    price = int(inference_prices.get(base.id, 0))
    return FineTunedModelPublic(
        id=model.id, created=unix(model.created_at) or 0, owned_by=model.owned_by,
        kind=model.kind, base_model=base.id, source_id=model.source_id, domains=domains,
        context_length=base.context_length, max_output_tokens=base.max_output_tokens,
        inference_price_per_1m_tokens=format_usd(price),
        inference_price_per_1m_tokens_micros=price,
    )


def json_response(model: BaseModel, *, status_code: int = 200) -> Response:
    """The model serialized by pydantic-core in one pass. For hot read routes: FastAPI would
    validate a returned model against `response_model` again and then encode it through
    `jsonable_encoder`, about 0.5 ms of CPU per status read; the documented schema (the
    route's `response_model`) is unchanged."""
    return Response(model.model_dump_json(), status_code=status_code,
                    media_type="application/json")
