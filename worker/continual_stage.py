"""One continual-run stage (a Job of kind `continual_stage`): train domain `stage_index` with
crma_core.continual.run_stage and publish the run's state, bundle and report.

Object layout under `keys.continual_state_prefix(account, run)`: `stage-<k>/` holds the
state directory written after stage k (safetensors + JSON: every domain's LoRA or the one
naive LoRA, the current CRMA, holdout copies, the loss matrix). Stage k reads `stage-<k-1>/`
and never overwrites it, so a retried stage always starts from the same state. The earlier
domains' holdouts travel inside the state, so a stage downloads only its own two files.

The stage's bundle (published by the runner with the run id as owner, so stages add to the
run's artifacts): one LoRA per domain under `loras/<i>-<name>/` (modular, frozen) or `lora/`
(naive), the current CRMA (modular), `continual_report.json`, `plots/loss_matrix.png`,
`manifest.json`. `ContinualRun.report` gets the loss matrix, drift and per-stage figures
(a fenced write, before the runner publishes and finishes the stage)."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from app.db.models import ContinualRun, ContinualStage
from app.storage import keys
from worker.inputs import download_prefix, upload_directory
from worker.training import HANDED_BACK, TrainingOutcome

log = logging.getLogger(__name__)


class MissingStageState(RuntimeError):
    """The state of the previous stage is not in the object store."""


def stage_prefix(account_id: str, run_id: str, stage_index: int) -> str:
    return f"{keys.continual_state_prefix(account_id, run_id)}stage-{int(stage_index)}/"


def _run_and_stage(training, job) -> tuple[dict[str, Any], str]:  # noqa: ANN001
    from app.db.session import session_scope

    with session_scope(training.settings.resolved_database_url) as session:
        run = session.execute(
            select(ContinualRun.mode, ContinualRun.seed).where(ContinualRun.id == job.continual_run_id)
        ).one()
        name = session.scalar(select(ContinualStage.name).where(
            ContinualStage.run_id == job.continual_run_id, ContinualStage.index == job.stage_index))
    return {"mode": run.mode, "seed": run.seed}, name or f"domain-{job.stage_index}"


def stage_config(*, settings, job, mode: str):  # noqa: ANN001
    """The run's ContinualConfig from the stage job's stored settings (the same for every
    stage of a run: the API copies the run's hyperparameters, adapter and seed into each)."""
    from crma_core.config import CRMAConfig
    from crma_core.continual_state import ContinualConfig
    from worker.job_config import recipe_settings

    recipe = recipe_settings(settings=settings, hyperparameters=job.hyperparameters,
                             adapter=job.adapter, seed=job.seed, token_budget=job.token_budget,
                             example_count=job.example_count, has_validation=True)
    return ContinualConfig(mode=mode, lora=recipe.lora, crma=recipe.crma or CRMAConfig(),
                           train=recipe.train, score_base=True)


def train_stage(*, settings, store, job, training, model_dir: Path) -> TrainingOutcome:  # noqa: ANN001
    """Run stage `job.stage_index` of run `job.continual_run_id`; see the module docstring."""
    from crma_core.callbacks import TrainCallbacks
    from crma_core.continual import run_stage
    from crma_core.continual_state import DomainSpec, export_bundle

    workdir = training.workdir
    run, name = _run_and_stage(training, job)
    index = int(job.stage_index)
    state_in = None
    if index > 0:
        state_in = workdir / "state-in"
        previous = stage_prefix(job.account_id, job.continual_run_id, index - 1)
        if not download_prefix(store, previous, state_in):
            raise MissingStageState(f"stage {index - 1} of run {job.continual_run_id} left no "
                                    "state to continue from")
    if not job.validation_key:
        raise ValueError("a continual-run stage needs a validation (holdout) file")
    train_file, holdout_file = workdir / "training.jsonl", workdir / "validation.jsonl"
    store.get_to_file(job.training_key, train_file)
    store.get_to_file(job.validation_key, holdout_file)
    config = stage_config(settings=settings, job=job, mode=run["mode"])
    cfg = config.train
    planned = cfg.epochs * math.ceil(max(job.example_count, 1) / cfg.batch_size)
    training.total_steps = min(planned, cfg.max_steps) if cfg.max_steps else planned
    callbacks = TrainCallbacks(on_step=training.on_step, on_eval=training.on_eval,
                               should_stop=training.should_stop,
                               on_checkpoint=training.on_checkpoint)
    state_out = workdir / "state-out"
    result = run_stage(state_in, DomainSpec(name=name, train_file=train_file,
                                            holdout_file=holdout_file),
                       state_out, model_dir=model_dir,
                       config=config,
                       callbacks=callbacks, resume_from=training.download_checkpoint(),
                       checkpoint_on_stop=HANDED_BACK)
    outcome = TrainingOutcome(stop_reason=result.stop_reason,
                              trained_tokens=result.trained_tokens, result=result.summary())
    if not result.finished:
        return outcome
    upload_directory(store, state_out, stage_prefix(job.account_id, job.continual_run_id, index))
    outcome.bundle_dir = workdir / "bundle"
    export_bundle(state_out, outcome.bundle_dir)
    _write_report(training, job, state_out, mode=run["mode"], seed=run["seed"])
    shutil.rmtree(state_out, ignore_errors=True)
    return outcome


def _write_report(training, job, state_dir: Path, *, mode: str, seed: int) -> None:  # noqa: ANN001
    import json

    from crma_core.continual_state import REPORT_FILE, read_state

    state = read_state(state_dir)
    report = json.loads((state_dir / REPORT_FILE).read_text())
    report = {"mode": mode, "seed": seed, **report,
              "stages": [entry.get("stage") for entry in state["domains"]],
              "optimizer_policy": state["optimizer_policy"]}

    def write(session) -> None:  # noqa: ANN001
        session.execute(update(ContinualRun).where(ContinualRun.id == job.continual_run_id)
                        .values(report=report).execution_options(synchronize_session=False))

    training._fenced_write(write)
