"""Estimates: what a job or a continual run would train, cost and take, and whether it
would be admitted now. Same bodies as the creating endpoints; nothing is started and no
quota or credit is consumed.

This router must be included before any `/v1/fine_tuning/jobs/{job_id}` POST route."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import PrincipalDep, SessionDep, SettingsDep
from app.api.routes.billing import free_runs_public
from app.domain.job_settings import micro_batch_plan
from app.domain.pricing import format_usd, usd_to_micros
from app.schemas.billing import ContinualEstimatePublic, JobEstimatePublic, StageEstimatePublic
from app.schemas.common import error_responses
from app.schemas.continual import ContinualRunCreate
from app.schemas.jobs import HyperparametersPublic, JobCreate
from app.settings import Settings
from app.services import admission, files, job_creation

router = APIRouter()


@router.post("/v1/fine_tuning/jobs/estimate", response_model=JobEstimatePublic,
             tags=["fine-tuning"], responses=error_responses(400, 401, 404, 422))
def estimate_job(
    spec: JobCreate, principal: PrincipalDep, session: SessionDep, settings: SettingsDep
) -> JobEstimatePublic:
    """Trained tokens, price, duration, admission, resolved hyperparameters and step plan.

    Trained tokens, price, expected duration and whether this job would be accepted; the
    hyperparameters as the job would resolve them and how each step would run
    (micro_batch_plan)."""
    spec = files.with_file_ids(session, account_id=principal.account_id, spec=spec)
    draft = job_creation.draft_job(
        session, account_id=principal.account_id, model=spec.model,
        training_file=spec.training_file, validation_file=spec.validation_file,
        hyperparameters=spec.hyperparameters.model_dump() if spec.hyperparameters else None,
        adapter=spec.adapter.model_dump(exclude_unset=True) if spec.adapter else None,
        seed=spec.seed, continuable=True,
    )
    result = admission.estimate(
        session, account_id=principal.account_id, model=draft.model.id,
        stages=[(None, draft.job_settings.hyperparameters.n_epochs, draft.estimated_tokens,
                 draft.duration_factor)],
        max_cost_micros=usd_to_micros(spec.max_cost) if spec.max_cost is not None else None,
        settings=settings,
    )
    stage = result.stages[0]
    return JobEstimatePublic(
        n_epochs=stage.n_epochs, token_budget=stage.token_budget, **_resolved(draft, settings),
        **_summary(result)
    )


@router.post("/v1/continual/runs/estimate", response_model=ContinualEstimatePublic,
             tags=["continual"],
             responses=error_responses(400, 401, 404, 422))
def estimate_continual_run(
    spec: ContinualRunCreate, principal: PrincipalDep, session: SessionDep, settings: SettingsDep
) -> ContinualEstimatePublic:
    """Per stage and in total: trained tokens, price and duration; a stage is a free-tier run.

    Each stage also shows its resolved hyperparameters and micro_batch_plan."""
    spec = files.with_file_ids(session, account_id=principal.account_id, spec=spec)
    hyperparameters = spec.hyperparameters.model_dump() if spec.hyperparameters else None
    adapter = spec.adapter.model_dump() if spec.adapter else None
    stages, resolved, baseline_tokens = [], [], 0
    for index, domain in enumerate(spec.domains):
        draft = job_creation.draft_job(
            session, account_id=principal.account_id, model=spec.model,
            training_file=domain.training_file, validation_file=domain.validation_file,
            hyperparameters=hyperparameters, adapter=adapter, seed=spec.seed,
            param_prefix=f"domains[{index}].",
            continual={"drift_budget_pct": spec.drift_budget_pct, "baseline": spec.baseline},
        )
        baseline_tokens += draft.baseline_tokens
        resolved.append(_resolved(draft, settings))
        stages.append((domain.name, draft.job_settings.hyperparameters.n_epochs,
                       draft.estimated_tokens, draft.duration_factor))
    result = admission.estimate(session, account_id=principal.account_id, model=spec.model,
                                stages=stages, settings=settings)
    return ContinualEstimatePublic(
        runs_needed=len(stages), baseline_tokens=baseline_tokens,
        stages=[StageEstimatePublic(**vars(s), **extra)
                for s, extra in zip(result.stages, resolved, strict=True)],
        **_summary(result),
    )


def _resolved(draft: job_creation.JobDraft, settings: Settings) -> dict:
    """The draft's resolved hyperparameters and adapter, and its micro-batch plan on the
    workers' memory budget."""
    job_settings = draft.job_settings
    hp = job_settings.hyperparameters.model_dump(include=set(HyperparametersPublic.model_fields))
    lengths = (getattr(draft.training_file, "token_lengths", None) or {}).get(draft.model.id)
    plan = micro_batch_plan(job_settings, draft.model,
                            example_count=draft.training_file.example_count,
                            has_validation=draft.validation_file is not None,
                            device=settings.worker_device,
                            memory_budget_mb=settings.worker_memory_budget_mb,
                            token_lengths=lengths)
    return {"hyperparameters": HyperparametersPublic(**hp),
            "adapter": job_settings.adapter.model_dump(mode="json"), "micro_batch_plan": plan}


def _summary(result: admission.Estimate) -> dict:
    seen = result.preview
    return {
        "model": result.model,
        "estimated_tokens": result.estimated_tokens,
        "trained_tokens": result.trained_tokens,
        "price": format_usd(result.price_micros),
        "price_micros": result.price_micros,
        "list_price": format_usd(result.list_price_micros),
        "list_price_micros": result.list_price_micros,
        "expected_duration_s": result.expected_duration_s,
        "allowed_to_proceed": seen.allowed,
        "reason": seen.reason,
        "message": seen.message,
        "plan": seen.plan,
        "available": format_usd(seen.available_micros),
        "available_micros": seen.available_micros,
        "free_runs_remaining": seen.quota.remaining if seen.quota else None,
        "free_runs": free_runs_public(seen.quota),
    }
