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
    routing = report["routing"]  # the router's choices for each domain's holdout prompts
    assert routing["examples"] == 8 and routing["skipped"] == 0
    assert set(routing["per_domain"]) == {"notes", "sums"}
    assert sum(sum(row.values()) for row in routing["confusion"].values()) == 8
    assert 0.0 <= routing["accuracy"] <= 1.0

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


def _download_run_bundle(client, headers: dict, run_id: str, target) -> list[str]:
    """Every artifact of the run through the API (list, then each file's download)."""
    listed = client.get(f"/v1/continual/runs/{run_id}/artifacts", headers=headers)
    assert listed.status_code == 200, listed.text
    names = []
    for artifact in listed.json()["data"]:
        response = client.get(artifact["url"], headers=headers, follow_redirects=True)
        assert response.status_code == 200, (artifact["name"], response.status_code)
        assert hashlib.sha256(response.content).hexdigest() == artifact["sha256"]
        path = target / artifact["name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(response.content)
        names.append(artifact["name"])
    return names


def test_a_modular_run_with_baseline_reports_what_crma_adds_and_serves_from_its_artifacts(
        worker_stack, tiny_model_store, tmp_path) -> None:
    """`baseline: true` and a deliberately large CRMA read/write rate (0.01 x 10, so the
    shared CRMA drifts): the run's report leads with versus_baseline, general_retention and
    serving (the guard fired: the first domain keeps its own CRMA state), the baseline's
    tokens are trained and billed, and each domain's served pair, downloaded through the
    API, reproduces the holdout loss the report gives it."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from crma_core.data import eval_batches, load_examples
    from crma_core.loader import load_for_generation
    from crma_core.loop import evaluate_loss
    from crma_core.model import get_crma
    from tests.factories import create_account

    stack = worker_stack
    stack.ensure_workers(2)
    with stack.session() as s:
        account_id, key = create_account(s, plan="pro", credit_micros=50_000_000)
    notes, sums = chat_examples(12), arithmetic_chat_rows(12)
    holdouts = {"notes": notes[8:], "sums": sums[8:]}
    files = {name: (stack.upload_file(account_id, rows[:8]),
                    stack.upload_file(account_id, holdouts[name]))
             for name, rows in (("notes", notes), ("sums", sums))}
    spec = ContinualRunCreate(
        model=MODEL_ID, mode="modular", seed=5, baseline=True, drift_budget_pct=0.5,
        domains=[{"name": name, "training_file": train, "validation_file": holdout}
                 for name, (train, holdout) in files.items()],
        hyperparameters={"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 10,
                         "crma_learning_rate": 0.01, "max_seq_len": 64},
        adapter={"lora_r": 4, "lora_alpha": 8})
    with stack.session() as s:
        view, _ = create_run(s, account_id=account_id, spec=spec, settings=TEST_SETTINGS)
        run_id, job_ids = view.run.id, [stage.job_id for stage in view.stages]
    jobs = []
    for job_id in job_ids:
        job = stack.wait_status(job_id, TERMINAL, 300)
        assert job.status == "succeeded", job.error
        jobs.append(job)

    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(stack.settings), raise_server_exceptions=False) as client:
        run = client.get(f"/v1/continual/runs/{run_id}", headers=headers).json()
        names = _download_run_bundle(client, headers, run_id, tmp_path / "bundle")
    assert (run["status"], run["baseline"], run["drift_budget_pct"]) == ("succeeded", True, 0.5)
    report = run["report"]
    assert report["baseline"] is True and report["domains"] == ["notes", "sums"]

    versus = report["versus_baseline"]
    assert set(versus["backward_pct"]) == {"notes"}
    assert set(versus["forward_pct"]) == {"notes", "sums"}
    base = report["baseline_losses"]
    assert versus["forward_pct"]["sums"] == pytest.approx(
        100 * (base[1] - report["matrix"][1][1]) / base[1])
    general = report["general_retention"]
    assert general["base_loss"] > 0
    assert set(general["served"]) == set(general["baseline"]) == {"notes", "sums"}

    # The guard fired: the shared CRMA drifted past the budget on the first domain, which
    # is served by the CRMA its own stage ended with (drift 0); the newest by the shared.
    serving = {entry["domain"]: entry for entry in report["serving"]}
    assert report["shared_drift_pct"]["notes"] > 0.5
    assert (serving["notes"]["crma_state"], serving["notes"]["crma_stage"]) == ("own", 0)
    assert serving["notes"]["drift_pct"] == 0.0 and report["drift_pct"]["notes"] == 0.0
    assert "over the 0.5% budget" in serving["notes"]["reason"]
    assert serving["sums"]["crma_state"] == "shared"

    # The baseline's tokens are trained, and billed, with the stage's own.
    for job, stage in zip(jobs, report["stages"], strict=True):
        assert stage["baseline_trained_tokens"] > 0
        assert job.trained_tokens == stage["trained_tokens"] + stage["baseline_trained_tokens"]

    # Each domain's served pair, from the downloaded bundle, scores what the report says.
    files_by_domain = {f["name"]: f for f in report["served_files"]}
    assert files_by_domain["notes"]["crma"] == "crma/after-0"
    assert {"manifest.json", "plots/versus_baseline.png", "crma/after-0/crma.safetensors",
            "baseline/0-notes/adapter_model.safetensors"} <= set(names)
    model_dir = tiny_model_store / MODEL_ID
    for index, name in enumerate(("notes", "sums")):
        holdout = tmp_path / f"{name}.jsonl"
        holdout.write_text("".join(json.dumps(row) + "\n" for row in holdouts[name]))
        for baseline, expected in ((False, report["matrix"][-1][index]),
                                   (True, base[index])):
            model, tokenizer = load_for_generation(model_dir, tmp_path / "bundle", domain=name,
                                                   baseline=baseline)
            rows, _ = load_examples(holdout, tokenizer, max_seq_len=64)
            loss = evaluate_loss(model, eval_batches(rows, batch_size=2,
                                                     pad_id=tokenizer.pad_token_id))
            assert loss == pytest.approx(expected, rel=1e-5), (name, baseline)
            if get_crma(model) is not None:
                get_crma(model).remove()
