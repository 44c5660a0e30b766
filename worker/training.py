"""One attempt's training: crma_core's Recipe with callbacks that write events, checkpoints and
progress through the fenced lease, and stop on cancel, budget, lost lease or shutdown.

Every database write of the training thread first checks that this attempt still holds the
lease (`leases.holds_lease`, share-locked in the same transaction), so a stale attempt adds
no event and moves no checkpoint pointer. Event dedupe keys are per step (`metrics:step:<n>`),
so an attempt that resumes from a checkpoint and replays steps adds nothing twice."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.db.models import Checkpoint
from app.db.session import session_scope
from app.domain.ids import new_id
from app.services import leases
from app.services.events import record_event
from app.settings import Settings
from app.storage import keys
from app.storage.base import ObjectStore
from worker.inputs import download_prefix, upload_directory
from worker.lease_keeper import LeaseKeeper

log = logging.getLogger(__name__)


def database_unreachable(error: Exception) -> bool:
    """What a database that is down or restarting raises: a refused or dropped connection,
    a pool with no connection to give. (An IntegrityError and the like is a bug: not this.)"""
    if isinstance(error, OperationalError | InterfaceError | PoolTimeout):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


# Stop reasons after which the adapter is published (budget: "max_cost stops a job at its
# budget and still delivers the adapter trained so far", API.md).
PUBLISHED = ("completed", "max_steps", "budget")
# Stop reasons after which the attempt checkpoints and hands the job back to the queue.
HANDED_BACK = ("shutdown", "time_limit")


@dataclass(frozen=True)
class JobSpec:
    """What the runner read from the job row at claim time."""

    id: str
    account_id: str
    kind: str
    model: str
    queue: str
    seed: int
    hyperparameters: dict[str, Any]
    adapter: dict[str, Any]
    token_budget: int | None
    training_key: str
    validation_key: str | None
    example_count: int
    last_checkpoint_step: int | None
    continual_run_id: str | None
    stage_index: int | None


@dataclass
class TrainingOutcome:
    stop_reason: str
    trained_tokens: int
    result: dict[str, Any] | None = None
    bundle_dir: Path | None = None


class AttemptTraining:
    """Runs the recipe for one attempt of one job."""

    def __init__(self, *, settings: Settings, store: ObjectStore, job: JobSpec, attempt: int,
                 keeper: LeaseKeeper, workdir: Path, deadline: float | None) -> None:
        self.settings = settings
        self.store = store
        self.job = job
        self.attempt = attempt
        self.keeper = keeper
        self.workdir = workdir
        self.deadline = deadline
        self.total_steps: int | None = None
        self.last_step: Any = None  # crma_core StepMetrics
        self.last_val_loss: float | None = None

    # -- database writes, fenced -----------------------------------------------------------
    def _fenced_write(self, write) -> bool:  # noqa: ANN001 - a callable taking the session
        """Run `write` if this attempt still holds the lease. While the database is
        unreachable, training waits here and retries (R7: an outage shorter than the lease
        must not cost the attempt); once the lease keeper presumes the lease lost (no
        heartbeat for a whole lease), it gives up and the attempt stops as fenced."""
        delay = 0.2
        while True:
            try:
                with session_scope(self.settings.resolved_database_url) as session:
                    if not leases.holds_lease(session, job_id=self.job.id, attempt=self.attempt):
                        self.keeper.fenced = True
                        return False
                    write(session)
                return True
            except Exception as error:
                if not database_unreachable(error):
                    raise
                if self.keeper.fenced or self.keeper.lost:
                    return False
                log.warning("job %s attempt %d: database unreachable (%s); retrying in %.1fs",
                            self.job.id, self.attempt, type(error).__name__, delay)
                time.sleep(delay)
                delay = min(2 * delay, max(0.2, self.settings.heartbeat_s))

    def _event(self, session, *, message: str, dedupe_key: str, type: str = "message",  # noqa: A002
               data: dict[str, Any] | None = None, level: str = "info") -> None:
        record_event(session, job_id=self.job.id, message=message, level=level, type=type,
                     data=data, dedupe_key=dedupe_key, attempt=self.attempt)

    # -- callbacks -------------------------------------------------------------------------
    def on_step(self, metrics) -> None:  # noqa: ANN001 - crma_core.StepMetrics
        self.last_step = metrics
        self.keeper.trained_tokens = metrics.trained_tokens
        data = step_event_data(metrics, total_steps=self.total_steps)
        total = f"/{self.total_steps}" if self.total_steps else ""
        self._fenced_write(lambda s: self._event(
            s, type="metrics", dedupe_key=f"metrics:step:{metrics.step}", data=data,
            message=f"Step {metrics.step}{total}: training loss={metrics.loss:.4f}"))
        if self.settings.worker_step_delay_s > 0:
            time.sleep(self.settings.worker_step_delay_s)  # tests only (see Settings)

    def on_eval(self, metrics) -> None:  # noqa: ANN001 - crma_core.EvalMetrics
        self.last_val_loss = metrics.val_loss
        self._fenced_write(lambda s: self._event(
            s, type="metrics", dedupe_key=f"eval:step:{metrics.step}",
            data={"step": metrics.step, "valid_loss": metrics.val_loss},
            message=f"Step {metrics.step}: validation loss={metrics.val_loss:.4f}"))

    def should_stop(self) -> str | None:
        reason = self.keeper.stop_reason()
        if reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            reason = "time_limit"
        return reason

    def on_checkpoint(self, step: int, directory: Path) -> None:
        self.save_checkpoint(step, directory)

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self, step: int, directory: Path) -> bool:
        """Upload a checkpoint directory and move the job's resume pointer to it. The objects
        go under an attempt-specific prefix, so a stale attempt can never overwrite the files
        a newer attempt's pointer refers to."""
        if self.keeper.fenced or self.keeper.lost:
            return False
        prefix = f"{keys.checkpoint_prefix(self.job.account_id, self.job.id, step)}" \
                 f"attempt-{self.attempt}/"
        upload_directory(self.store, directory, prefix)
        tokens = self.last_step.trained_tokens if self.last_step else self.keeper.trained_tokens
        metrics = {"step": step, "trained_tokens": tokens}
        if self.last_step is not None:
            metrics["train_loss"] = self.last_step.loss
        if self.last_val_loss is not None:
            metrics["valid_loss"] = self.last_val_loss

        def write(session) -> None:  # noqa: ANN001
            if not leases.record_checkpoint_step(session, job_id=self.job.id,
                                                 attempt=self.attempt, step=step,
                                                 trained_tokens=tokens):
                return
            insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" \
                else sqlite.insert
            session.execute(insert(Checkpoint).values(
                id=new_id("checkpoint"), job_id=self.job.id, step=step, attempt=self.attempt,
                storage_prefix=prefix, metrics=metrics, created_at=leases.db_now(session),
            ).on_conflict_do_nothing())
            self._event(session, dedupe_key=f"checkpoint:step:{step}",
                        data={"step": step, "trained_tokens": tokens},
                        message=f"Checkpoint saved at step {step}")

        return self._fenced_write(write)

    def download_checkpoint(self) -> Path | None:
        """The directory of the checkpoint to resume from, or None for a fresh start."""
        step = self.job.last_checkpoint_step
        if step is None:
            return None
        with session_scope(self.settings.resolved_database_url) as session:
            prefix = session.scalar(select(Checkpoint.storage_prefix).where(
                Checkpoint.job_id == self.job.id, Checkpoint.step == step))
        if prefix is None:
            log.warning("job %s: no checkpoint row for step %s; starting over", self.job.id, step)
            return None
        target = self.workdir / "resume"
        download_prefix(self.store, prefix, target)
        return target

    # -- the run ---------------------------------------------------------------------------
    def run(self, *, model_dir: Path, train_file: Path, validation_file: Path | None,
            recipe_settings) -> TrainingOutcome:  # noqa: ANN001 - worker.job_config.RecipeSettings
        from crma_core.callbacks import TrainCallbacks
        from crma_core.recipe import Recipe

        callbacks = TrainCallbacks(on_step=self.on_step, on_eval=self.on_eval,
                                   should_stop=self.should_stop,
                                   on_checkpoint=self.on_checkpoint)
        recipe = Recipe(model_dir=model_dir, train_file=train_file,
                        validation_file=validation_file, crma=recipe_settings.crma,
                        lora=recipe_settings.lora, train=recipe_settings.train,
                        callbacks=callbacks)
        try:
            resume = self.download_checkpoint()
            recipe.setup(resume_from=resume)
            self.total_steps = recipe.plan.total_steps(len(recipe.rows))
            self.keeper.trained_tokens = recipe.state.trained_tokens
            if resume is not None:
                self._fenced_write(lambda s: self._event(
                    s, dedupe_key=f"resumed:{self.attempt}",
                    data={"step": recipe.state.step, "attempt": self.attempt},
                    message=f"Resumed from the checkpoint at step {recipe.state.step} "
                            f"(attempt {self.attempt})"))
            result = recipe.train()
            reason = result.stop_reason
            outcome = TrainingOutcome(stop_reason=reason, trained_tokens=result.trained_tokens,
                                      result=result.to_dict())
            if reason in PUBLISHED:
                outcome.bundle_dir = self.workdir / "bundle"
                recipe.export_artifacts(outcome.bundle_dir)
            elif reason in HANDED_BACK and recipe.state.step:
                directory = self.workdir / "final-checkpoint"
                recipe.save_checkpoint(directory)
                self.save_checkpoint(recipe.state.step, directory)
                shutil.rmtree(directory, ignore_errors=True)
            return outcome
        finally:
            recipe.cleanup()


def step_event_data(metrics, *, total_steps: int | None) -> dict[str, Any]:  # noqa: ANN001
    """OpenAI-style metrics event data plus our gradient-stability figures."""
    data: dict[str, Any] = {
        "step": metrics.step, "total_steps": total_steps, "train_loss": metrics.loss,
        "learning_rate": metrics.lr, "grad_norm": metrics.grad_norm, "clipped": metrics.clipped,
        "tokens_per_s": round(metrics.tokens_per_s, 2), "trained_tokens": metrics.trained_tokens,
        "epoch": metrics.epoch,
    }
    crma = metrics.crma or {}
    for key, name in (("spectral_norm", "crma_spectral_norm_max"),
                      ("marginal_error", "crma_marginal_error_max")):
        values = [float(v) for v in crma.get(key) or []]
        if values:
            data[name] = max(values)
    alphas = [float(v) for v in crma.get("alpha") or []]
    if alphas:
        data["crma_alpha_mean"] = sum(alphas) / len(alphas)
        data["crma_alpha_max"] = max(alphas)
    return data
