"""The continual benchmark's report on hand-made run records: the figures it derives (drift,
modular vs frozen, own-domain improvement, timings) and the wording that depends on their
sign. No training: the records are what `bench/continual.py run` would have cached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.continual_report import build_report, markdown_section, write_markdown_section
from crma_core.drift import drift_pct

BASE = [4.0, 4.0, 3.0, 4.0]


def _matrix(own: list[float], final_scale: float) -> list[list[float]]:
    """Lower-triangular L[t][i]: domain i scores own[i] right after its stage, and
    own[i] * final_scale after the last stage (intermediate rows in between)."""
    rows = []
    for t in range(4):
        row = []
        for i in range(t + 1):
            scale = 1.0 if i == t else 1.0 + (final_scale - 1.0) * t / 3
            row.append(own[i] * scale)
        rows.append(row)
    return rows


def _record(work: Path, mode: str, seed: int, matrix: list[list[float]], *,
            base: bool = False) -> None:
    drift = drift_pct(matrix)
    record = {"mode": mode, "seed": seed, "matrix": matrix, "drift_pct": drift,
              "drift_mean_pct": sum(drift) / len(drift), "bwt": 0.0, "stages": [],
              "seconds": 100.0 + seed, "finished_at": 1_800_000_000.0 + 200 * seed}
    if base:
        record["base_losses"] = BASE
    (work / f"{mode}-seed{seed}.json").write_text(json.dumps(record))


@pytest.fixture
def work(tmp_path: Path) -> Path:
    work = tmp_path / "abc123"
    work.mkdir()
    own = [3.2, 3.4, 2.6, 3.5]
    for seed, frozen_noise in ((0, 1.0), (1, 1.01)):
        _record(work, "frozen", seed, _matrix([x * frozen_noise for x in own], 1.0),
                base=seed == 0)
        _record(work, "modular", seed, _matrix(own, 1.05 + 0.01 * seed))
        _record(work, "naive", seed, _matrix(own, 1.20))
    (work / "wall-1.json").write_text(json.dumps(
        {"jobs": ["modular-seed0", "modular-seed1"], "parallel": 2, "wall_seconds": 300.0}))
    return work


def _report(work: Path, tmp_path: Path) -> dict:
    pilots = tmp_path / "pilots.json"
    pilots.write_text(json.dumps([{
        "settings_hash": "abc123", "seconds": 100.0, "at": "2027-01-15T08:00:00Z",
        "own_improvement_pct": {"medical": 20.0, "legal": 15.0, "code": 13.3, "finance": 12.5},
    }]))
    return build_report(work, {"steps": 40, "batch_size": 4, "seq_len": 64, "lr_main": 4e-3,
                               "lr_mix": 1e-2, "lr_gate": 1e-3, "warmup_steps": 1, "lora_r": 8,
                               "lora_alpha": 16, "holdout_examples": 48},
                        "abc123", pilots, {"cpus": 2, "torch_threads_per_run": 1})


def test_figures_follow_from_the_matrices(work: Path, tmp_path: Path) -> None:
    report = _report(work, tmp_path)
    summary = report["summary"]
    assert summary["frozen"]["drift_mean_pct"] == 0.0
    assert summary["modular"]["drift_mean_pct"] == pytest.approx(5.5)
    assert summary["naive"]["drift_mean_pct"] == pytest.approx(20.0)
    # Modular ends at own*1.05 (seed 0) against frozen's own*1.0: 5% worse.
    versus = report["modular_vs_frozen_pct"]
    assert versus["per_seed"][0] == pytest.approx(-5.0)
    assert versus["mean"] < 0 and not versus["within_noise"]
    assert versus["frozen_seed_to_seed_abs_pct"] == pytest.approx(100 * 0.01 / 1.0, rel=1e-6)
    assert report["runs"][0]["own_improvement_pct"][0] == pytest.approx(100 * (4.0 - 3.2) / 4.0)
    assert report["chosen_pilot"]["meets_rule"] and report["chosen_pilot"]["short_of_rule"] == []
    assert report["timings"]["runs_in_parallel"] == [2]


def test_the_write_up_says_what_the_signs_mean(work: Path, tmp_path: Path) -> None:
    text = markdown_section(_report(work, tmp_path))
    assert "| modular | +5.50% ± 0.71 |" in text
    assert "here CRMA makes the earlier domains worse than frozen per-domain LoRAs" in text
    assert "20× the recipe's" in text
    assert "then 2 runs at a time" in text and "2 vs 3 seeds" in text
    assert "So the shared CRMA is what forgets here." in text


def test_modular_drift_within_noise_is_called_so(work: Path, tmp_path: Path) -> None:
    own = [3.2, 3.4, 2.6, 3.5]
    _record(work, "modular", 0, _matrix(own, 1.002))
    _record(work, "modular", 1, _matrix(own, 0.996))
    text = markdown_section(_report(work, tmp_path))
    assert "within two seed standard deviations of 0" in text
    assert "is what forgets" not in text


def test_the_section_replaces_only_its_own_part(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Continual learning\n\nold\n\n## GPU throughput\n\nkept\n")
    write_markdown_section(doc, "## Continual learning\n\nnew\n")
    assert doc.read_text() == ("# Benchmarks\n\n## Continual learning\n\nnew\n\n"
                               "## GPU throughput\n\nkept\n")
