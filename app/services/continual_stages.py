"""The stored state of a continual run between its stages (a stage is a Job of kind
`continual_stage`; worker/continual_stage.py trains it with crma_core.continual).

Object layout under `keys.continual_state_prefix(account, run)`: `stage-<k>/` holds the
state directory written after stage k (safetensors + JSON: every domain's LoRA or the one
naive LoRA, the current CRMA, holdout copies, the loss matrix). Stage k reads `stage-<k-1>/`
and never overwrites it, so a retried stage always starts from the same state. The earlier
domains' holdouts travel inside the state, so a stage downloads only its own two files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.models import ContinualRun, ContinualStage
from app.db.session import session_scope
from app.domain.job_settings import continual_config
from app.services.attempts import Attempt
from app.storage import keys
from app.storage.base import download_prefix, upload_directory


class MissingStageState(RuntimeError):
    """The state of the previous stage is not in the object store."""


@dataclass(frozen=True)
class StageOfRun:
    mode: str  # the run's: modular | frozen | naive
    seed: int
    name: str  # the domain's


def stage_config(attempt: Attempt, *, mode: str):  # noqa: ANN201 - crma_core ContinualConfig
    """The run's ContinualConfig from the stage's settings: `recipe_configs` plus the run's
    drift budget and baseline (every stage of a run is created from the run's settings)."""
    return continual_config(attempt.job.job_settings,
                            attempt.recipe_configs(has_validation=True), mode=mode)


def stage_prefix(account_id: str, run_id: str, stage_index: int) -> str:
    return f"{keys.continual_state_prefix(account_id, run_id)}stage-{int(stage_index)}/"


def stage_of_run(attempt: Attempt) -> StageOfRun:
    job = attempt.job
    with session_scope(attempt.settings.resolved_database_url) as session:
        run = session.execute(
            select(ContinualRun.mode, ContinualRun.seed)
            .where(ContinualRun.id == job.continual_run_id)
        ).one()
        name = session.scalar(select(ContinualStage.name).where(
            ContinualStage.run_id == job.continual_run_id,
            ContinualStage.index == job.stage_index))
    return StageOfRun(mode=run.mode, seed=run.seed, name=name or f"domain-{job.stage_index}")


def download_previous_state(attempt: Attempt, target: Path) -> Path | None:
    """The state the previous stage left (None for stage 0)."""
    job = attempt.job
    index = int(job.stage_index)
    if index == 0:
        return None
    previous = stage_prefix(job.account_id, job.continual_run_id, index - 1)
    if not download_prefix(attempt.store, previous, target):
        raise MissingStageState(f"stage {index - 1} of run {job.continual_run_id} left no "
                                "state to continue from")
    return target


def upload_state(attempt: Attempt, directory: Path) -> None:
    job = attempt.job
    upload_directory(attempt.store, directory,
                     stage_prefix(job.account_id, job.continual_run_id, job.stage_index))


def write_report(attempt: Attempt, report: dict[str, Any]) -> bool:
    """The run's report (loss matrix, drift, per-stage figures), written fenced by the
    stage's attempt before the stage is published and finished."""
    def write(session: Session) -> None:
        session.execute(update(ContinualRun)
                        .where(ContinualRun.id == attempt.job.continual_run_id)
                        .values(report=report).execution_options(synchronize_session=False))

    return attempt.fenced_write(write)
