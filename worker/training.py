"""One attempt's training: crma_core's Recipe with callbacks that record progress and
checkpoints through the attempt (app/services/attempts.py: fenced by the lease), and stop on
cancel, budget, lost lease, shutdown or the time limit."""

from __future__ import annotations

import logging
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.services import training_events
from app.services.attempts import Attempt
from app.services.inference_targets import CHECKPOINT_SERVING_DIR
from app.services.job_inputs import fetch_data_files
from worker.lease_keeper import LeaseKeeper

log = logging.getLogger(__name__)

# Stop reasons after which the adapter is published (budget: a job stopped at its budget
# still delivers the adapter trained so far).
PUBLISHED = ("completed", "max_steps", "budget")
# Stop reasons after which the attempt checkpoints and hands the job back to the queue.
HANDED_BACK = ("shutdown", "time_limit")


@dataclass
class TrainingOutcome:
    stop_reason: str
    trained_tokens: int
    result: dict[str, Any] | None = None
    bundle_dir: Path | None = None


class AttemptTraining:
    """The callbacks of one attempt's training (crma_core.TrainCallbacks)."""

    def __init__(self, *, attempt: Attempt, keeper: LeaseKeeper, workdir: Path,
                 deadline: float | None) -> None:
        self.attempt = attempt
        self.keeper = keeper
        self.workdir = workdir
        self.deadline = deadline
        self.total_steps: int | None = None
        self.last_step: Any = None  # crma_core StepMetrics
        self.last_val_loss: float | None = None
        self.recipe: Any = None  # crma_core Recipe of a fine-tune (not a continual stage)

    def callbacks(self):  # noqa: ANN201 - crma_core.TrainCallbacks
        from crma_core.callbacks import TrainCallbacks

        return TrainCallbacks(on_step=self.on_step, on_eval=self.on_eval,
                              should_stop=self.should_stop, on_checkpoint=self.on_checkpoint,
                              on_memory=self.on_memory)

    def on_step(self, metrics) -> None:  # noqa: ANN001 - crma_core.StepMetrics
        self.last_step = metrics
        self.attempt.record_step(metrics, total_steps=self.total_steps)
        delay = self.attempt.settings.worker_step_delay_s
        if delay > 0:
            time.sleep(delay)  # tests only (see Settings)

    def on_eval(self, metrics) -> None:  # noqa: ANN001 - crma_core.EvalMetrics
        self.last_val_loss = metrics.val_loss
        self.attempt.record_eval(metrics)

    def on_memory(self, event) -> None:  # noqa: ANN001 - crma_core.MemoryEvent
        self.attempt.record(training_events.memory_event(event, attempt=self.attempt.number))

    def should_stop(self) -> str | None:
        reason = self.keeper.stop_reason()
        if reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            reason = "time_limit"
        return reason

    def on_checkpoint(self, step: int, directory: Path) -> None:
        self.save_checkpoint(step, directory)

    def save_checkpoint(self, step: int, directory: Path) -> bool:
        if self.recipe is not None:
            self._export_for_serving(directory / CHECKPOINT_SERVING_DIR)
        return self.attempt.save_checkpoint(step, directory,
                                            metrics=self.checkpoint_metrics(directory))

    def checkpoint_metrics(self, directory: Path) -> dict[str, Any]:
        """crma_core's metrics of the checkpoint (OpenAI's names, its
        checkpoint_metrics.json) where the recipe wrote them, else the last step's loss and
        the last validation loss (a continual stage's); and the trained tokens so far."""
        from crma_core.callbacks import CHECKPOINT_METRICS

        tokens = (self.last_step.trained_tokens if self.last_step
                  else self.attempt.trained_tokens)
        metrics: dict[str, Any] = {"trained_tokens": tokens}
        written = Path(directory) / CHECKPOINT_METRICS
        if written.is_file():
            metrics.update({k: v for k, v in json.loads(written.read_text()).items()
                            if v is not None and k not in ("step", "is_best")})
            return metrics
        if self.last_step is not None:
            metrics["train_loss"] = self.last_step.loss
        if self.last_val_loss is not None:
            metrics["valid_loss"] = self.last_val_loss
        return metrics

    def _export_for_serving(self, directory: Path) -> None:
        """The checkpoint's weights as an adapter the engine serves (its
        `fine_tuned_model_checkpoint` name calls it): small, stored with the checkpoint."""
        try:
            self.recipe.export_adapter(directory)
        except Exception:  # noqa: BLE001 - a checkpoint without it still resumes training
            log.warning("job %s: no serving export in this checkpoint", self.attempt.job.id,
                        exc_info=True)
            shutil.rmtree(directory, ignore_errors=True)

    def download_checkpoint(self) -> Path | None:
        return self.attempt.download_checkpoint(self.workdir / "resume")

    def start_from_source(self, recipe) -> None:  # noqa: ANN001 - crma_core Recipe
        """A continued job: its LoRA (and CRMA) start from the source adapter's weights."""
        from crma_core.warm_start import load_adapter_weights

        source = self.attempt.download_start(self.workdir / "start")
        if source is None:
            return
        info = load_adapter_weights(model=recipe.built.model, crma=recipe.built.crma,
                                    source=source)
        self.attempt.record_started_from(info)

    def run(self, *, model_dir: Path) -> TrainingOutcome:
        """A fine-tuning job: the recipe on the job's files, resumed from its checkpoint."""
        from crma_core.recipe import Recipe

        job = self.attempt.job
        train_file, validation_file = fetch_data_files(
            store=self.attempt.store, training_key=job.training_key,
            validation_key=job.validation_key, workdir=self.workdir)
        configs = self.attempt.recipe_configs(has_validation=validation_file is not None)
        recipe = Recipe(model_dir=model_dir, train_file=train_file,
                        validation_file=validation_file, crma=configs.crma, lora=configs.lora,
                        train=configs.train, callbacks=self.callbacks())
        self.recipe = recipe
        try:
            resume = self.download_checkpoint()
            recipe.setup(resume_from=resume)
            if resume is None:  # a resumed attempt already holds what it started from
                self.start_from_source(recipe)
            self.total_steps = recipe.plan.total_steps(len(recipe.rows))
            self.attempt.trained_tokens = recipe.state.trained_tokens
            if resume is not None:
                self.attempt.record_resumed(recipe.state.step)
            self.attempt.record(training_events.memory_plan_event(
                recipe.memory_plan.to_dict(), attempt=self.attempt.number))
            result = recipe.train()
            reason = result.stop_reason
            outcome = TrainingOutcome(stop_reason=reason, trained_tokens=result.trained_tokens,
                                      result={**result.to_dict(), "metrics": result.summary()})
            if reason in PUBLISHED:
                self.attempt.record(training_events.final_metrics_event(result.summary()))
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
