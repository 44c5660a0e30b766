"""Continual learning on tiny random-weight models: the three modes' invariants, what each
evaluation activates, adding a domain later vs one process, and the state directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from crma_core.callbacks import TrainCallbacks
from crma_core.continual import ContinualRunner, run_continual, run_stage
from crma_core.continual_state import (ContinualConfig, DomainSpec, export_bundle, read_state,
                                       state_files)
from crma_core.errors import CheckpointError, ConfigError
from crma_core.io import load_tensors
from crma_core.settings import LoraSettings, TrainConfig
from crma_core.testing import write_text_domains



@pytest.fixture(scope="module")
def domains(tmp_path_factory) -> list[DomainSpec]:
    return write_text_domains(tmp_path_factory.mktemp("cl-domains"))


def _config(mode: str, **train) -> ContinualConfig:
    settings = dict(epochs=1, batch_size=4, max_seq_len=32, lr_main=5e-3, lr_mix=1e-2,
                    max_steps=3, seed=7, lr_schedule="constant")
    return ContinualConfig(mode=mode, lora=LoraSettings(r=4, alpha=8),
                           train=TrainConfig(**{**settings, **train}))


@pytest.fixture(scope="module")
def model_dir(tiny_model_dirs) -> Path:
    return tiny_model_dirs["llama"]


@pytest.fixture(scope="module")
def runs(model_dir, domains, tmp_path_factory) -> dict[str, tuple[list, Path]]:
    """One 3-domain run per mode in one process, with the state saved after each domain."""
    out = {}
    for mode in ("modular", "frozen", "naive"):
        root = tmp_path_factory.mktemp(f"cl-{mode}")
        results = run_continual(domains, model_dir=model_dir, config=_config(mode),
                                state_root=root)
        out[mode] = (results, root)
    return out


def _lora(state: Path, adapter: str) -> dict[str, torch.Tensor]:
    return load_tensors(state / "loras" / adapter / "adapter_model.safetensors")


def _crma(state: Path) -> dict[str, torch.Tensor]:
    return load_tensors(state / "crma" / "crma.safetensors")


def _assert_equal_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_modular_keeps_earlier_loras_and_trains_the_shared_crma(runs):
    results, root = runs["modular"]
    assert [(r.stop_reason, r.steps) for r in results] == [("completed", 3)] * 3
    states = [root / f"stage-{t}" for t in range(3)]
    # LoRA d0 after domain 0 == after domains 1 and 2, bit for bit; same for d1.
    _assert_equal_tensors(_lora(states[0], "d0"), _lora(states[2], "d0"))
    _assert_equal_tensors(_lora(states[1], "d0"), _lora(states[2], "d0"))
    _assert_equal_tensors(_lora(states[1], "d1"), _lora(states[2], "d1"))
    # Every domain trained its own LoRA (B starts at zero, so a trained one is non-zero).
    for adapter in ("d0", "d1", "d2"):
        b = [v for k, v in _lora(states[2], adapter).items() if "lora_B" in k]
        assert b and all(v.abs().sum() > 0 for v in b)
    # The one CRMA changed in every stage.
    for before, after in zip(states, states[1:]):
        crma_before, crma_after = _crma(before), _crma(after)
        assert any(not torch.equal(crma_before[k], crma_after[k]) for k in crma_before)
    assert any(not torch.equal(v, torch.zeros_like(v))
               for k, v in _crma(states[0]).items() if k.endswith(".write"))
    state = read_state(states[2])
    assert [d["adapter"] for d in state["domains"]] == ["d0", "d1", "d2"]
    assert state["optimizer_policy"]["crma"].startswith("re-created")
    # Lower-triangular matrix, the last row equal to what the stage reported.
    assert [len(row) for row in state["matrix"]] == [1, 2, 3]
    assert state["matrix"][2] == results[2].row
    assert results[2].report["drift_mean_pct"] is not None


def test_frozen_drift_is_exactly_zero_and_no_crma(runs):
    results, root = runs["frozen"]
    state = read_state(root / "stage-2")
    matrix = state["matrix"]
    assert matrix[1][0] == matrix[2][0] == matrix[0][0]  # bit for bit, not just close
    assert matrix[2][1] == matrix[1][1]
    assert results[2].report["drift_pct"] == {"alpha": 0.0, "beta": 0.0}
    assert results[2].report["drift_mean_pct"] == 0.0
    assert not (root / "stage-2" / "crma").exists()
    assert state["config"]["crma"] is None
    _assert_equal_tensors(_lora(root / "stage-0", "d0"), _lora(root / "stage-2", "d0"))


def test_naive_trains_one_lora_throughout(runs):
    results, root = runs["naive"]
    states = [root / f"stage-{t}" for t in range(3)]
    for state in states:
        assert sorted(p.name for p in (state / "loras").iterdir()) == ["shared"]
        assert not (state / "crma").exists()
    assert [d["adapter"] for d in read_state(states[2])["domains"]] == ["shared"] * 3
    first, last = _lora(states[0], "shared"), _lora(states[2], "shared")
    assert any(not torch.equal(first[k], last[k]) for k in first)
    # The same seed gives the same first LoRA in every mode (same init, same batches):
    # without CRMA, naive's domain 0 is frozen's domain 0.
    _assert_equal_tensors(first, _lora(runs["frozen"][1] / "stage-0", "d0"))
    assert read_state(states[0])["matrix"] == read_state(runs["frozen"][1] / "stage-0")["matrix"]


def test_evaluating_a_domain_activates_only_its_lora(model_dir, domains, monkeypatch, tmp_path):
    import crma_core.continual_scoring as scoring
    from crma_core.model import get_crma

    seen = []
    real = scoring.evaluate_loss

    def spy(model, batches):
        crma = get_crma(model)
        trainable = sorted({n.split(".lora_")[1].split(".")[1] for n, p in
                            model.named_parameters() if "lora_" in n and p.requires_grad})
        seen.append((list(model.active_adapters), crma is not None and crma.enabled, trainable))
        return real(model, batches)

    monkeypatch.setattr(scoring, "evaluate_loss", spy)
    config = ContinualConfig(mode="modular", lora=LoraSettings(r=4, alpha=8),
                             train=_config("modular").train, score_base=True)
    run_continual(domains[:2], model_dir=model_dir, config=config, state_root=tmp_path)
    # Stage 0: base loss (adapters and CRMA off), then d0; stage 1: base, d0, d1.
    scored = [(adapters, crma_on) for adapters, crma_on, _ in seen]
    assert scored[1] == (["d0"], True)
    assert scored[3:] == [(["d0"], True), (["d1"], True)]
    assert seen[0][1] is False and seen[2][1] is False  # base losses: CRMA off
    assert all(trainable == [] for _, _, trainable in seen[3:])


@pytest.mark.parametrize("mode", ["modular", "frozen"])
def test_matrix_entries_match_an_independent_reload(runs, model_dir, domains, mode):
    """L[2][0] equals base + LoRA d0 (+ the final CRMA) reloaded through peft, scored on
    domain 0's holdout: nothing else was active when the runner scored it."""
    from peft import PeftModel

    from crma_core.data import eval_batches, load_examples
    from crma_core.io import load_crma
    from crma_core.loop import evaluate_loss
    from crma_core.recipe import load_base_model, load_tokenizer

    _, root = runs[mode]
    state_dir = root / "stage-2"
    tokenizer = load_tokenizer(model_dir)
    base = load_base_model(model_dir)
    model = PeftModel.from_pretrained(base, str(state_dir / "loras" / "d0"))
    handle = load_crma(model, state_dir / "crma") if mode == "modular" else None
    rows, _ = load_examples(domains[0].holdout_file, tokenizer, max_seq_len=32)
    loss = evaluate_loss(model, eval_batches(rows, batch_size=4, pad_id=tokenizer.pad_token_id))
    if handle is not None:
        handle.remove()
    assert abs(loss - read_state(state_dir)["matrix"][2][0]) < 1e-6


def test_adding_domains_later_equals_one_process(runs, model_dir, domains, tmp_path):
    """Each stage in a fresh runner from the stored state == the one-process run."""
    one_shot_results, one_shot_root = runs["modular"]
    state = None
    for t, domain in enumerate(domains):
        out = tmp_path / f"s{t}"
        result = run_stage(state, domain, out, model_dir=model_dir,
                           config=_config("modular") if state is None else None)
        assert result.state_dir == out and result.row == one_shot_results[t].row
        state = out
    assert read_state(state)["matrix"] == read_state(one_shot_root / "stage-2")["matrix"]
    for adapter in ("d0", "d1", "d2"):
        _assert_equal_tensors(_lora(state, adapter), _lora(one_shot_root / "stage-2", adapter))
    _assert_equal_tensors(_crma(state), _crma(one_shot_root / "stage-2"))


def test_state_directory_is_safetensors_and_json_only(runs):
    for mode, (_, root) in runs.items():
        files = state_files(root / "stage-2")
        assert "state.json" in files and "report.json" in files
        assert len([f for f in files if f.startswith("holdouts/")]) == 3
        for name in files:
            assert name.endswith((".safetensors", ".json", ".jsonl")), name
            path = root / "stage-2" / name
            data = path.read_bytes()
            if name.endswith(".safetensors"):
                # A real safetensors file (8-byte header length + JSON header), not a
                # torch.save zip or pickle under another name.
                with safe_open(str(path), framework="pt") as fh:
                    assert list(fh.keys())
                assert not data.startswith(b"PK")
            elif name.endswith(".json"):
                json.loads(data)
            elif name.endswith(".jsonl"):
                assert all(json.loads(line) for line in data.decode().splitlines())


def test_stage_resumes_from_a_mid_domain_checkpoint(runs, model_dir, domains, tmp_path):
    """A stage stopped mid-domain (a worker's warm shutdown: one checkpoint on stop) and
    resumed from that checkpoint gives the uninterrupted stage's row."""
    saved, written = tmp_path / "ckpt", []

    def keep(step, directory):
        written.append(step)
        shutil.rmtree(saved, ignore_errors=True)
        shutil.copytree(directory, saved)

    stage0 = runs["modular"][1] / "stage-0"
    steps = []
    stop = TrainCallbacks(on_checkpoint=keep, on_step=lambda m: steps.append(m.step),
                          should_stop=lambda: "shutdown" if len(steps) >= 2 else None)
    stopped = run_stage(stage0, domains[1], tmp_path / "never", model_dir=model_dir,
                        callbacks=stop, checkpoint_on_stop=("shutdown",))
    assert stopped.stop_reason == "shutdown" and stopped.state_dir is None
    assert stopped.steps == 2 and stopped.row is None and written == [2]
    assert not (tmp_path / "never").exists()
    resumed = run_stage(stage0, domains[1], tmp_path / "out", model_dir=model_dir,
                        resume_from=saved)
    assert resumed.steps == 3
    assert resumed.row == runs["modular"][0][1].row


def test_later_stage_refuses_other_settings_or_base_model(runs, domains, tiny_model_dirs,
                                                         model_dir, tmp_path):
    stage0 = runs["modular"][1] / "stage-0"
    with pytest.raises(ConfigError, match="lr_main"):
        ContinualRunner.from_state(stage0, model_dir=model_dir,
                                   config=_config("modular", lr_main=1e-4))
    with pytest.raises(CheckpointError, match="base model"):
        ContinualRunner.from_state(stage0, model_dir=tiny_model_dirs["mistral"])
    with pytest.raises(ConfigError, match="PiSSA"):
        ContinualConfig(lora=LoraSettings(init="pissa"))
    with pytest.raises(CheckpointError, match="not empty"):
        run_stage(stage0, domains[1], stage0, model_dir=model_dir)


def test_exported_bundle_has_one_lora_per_domain_and_the_crma(runs, tmp_path):
    manifest = export_bundle(runs["modular"][1] / "stage-2", tmp_path / "bundle")
    names = {f["name"] for f in manifest["files"]}
    assert {"loras/0-alpha/adapter_model.safetensors", "loras/1-beta/adapter_config.json",
            "loras/2-gamma/adapter_model.safetensors", "crma/after-2/crma.safetensors",
            "crma/after-2/crma_config.json", "continual_report.json",
            "plots/loss_matrix.png"} <= names
    # Every domain names its served pair; the newest domain is served by the shared CRMA.
    assert [d["lora"] for d in manifest["domains"]] == ["loras/0-alpha", "loras/1-beta",
                                                        "loras/2-gamma"]
    assert manifest["domains"][2]["crma"] == "crma/after-2"
    assert all(d["crma"] and f"{d['crma']}/crma.safetensors" in names
               for d in manifest["domains"])
    report = json.loads((tmp_path / "bundle" / "continual_report.json").read_text())
    assert report["mode"] == "modular" and len(report["matrix"]) == 3
    naive = export_bundle(runs["naive"][1] / "stage-2", tmp_path / "naive")
    assert {"lora/adapter_model.safetensors", "lora/adapter_config.json"} <= {
        f["name"] for f in naive["files"]}
    assert not any(f["name"].startswith("crma") for f in naive["files"])
    assert {d["lora"] for d in naive["domains"]} == {"lora"}


def test_a_stage_reports_routing_accuracy_on_the_holdouts_it_stores(runs, model_dir, tmp_path):
    """crma_core.routing.state_routing_accuracy (the run report's `routing`, measured by the
    worker at the end of each stage): every stored holdout's prompts routed among the
    domains' served pairs; naive mode has one adapter for all domains, nothing to route."""
    from crma_core.continual_state import holdout_path
    from crma_core.routing import holdout_prompts, state_routing_accuracy

    from crma_core.routing import CENTROID_FILE, load_centroid

    state = runs["modular"][1] / "stage-2"
    manifest = export_bundle(state, tmp_path / "bundle")
    # Each domain's LoRA directory carries its routing centroid (what the engine's router
    # reads), the copy of the one its stage stored, and the report used that router.
    centroids = [load_centroid(tmp_path / "bundle" / d["lora"] / CENTROID_FILE)
                 for d in manifest["domains"]]
    assert all(torch.equal(c, load_centroid(state / e["route_centroid"]))
               for c, e in zip(centroids, read_state(state)["domains"], strict=True))
    assert len({tuple(c.tolist()) for c in centroids}) == 3
    report = state_routing_accuracy(model_dir, state, tmp_path / "bundle")
    assert report["router"] == "centroid"
    assert set(report["per_domain"]) == {"alpha", "beta", "gamma"}
    prompts = sum(len(holdout_prompts(holdout_path(state, entry),
                                      limit=report["prompts_per_domain"]))
                  for entry in read_state(state)["domains"])
    assert report["examples"] + report["skipped"] == prompts > 0
    assert sum(sum(row.values()) for row in report["confusion"].values()) == report["examples"]
    assert 0.0 <= report["accuracy"] <= 1.0
    naive = runs["naive"][1] / "stage-2"
    export_bundle(naive, tmp_path / "naive")
    assert state_routing_accuracy(model_dir, naive, tmp_path / "naive") is None
    assert not list((tmp_path / "naive").rglob(CENTROID_FILE))
