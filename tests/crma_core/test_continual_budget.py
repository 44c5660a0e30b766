"""The drift budget, the baseline trained alongside, general retention and the served pairs of
a modular continual run, on tiny random-weight models. A deliberately large CRMA read/write
learning rate makes the shared CRMA drift, so the guard has to fire."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from crma_core.continual import run_continual, run_stage
from crma_core.continual_state import (ContinualConfig, DomainSpec, export_bundle, read_state,
                                       state_files)
from crma_core.data import eval_batches, load_examples
from crma_core.errors import ConfigError
from crma_core.io import load_tensors
from crma_core.loader import load_for_generation
from crma_core.loop import evaluate_loss
from crma_core.model import get_crma
from crma_core.settings import LoraSettings, TrainConfig
from crma_core.testing import TEXT_DOMAINS, write_jsonl, write_text_domains

BUDGET = 0.5
SEQ = 32


@pytest.fixture(scope="module")
def domains(tmp_path_factory) -> list[DomainSpec]:
    return write_text_domains(tmp_path_factory.mktemp("budget-domains"))


@pytest.fixture(scope="module")
def general(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("budget-general")
    return write_jsonl(root / "general.jsonl", [
        {"text": "a friend in need is a friend indeed, said the old sailor"},
        {"text": "the rain in spain stays mainly in the plain"},
        {"text": "early to bed and early to rise makes a man healthy and wise"}])


def _config(mode: str, **extra) -> ContinualConfig:
    # lr_rw 0.3: read/write move far enough in 3 steps to break what earlier LoRAs learnt.
    train = TrainConfig(epochs=1, batch_size=4, max_seq_len=SEQ, lr_main=5e-3, lr_rw=0.3,
                        lr_mix=1e-2, max_steps=3, seed=7, lr_schedule="constant")
    return ContinualConfig(mode=mode, lora=LoraSettings(r=4, alpha=8), train=train, **extra)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dirs) -> Path:
    return tiny_model_dirs["llama"]


@pytest.fixture(scope="module")
def modular(model_dir, domains, general, tmp_path_factory):
    root = tmp_path_factory.mktemp("budget-modular")
    config = _config("modular", drift_budget_pct=BUDGET, baseline=True)
    results = run_continual(domains, model_dir=model_dir, config=config, state_root=root,
                            general_holdout=general)
    return results, root


@pytest.fixture(scope="module")
def frozen(model_dir, domains, tmp_path_factory):
    root = tmp_path_factory.mktemp("budget-frozen")
    return run_continual(domains, model_dir=model_dir, config=_config("frozen"),
                         state_root=root), root


def _holdout_loss(model, tokenizer, path: Path) -> float:
    rows, _ = load_examples(path, tokenizer, max_seq_len=SEQ)
    return evaluate_loss(model, eval_batches(rows, batch_size=4, pad_id=tokenizer.pad_token_id))


def test_the_guard_fires_and_keeps_every_domain_within_budget(modular):
    results, _ = modular
    report = results[-1].report
    shared = report["shared_drift_pct"]
    # The large CRMA rate does make the shared CRMA forget...
    assert max(shared.values()) > BUDGET
    # ...but no domain is served beyond the budget, and the report says why.
    assert all(d <= BUDGET for d in report["drift_pct"].values())
    assert report["drift_budget_pct"] == BUDGET
    fired = [s for s in report["serving"] if s["shared_drift_pct"] > BUDGET]
    assert fired
    for entry in fired:
        assert entry["crma_state"] in ("own", "earlier") and entry["crma_stage"] < 2
        assert "over the 0.5% budget" in entry["reason"]
        assert entry["drift_pct"] <= BUDGET
    for entry in report["serving"]:
        assert entry["loss"] == report["matrix"][-1][entry["index"]]
        assert entry["loss"] == report["shared_matrix"][entry["crma_stage"]][entry["index"]]
    assert report["serving"][-1]["crma_state"] == "shared"
    assert "decision_basis" in report


def test_the_report_leads_with_what_crma_adds_over_the_baseline(modular):
    results, _ = modular
    report = results[-1].report
    assert list(report)[:3] == ["domains", "versus_baseline", "general_retention"]
    versus, baseline = report["versus_baseline"], report["baseline_losses"]
    final, diagonal = report["matrix"][-1], report["diagonal"]
    for i, name in enumerate(report["domains"]):
        forward = 100 * (baseline[i] - diagonal[i]) / baseline[i]
        assert versus["forward_pct"][name] == pytest.approx(forward)
        if i < 2:
            assert versus["backward_pct"][name] == pytest.approx(
                100 * (baseline[i] - final[i]) / baseline[i])
    assert set(versus["backward_pct"]) == {"alpha", "beta"}
    general = report["general_retention"]
    assert general["base_loss"] > 0
    assert set(general["served"]) == set(general["baseline"]) == set(TEXT_DOMAINS)
    for row in list(general["served"].values()) + list(general["baseline"].values()):
        assert row["change_pct"] == pytest.approx(
            100 * (row["loss"] - general["base_loss"]) / general["base_loss"])


def test_baseline_is_frozen_mode_within_the_run_and_counts_its_tokens(modular, frozen):
    (m_results, m_root), (f_results, f_root) = modular, frozen
    state = read_state(m_root / "stage-2")
    for i, (m, f) in enumerate(zip(m_results, f_results)):
        # Same LoRA init and batches as frozen mode: the same losses and tensors, bit for bit.
        assert m.baseline_loss == f.row[i] == f_results[-1].row[i]
        assert m.baseline_trained_tokens == f.trained_tokens > 0
        assert m.trained_tokens == f.trained_tokens  # the run's own tokens, counted apart
        assert m.summary()["baseline_trained_tokens"] == m.baseline_trained_tokens
        ours = load_tensors(m_root / "stage-2" / "loras" / f"b{i}" / "adapter_model.safetensors")
        theirs = load_tensors(f_root / "stage-2" / "loras" / f"d{i}" /
                              "adapter_model.safetensors")
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert [d["baseline"]["adapter"] for d in state["domains"]] == ["b0", "b1", "b2"]


def test_served_pairs_load_from_the_bundle_and_reproduce_the_report(modular, model_dir,
                                                                    domains, tmp_path):
    results, root = modular
    report = results[-1].report
    manifest = export_bundle(root / "stage-2", tmp_path / "bundle")
    names = {f["name"] for f in manifest["files"]}
    assert "plots/versus_baseline.png" in names
    for entry in manifest["domains"]:
        serving = report["serving"][entry["index"]]
        assert entry["crma"] == f"crma/after-{serving['crma_stage']}"
    held = [s["index"] for s in report["serving"] if s["crma_state"] != "shared"]
    assert held  # the guard fired (see above)
    for i in (held[0], 2):  # one domain on a snapshot, one on the shared CRMA
        model, tokenizer = load_for_generation(model_dir, tmp_path / "bundle",
                                               domain=domains[i].name)
        assert get_crma(model) is not None
        assert _holdout_loss(model, tokenizer, domains[i].holdout_file) == pytest.approx(
            report["matrix"][-1][i], abs=1e-6)
        get_crma(model).remove()
        base, tokenizer = load_for_generation(model_dir, tmp_path / "bundle", domain=i,
                                              baseline=True)
        assert get_crma(base) is None
        assert _holdout_loss(base, tokenizer, domains[i].holdout_file) == pytest.approx(
            report["baseline_losses"][i], abs=1e-6)
    with pytest.raises(ConfigError, match="pass domain="):
        load_for_generation(model_dir, tmp_path / "bundle")
    with pytest.raises(ConfigError, match="no domain 'delta'"):
        load_for_generation(model_dir, tmp_path / "bundle", domain="delta")


def test_stage_by_stage_from_the_state_equals_one_process(modular, model_dir, domains,
                                                          general, tmp_path):
    """The snapshots, serving and general holdout travel in the state directory."""
    results, root = modular
    state = None
    for t, domain in enumerate(domains):
        out = tmp_path / f"s{t}"
        result = run_stage(state, domain, out, model_dir=model_dir,
                           config=_config("modular", drift_budget_pct=BUDGET, baseline=True)
                           if state is None else None,
                           general_holdout=general if state is None else None)
        assert result.row == results[t].row
        assert result.report == results[t].report
        state = out
    stored = read_state(state)
    assert stored["served"] == read_state(root / "stage-2")["served"]
    files = state_files(state)
    assert "holdouts/general.jsonl" in files
    for k in stored["crma_states"] or []:
        assert f"crma_states/after-{k}/crma.safetensors" in files
    with pytest.raises(ConfigError, match="general holdout"):
        run_stage(state, domains[0], tmp_path / "never", model_dir=model_dir,
                  general_holdout=general)


def test_budget_zero_and_validation():
    assert ContinualConfig(drift_budget_pct=0).drift_budget_pct == 0
    for bad in (-0.1, float("nan"), "1", True):
        with pytest.raises(ConfigError, match="drift_budget_pct"):
            ContinualConfig(drift_budget_pct=bad)
    with pytest.raises(ConfigError, match="baseline"):
        ContinualConfig(mode="frozen", baseline=True)
    config = ContinualConfig(drift_budget_pct=1.5, baseline=True)
    assert ContinualConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_a_stop_during_the_baseline_resumes_to_the_same_stage(modular, model_dir, domains,
                                                              tmp_path):
    """Stopped while the baseline LoRA trains (a worker's warm shutdown): the checkpoint
    holds the finished main phase, and the resumed stage equals the uninterrupted one."""
    import shutil

    from crma_core.callbacks import TrainCallbacks

    results, root = modular
    saved, calls = tmp_path / "ckpt", []

    def keep(step, directory):
        shutil.rmtree(saved, ignore_errors=True)
        shutil.copytree(directory, saved)

    def stop():
        calls.append(1)  # 3 main steps, then the baseline's: stop before its 2nd step
        return "shutdown" if len(calls) == 5 else None

    stopped = run_stage(root / "stage-0", domains[1], tmp_path / "never", model_dir=model_dir,
                        callbacks=TrainCallbacks(on_checkpoint=keep, should_stop=stop),
                        checkpoint_on_stop=("shutdown",))
    assert stopped.stop_reason == "shutdown" and stopped.state_dir is None
    assert stopped.steps == 3 and stopped.baseline_trained_tokens > 0
    resumed = run_stage(root / "stage-0", domains[1], tmp_path / "out", model_dir=model_dir,
                        resume_from=saved)
    assert resumed.row == results[1].row
    assert resumed.baseline_loss == results[1].baseline_loss
    assert resumed.report == results[1].report
