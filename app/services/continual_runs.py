"""Continual-learning runs: a ContinualRun plus one queued `continual_stage` job per domain,
all admitted in the caller's one transaction; only the first new stage is enqueued (the
lifecycle offers stage k+1 when stage k succeeds and cancels later stages when one fails:
app/services/job_lifecycle.py). A run's status is `run_status` of its stages
(app/domain/job_state.py)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import ContinualRun, ContinualStage, Job
from app.domain.errors import Conflict, InvalidRequest, NotFound
from app.domain.ids import new_id
from app.domain.job_settings import ContinualSettings, load_job_settings
from app.domain.job_state import TERMINAL, JobStatus, run_status
from app.schemas.continual import ContinualRunCreate, DomainIn
from app.services.admission import Admission
from app.services.job_creation import catalog_model, draft_job, insert_job
from app.services import job_lifecycle
from app.services.pagination import find_owned, page, scoped_select
from app.settings import Settings


@dataclass(frozen=True)
class StageView:
    index: int
    name: str
    training_file_id: str
    validation_file_id: str
    job_id: str
    status: str
    trained_tokens: int
    error: dict[str, Any] | None
    finished_at: datetime | None
    job_settings: dict[str, Any] | None = None  # the stage job's stored JobSettings


@dataclass(frozen=True)
class RunView:
    run: ContinualRun
    stages: list[StageView]

    @property
    def continual(self) -> ContinualSettings:
        """The run's drift budget and baseline: every stage's JobSettings holds them."""
        first = load_job_settings(self.stages[0].job_settings) if self.stages else None
        return (first.continual if first else None) or ContinualSettings()

    @property
    def status(self) -> str:
        return run_status(s.status for s in self.stages).value

    @property
    def finished_at(self) -> datetime | None:
        if self.status not in {s.value for s in TERMINAL}:
            return None
        times = [s.finished_at for s in self.stages if s.finished_at is not None]
        return max(times) if times else self.run.finished_at


def create_run(
    session: Session, *, account_id: str, spec: ContinualRunCreate, settings: Settings
) -> tuple[RunView, Admission | None]:
    catalog_model(spec.model)  # before the run row: an unknown model is a 400, not a bad row
    run = ContinualRun(
        id=new_id("continual_run"), account_id=account_id, model=spec.model, mode=spec.mode,
        status=JobStatus.QUEUED.value, seed=spec.seed if spec.seed is not None else 0,
        hyperparameters=spec.hyperparameters.model_dump() if spec.hyperparameters else {},
        adapter=spec.adapter.model_dump() if spec.adapter else {},
        user_metadata=spec.metadata, created_at=utcnow(),
    )
    session.add(run)
    session.flush()
    continual = ContinualSettings(drift_budget_pct=spec.drift_budget_pct,
                                  baseline=spec.baseline)
    admitted = _add_stages(session, account_id=account_id, run=run, domains=spec.domains,
                           start=0, settings=settings, continual=continual)
    return load_run(session, account_id=account_id, run_id=run.id), admitted


def append_domains(
    session: Session, *, account_id: str, run_id: str, domains: list[DomainIn],
    settings: Settings,
) -> tuple[RunView, Admission | None]:
    """Add stages to a run whose stages all succeeded; the first new one is enqueued."""
    run = find_owned(session, ContinualRun, account_id, run_id, for_update=True)
    if run is None:
        raise NotFound(f"No such continual run: {run_id!r}.", param="run_id")
    view = load_run(session, account_id=account_id, run_id=run_id)
    if view.status != JobStatus.SUCCEEDED:
        raise Conflict(
            f"Run {run_id} is {view.status}; domains can be added once every stage succeeded.",
            code="run_not_finished", param="run_id",
        )
    taken = {s.name for s in view.stages}
    clash = sorted(taken & {d.name for d in domains})
    if clash:
        raise InvalidRequest(f"Domain names already used in this run: {', '.join(clash)}.",
                             param="domains", code="duplicate_domain")
    admitted = _add_stages(session, account_id=account_id, run=run, domains=domains,
                           start=len(view.stages), settings=settings, continual=view.continual)
    job_lifecycle.sync_run_status(session, run_id=run.id)
    session.expire(run)
    return load_run(session, account_id=account_id, run_id=run_id), admitted


def _add_stages(
    session: Session, *, account_id: str, run: ContinualRun, domains: list[DomainIn], start: int,
    settings: Settings, continual: ContinualSettings,
) -> Admission | None:
    drafts = [
        draft_job(
            session, account_id=account_id, model=run.model, training_file=d.training_file,
            validation_file=d.validation_file, hyperparameters=run.hyperparameters or None,
            adapter=run.adapter or None, seed=run.seed, param_prefix=f"domains[{i}].",
            continual=continual.model_dump(),
        )
        for i, d in enumerate(domains)
    ]
    admitted = None
    for offset, (domain, draft) in enumerate(zip(domains, drafts, strict=True)):
        index = start + offset
        job, admitted = insert_job(
            session, account_id=account_id, draft=draft, settings=settings,
            kind="continual_stage",
            metadata={"continual_run": run.id, "domain": domain.name},
            continual_run_id=run.id, stage_index=index, enqueue=offset == 0,
        )
        session.add(ContinualStage(
            run_id=run.id, index=index, name=domain.name, training_file_id=domain.training_file,
            validation_file_id=domain.validation_file, job_id=job.id,
        ))
    session.flush()
    return admitted


def load_run(session: Session, *, account_id: str, run_id: str) -> RunView:
    run = find_owned(session, ContinualRun, account_id, run_id)
    if run is None:
        raise NotFound(f"No such continual run: {run_id!r}.", param="run_id")
    return RunView(run=run, stages=_stages_by_run(session, [run.id])[run.id])


def list_runs(
    session: Session, *, account_id: str, after: str | None, limit: int
) -> tuple[list[RunView], bool]:
    runs, has_more = page(session, scoped_select(ContinualRun, account_id), ContinualRun,
                          after=after, limit=limit)
    stages = _stages_by_run(session, [r.id for r in runs])
    return [RunView(run=r, stages=stages[r.id]) for r in runs], has_more


def _stages_by_run(session: Session, run_ids: list[str]) -> dict[str, list[StageView]]:
    """All stages of these runs with their jobs' status, in one query (no N+1)."""
    result: dict[str, list[StageView]] = defaultdict(list)
    if not run_ids:
        return result
    rows = session.execute(
        select(ContinualStage, Job.status, Job.trained_tokens, Job.error, Job.finished_at,
               Job.settings)
        .join(Job, Job.id == ContinualStage.job_id)
        .where(ContinualStage.run_id.in_(run_ids))
        .order_by(ContinualStage.run_id, ContinualStage.index)
    ).all()
    for stage, status, tokens, error, finished, job_settings in rows:
        result[stage.run_id].append(StageView(
            index=stage.index, name=stage.name, training_file_id=stage.training_file_id,
            validation_file_id=stage.validation_file_id, job_id=stage.job_id, status=status,
            trained_tokens=tokens, error=error, finished_at=finished, job_settings=job_settings,
        ))
    return result


def cancel_run(
    session: Session, *, account_id: str, run_id: str, settings: Settings
) -> RunView:
    """Cancel every unfinished stage: queued ones at once (settled), the running one by
    request. 409 when the run has already finished."""
    view = load_run(session, account_id=account_id, run_id=run_id)
    if view.status in {s.value for s in TERMINAL}:
        raise Conflict(f"Run {run_id} is already {view.status}; it cannot be cancelled.",
                       code="run_not_cancellable", param="run_id")
    job_lifecycle.cancel_run(session, run_id=run_id, prices=settings.prices_micros_per_mtok)
    session.expire_all()
    return load_run(session, account_id=account_id, run_id=run_id)
