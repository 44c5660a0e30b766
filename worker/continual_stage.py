"""One continual-run stage (a Job of kind `continual_stage`): train domain `stage_index` with
crma_core.continual.run_stage from the state the previous stage stored, then store this
stage's state, the run's report and the bundle (app/services/continual_stages.py keeps the
stored state and the report).

The stage's bundle (published by the runner with the run id as owner, so stages add to the
run's artifacts; crma_core.continual_state.export_bundle): one LoRA per domain under
`loras/<i>-<name>/` (modular, frozen) or `lora/` (naive); with `baseline`, each domain's
baseline LoRA under `baseline/<i>-<name>/`; modular: every CRMA state that serves a domain
under `crma/after-<k>/` and the shared CRMA at the top; `continual_report.json`,
`plots/loss_matrix.png` (and `plots/versus_baseline.png`), `manifest.json` (per domain the
paths of its served pair). The run's `report` gets crma_core's report (versus_baseline,
general_retention, serving, the matrices, drift), the per-stage figures, those paths and
`routing` (how often the engine's router picks each domain for its own holdout prompts) (a
fenced write, before the runner publishes and finishes the stage)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from app.services import continual_stages
from app.services.attempts import Attempt
from app.services.job_inputs import fetch_data_files
from worker.training import HANDED_BACK, AttemptTraining, TrainingOutcome

log = logging.getLogger(__name__)


def train_stage(training: AttemptTraining, *, model_dir: Path) -> TrainingOutcome:
    """Run stage `job.stage_index` of run `job.continual_run_id`; see the module docstring."""
    from crma_core.continual import run_stage
    from crma_core.continual_config import GENERAL_HOLDOUT_FILE
    from crma_core.continual_state import DomainSpec, export_bundle

    attempt, workdir = training.attempt, training.workdir
    job = attempt.job
    stage = continual_stages.stage_of_run(attempt)
    state_in = continual_stages.download_previous_state(attempt, workdir / "state-in")
    if not job.validation_key:
        raise ValueError("a continual-run stage needs a validation (holdout) file")
    train_file, holdout_file = fetch_data_files(
        store=attempt.store, training_key=job.training_key, validation_key=job.validation_key,
        workdir=workdir)
    config = continual_stages.stage_config(attempt, mode=stage.mode)
    training.total_steps = config.train.planned_steps(max(job.example_count, 1))
    state_out = workdir / "state-out"
    result = run_stage(state_in, DomainSpec(name=stage.name, train_file=train_file,
                                            holdout_file=holdout_file),
                       state_out, model_dir=model_dir, config=config,
                       callbacks=training.callbacks(),
                       resume_from=training.download_checkpoint(),
                       checkpoint_on_stop=HANDED_BACK,
                       general_holdout=GENERAL_HOLDOUT_FILE if state_in is None else None)
    # The baseline LoRA's tokens are trained (and billed) like the run's own.
    outcome = TrainingOutcome(stop_reason=result.stop_reason,
                              trained_tokens=result.trained_tokens
                              + result.baseline_trained_tokens,
                              result=result.summary())
    if not result.finished:
        return outcome
    continual_stages.upload_state(attempt, state_out)
    outcome.bundle_dir = workdir / "bundle"
    manifest = export_bundle(state_out, outcome.bundle_dir)
    report = _report(state_out, mode=stage.mode, seed=stage.seed, files=manifest["domains"])
    report["routing"] = _routing(model_dir, state_out, outcome.bundle_dir,
                                 device=attempt.settings.worker_device)
    continual_stages.write_report(attempt, report)
    shutil.rmtree(state_out, ignore_errors=True)
    return outcome


def _routing(model_dir: Path, state_dir: Path, bundle_dir: Path, *, device: str) -> dict | None:
    """How often the engine's router (lowest prompt loss among the domains' served pairs)
    picks each domain for its own held-out prompts (crma_core.routing); None with one
    domain. Left out of the report, not failing the stage, if it cannot be measured."""
    from crma_core.routing import state_routing_accuracy

    try:
        return state_routing_accuracy(model_dir, state_dir, bundle_dir, device=device)
    except Exception as error:  # noqa: BLE001 - the stage itself succeeded
        log.warning("routing accuracy not measured", exc_info=True)
        return {"error": f"not measured: {type(error).__name__}"}


def _report(state_dir: Path, *, mode: str, seed: int, files: list[dict]) -> dict:
    """The run's report: crma_core's (versus_baseline, general_retention, serving, matrix,
    drift), the stages' figures, and where each domain's served pair is in the artifacts."""
    from crma_core.continual_state import REPORT_FILE, read_state

    state = read_state(state_dir)
    report = json.loads((state_dir / REPORT_FILE).read_text())
    return {"mode": mode, "seed": seed, **report,
            "baseline": bool(state["config"].get("baseline")),
            "served_files": files,
            "stages": [entry.get("stage") for entry in state["domains"]],
            "optimizer_policy": state["optimizer_policy"]}
