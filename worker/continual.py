"""Continual-learning runs: each domain is a stage executed as a Job (kind
`continual_stage`), so leases, checkpoints, events and billing are the fine-tuning ones.

This module holds the run-level bookkeeping the worker owns: the run's status, offering the
next stage when one succeeds, and cancelling the later stages when one fails or is
cancelled (contracts.md). The training of a stage is the seam `train_stage` below."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.models import ContinualRun, Job
from app.domain.job_state import TERMINAL, JobStatus
from app.services.leases import db_now, offer_job

_ACTIVE = ("queued", "running")


def mark_run_running(session: Session, *, run_id: str) -> None:
    session.execute(
        update(ContinualRun).where(ContinualRun.id == run_id, ContinualRun.status.in_(_ACTIVE))
        .values(status="running").execution_options(synchronize_session=False)
    )


def after_stage(
    session: Session, *, run_id: str, stage_index: int, status: JobStatus,
    error: dict[str, Any] | None,
) -> None:
    """Called in the transaction that moved stage `stage_index` to a terminal status."""
    if status == JobStatus.SUCCEEDED:
        following = session.execute(
            select(Job.id, Job.queue, Job.status).where(
                Job.continual_run_id == run_id, Job.stage_index == stage_index + 1)
        ).one_or_none()
        if following is None:
            _finish_run(session, run_id=run_id, status="succeeded", error=None)
        elif following.status == JobStatus.QUEUED.value:
            offer_job(session, job_id=following.id, queue=following.queue)
        return
    _cancel_later_stages(session, run_id=run_id, stage_index=stage_index)
    _finish_run(session, run_id=run_id, status=status.value, error=error)


def _cancel_later_stages(session: Session, *, run_id: str, stage_index: int) -> None:
    from worker.finish import finish_job

    later = session.scalars(
        select(Job.id).where(
            Job.continual_run_id == run_id, Job.stage_index > stage_index,
            Job.status.notin_([s.value for s in TERMINAL]),
        ).order_by(Job.stage_index)
    ).all()
    for job_id in later:
        # Later stages never ran (a stage is claimable only after its predecessors
        # succeeded), so they are queued: cancelled with nothing trained, hold released.
        finish_job(session, job_id=job_id, attempt=None, to=JobStatus.CANCELLED,
                   expected=(JobStatus.QUEUED, JobStatus.VALIDATING_FILES), cascade=False)


def _finish_run(session: Session, *, run_id: str, status: str, error: dict[str, Any] | None) -> None:
    session.execute(
        update(ContinualRun).where(ContinualRun.id == run_id, ContinualRun.status.in_(_ACTIVE))
        .values(status=status, error=error, finished_at=db_now(session))
        .execution_options(synchronize_session=False)
    )


class ContinualUnavailable(RuntimeError):
    """This worker cannot train continual-run stages (crma_core.continual is missing)."""


def train_stage(*, settings, store, job, training, model_dir):  # noqa: ANN001
    """The seam for one continual-run stage (domain `job.stage_index` of run
    `job.continual_run_id`); returns a worker.training.TrainingOutcome.

    What it must do, with crma_core.continual (written by the crma_core part):
      1. download the run's state from `keys.continual_state_prefix(account, run)`: the
         shared CRMA and the LoRAs of the earlier domains (mode `modular`), or the one LoRA
         (`naive`), or the frozen per-domain LoRAs (`frozen`);
      2. download this stage's training/validation files and every earlier stage's
         validation file (the holdouts scored after training);
      3. train the new domain with `training`'s callbacks (events, fenced checkpoints, stop
         on cancel / lost lease), resuming from `training.download_checkpoint()`;
      4. score every seen domain -> row t of the loss matrix L; write `ContinualRun.report`
         (L, drift per domain and its mean) in the finishing transaction;
      5. upload the new state under `continual_state_prefix` and export the bundle (owner
         = the run id) into `training.workdir / "bundle"`.
    The runner then publishes and finishes the stage like a fine-tuning job; `after_stage`
    offers the next stage or cancels the later ones."""
    try:
        import crma_core.continual  # noqa: F401
    except ImportError as exc:
        raise ContinualUnavailable(
            "continual-run stages need crma_core.continual, which this build lacks") from exc
    from worker.continual_stage import train_stage as run_continual_stage

    return run_continual_stage(settings=settings, store=store, job=job, training=training,
                               model_dir=model_dir)
