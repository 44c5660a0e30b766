"""A continual run end to end through real `crma worker` processes: two domains on the tiny
model in modular mode, created as the API creates them (one transaction, stage 0 offered),
each stage trained by worker/continual_stage.py from the state the previous stage stored."""

from __future__ import annotations

import hashlib
import json

import pytest
from sqlalchemy import select

from app.db.models import Artifact, ContinualRun
from app.schemas.continual import ContinualRunCreate
from app.services.continual_runs import create_run
from app.storage import keys
from app.storage.factory import open_store
from crma_core.testing import arithmetic_chat_rows
from tests.factories import TEST_SETTINGS, make_account
from tests.worker.stack import MODEL_ID, TERMINAL, chat_examples

pytestmark = pytest.mark.integration


def _read(store, key: str) -> bytes:
    return b"".join(store.iter_chunks(key))


def test_two_domain_modular_run_publishes_loras_crma_and_the_loss_matrix(worker_stack) -> None:
    stack = worker_stack
    stack.ensure_workers(2)
    with stack.session() as s:
        account_id = make_account(s, plan="pro", credit_micros=50_000_000)
    notes, sums = chat_examples(12), arithmetic_chat_rows(12)
    files = {
        "notes": (stack.upload_file(account_id, notes[:8]), stack.upload_file(account_id, notes[8:])),
        "sums": (stack.upload_file(account_id, sums[:8]), stack.upload_file(account_id, sums[8:])),
    }
    spec = ContinualRunCreate(
        model=MODEL_ID, mode="modular", seed=3,
        domains=[{"name": name, "training_file": train, "validation_file": holdout}
                 for name, (train, holdout) in files.items()],
        hyperparameters={"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 1.0},
        adapter={"crma": True, "n_streams": 4, "rank": 1, "lora_r": 4, "lora_alpha": 8})
    with stack.session() as s:
        view, _ = create_run(s, account_id=account_id, spec=spec, settings=TEST_SETTINGS)
        run_id, job_ids = view.run.id, [stage.job_id for stage in view.stages]

    for job_id in job_ids:
        job = stack.wait_status(job_id, TERMINAL, 240)
        assert job.status == "succeeded", job.error
        assert job.stop_reason == "completed" and job.trained_tokens > 0
        assert sorted(stack.step_losses(job_id)) == [1, 2, 3, 4]  # 8 examples, batch 2

    with stack.session() as s:
        run = s.execute(select(ContinualRun).where(ContinualRun.id == run_id)).scalar_one()
        artifacts = {a.name: a for a in s.scalars(select(Artifact).where(Artifact.owner_id == run_id))}
    assert run.status == "succeeded" and run.finished_at is not None
    report = run.report
    assert report["mode"] == "modular" and report["domains"] == ["notes", "sums"]
    matrix = report["matrix"]
    assert [len(row) for row in matrix] == [1, 2]  # 2×2 lower-triangular
    assert all(isinstance(v, float) and v > 0 for row in matrix for v in row)
    drift = 100 * (matrix[1][0] - matrix[0][0]) / matrix[0][0]
    assert report["drift_pct"] == {"notes": pytest.approx(drift)}
    assert report["drift_mean_pct"] == pytest.approx(drift)
    assert len(report["base_losses"]) == 2 and len(report["stages"]) == 2
    assert [st["steps"] for st in report["stages"]] == [4, 4]

    # One LoRA per domain + the current CRMA, with the report and the heatmap.
    assert {"loras/0-notes/adapter_model.safetensors", "loras/0-notes/adapter_config.json",
            "loras/1-sums/adapter_model.safetensors", "loras/1-sums/adapter_config.json",
            "crma.safetensors", "crma_config.json", "continual_report.json",
            "plots/loss_matrix.png", "manifest.json"} <= set(artifacts)
    assert not any(name.startswith("lora/") for name in artifacts)
    store = open_store(stack.settings)
    for artifact in artifacts.values():
        data = _read(store, artifact.storage_key)
        assert hashlib.sha256(data).hexdigest() == artifact.sha256
    published = json.loads(_read(store, artifacts["continual_report.json"].storage_key))
    assert published["matrix"] == matrix

    # The state each stage left behind; stage 1 continued from stage 0's.
    prefix = keys.continual_state_prefix(account_id, run_id)
    state_keys = store.list_keys(prefix)
    for stage in (0, 1):
        assert f"{prefix}stage-{stage}/state.json" in state_keys
    assert all(k.endswith((".safetensors", ".json", ".jsonl")) for k in state_keys)
    state1 = json.loads(_read(store, f"{prefix}stage-1/state.json"))
    assert state1["matrix"] == matrix and [d["adapter"] for d in state1["domains"]] == ["d0", "d1"]
    d0_before = _read(store, f"{prefix}stage-0/loras/d0/adapter_model.safetensors")
    assert _read(store, f"{prefix}stage-1/loras/d0/adapter_model.safetensors") == d0_before
    assert _read(store, f"{prefix}stage-0/crma/crma.safetensors") != \
        _read(store, f"{prefix}stage-1/crma/crma.safetensors")
