"""The continual benchmark's harness and report on a tiny random-weight model: a run goes
through run_stage with the product config builder, the audit loads served pairs from the
exported bundle, and the report derives frozen from the baseline, the per-order summaries,
modular vs frozen with its noise floor, the pilots' choice, the targets and the write-up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bench.continual as harness
from bench.continual_markdown import markdown_section
from bench.continual_report import (DOMAIN_ORDER, ORDERS, analyse_pilots, build_report,
                                    write_markdown_section)
from crma_core.testing import make_tiny_model_dir, write_jsonl

TEMPLATES = {
    "medical": "the patient has a mild fever number {i}",
    "legal": "the licensee shall keep notice {i} intact",
    "code": "def f{i}(x): return x + {i}",
    "finance": "the account balance grew by {i} dollars",
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-cl")
    data = root / "data"
    for name, template in TEMPLATES.items():
        (data / name).mkdir(parents=True)
        write_jsonl(data / name / "train.jsonl",
                    [{"text": template.format(i=i)} for i in range(16)])
        write_jsonl(data / name / "holdout.jsonl",
                    [{"text": template.format(i=i)} for i in range(100, 106)])
    general = write_jsonl(root / "general.jsonl", [{"text": "a stitch in time saves nine"},
                                                   {"text": "all that glitters is not gold"}])
    model = make_tiny_model_dir(root / "model", "llama", num_layers=2)
    return root, data, general, model


def _run(setup, monkeypatch, *, mode: str, seed: int, order: str, split: str = "report"):
    root, data, general, model = setup
    monkeypatch.setattr(harness, "HOLDOUT_EXAMPLES", 3)
    monkeypatch.setattr(harness, "DEV_EXAMPLES", 4)
    request = harness.api_request(mode=mode, seed=seed, baseline=mode == "modular",
                                  max_steps=2, max_seq_len=32)
    request["score_base"] = seed == 0
    job = {"tag": f"{'bench' if split == 'report' else 'pilot'}-{order}-{mode}-seed{seed}",
           "request": request, "order": order, "split": split, "work": str(root / "work"),
           "data_dir": str(data), "model_dir": str(model), "general": str(general)}
    return harness.run_one(job)


@pytest.fixture(scope="module")
def work(setup):
    monkeypatch = pytest.MonkeyPatch()
    try:
        for order in ORDERS:
            for seed in (0, 1):
                for mode in ("modular", "naive"):
                    _run(setup, monkeypatch, mode=mode, seed=seed, order=order)
        _run(setup, monkeypatch, mode="frozen", seed=0, order="forward")
        pilots = []
        for mode in ("frozen", "modular"):
            record = _run(setup, monkeypatch, mode=mode, seed=0, order="forward", split="dev")
            pilots.append({"tag": record["tag"], "mode": mode, "order": "forward",
                           "lr_rw_base": 1e-5 if mode == "modular" else None,
                           "config": record["config"], "domains": record["domains"],
                           "matrix": record["matrix"], "base_losses": record["base_losses"],
                           "seconds": 1.0, "started_at": "t", "parallel": 1})
        (setup[0] / "work" / "pilots.json").write_text(json.dumps(pilots))
    finally:
        monkeypatch.undo()
    return setup[0] / "work"


def test_a_run_goes_through_run_stage_with_the_product_config(work):
    record = json.loads((work / "runs" / "bench-reverse-modular-seed1.json").read_text())
    assert record["domains"] == list(reversed(DOMAIN_ORDER))
    config = record["config"]
    assert config["drift_budget_pct"] == 0.5 and config["baseline"] is True
    assert config["lora"]["r"] == 16 and config["train"]["batch_size"] == 1
    # Rates are the defaults times the multiplier (10): lr_rw included.
    assert config["train"]["lr_main"] == pytest.approx(2e-3)
    assert config["train"]["lr_rw"] == pytest.approx(10 * 5e-6)
    assert [s["baseline_trained_tokens"] for s in record["stages"]] == \
        [s["trained_tokens"] for s in record["stages"]]
    assert set(record["audit"]["served"]) == set(record["audit"]["baseline"]) == set(TEMPLATES)
    assert "base_losses" not in record  # seed 1: scored once per order, in seed 0


def test_report_derives_frozen_and_compares_within_orders(work):
    report = build_report(work, {"config": harness.settings_meta(), "notes": ["n"]})
    assert report["orders_run"] == ["forward", "reverse"]
    frozen = [r for r in report["runs"] if r["mode"] == "frozen"]
    assert len(frozen) == 4 and all(r["drift_mean_pct"] == 0.0 for r in frozen)
    # The frozen-mode run equals the baseline trained inside the modular run.
    assert report["frozen_check"] == [{"order": "forward", "seed": 0, "max_abs_diff": 0.0,
                                       "seconds": pytest.approx(report["frozen_check"][0][
                                           "seconds"])}]
    for order, o in report["orders"].items():
        v = o["modular_vs_frozen_pct"]
        modular = [r for r in report["runs"] if r["mode"] == "modular" and r["order"] == order]
        assert v["per_seed"] == [r["versus_baseline"]["backward_mean_pct"] for r in modular]
        assert v["noise_floor_pct"] is not None and "audit_mean" in v
        assert o["summary"]["modular"]["drift_mean_pct"] <= 0.5
        assert "general_change_mean_pct" in o["summary"]["naive"]
        t = report["targets"][order]
        assert t["modular_drift_le_0.5"]["met"]
        assert t["general_retention_every_mode"]["met"]
    assert report["summary"]["modular"]["seeds"] == [0, 1, 0, 1]  # today's key, both orders
    # Pooled over both orders, each domain's own improvement is read at its own position in
    # each order (it was once read by the forward order's index in reverse runs too).
    for mode in ("modular", "naive"):
        pooled = report["summary"][mode]["own_improvement_pct"]
        per_order = [report["orders"][o]["summary"][mode]["own_improvement_pct"] for o in ORDERS]
        assert pooled == pytest.approx({d: sum(p[d] for p in per_order) / 2 for d in pooled})
    assert set(report["runs"][0]) >= {"seed", "mode", "order", "matrix", "drift_mean_pct"}
    assert report["pilot"]["chosen_lr_rw_base"] == 1e-5
    text = markdown_section(report)
    assert text.startswith("## Continual learning")
    assert "| forward |" in text and "| reverse |" in text and "Note: n" in text
    for name in ("max_steps", "max_seq_len", "learning_rate_multiplier"):
        assert f"`{name}`" in text


def test_pilot_rule_prefers_the_best_served_score_then_the_smaller_rate():
    def pilot(tag, mode, lr, matrix, base=None):
        return {"tag": tag, "mode": mode, "order": "forward", "lr_rw_base": lr,
                "domains": list(DOMAIN_ORDER), "matrix": matrix, "base_losses": base,
                "config": {}, "seconds": 1.0, "started_at": "t", "parallel": 1}

    def lower(own, final):
        return [[own[i] if i == t else final[i] for i in range(t + 1)] for t in range(4)]

    frozen = pilot("f", "frozen", None, lower([2.0] * 4, [2.0] * 4), base=[2.5] * 4)
    good = pilot("a", "modular", 1e-5, lower([1.98] * 4, [1.98] * 4))
    same = pilot("b", "modular", 1e-6, lower([1.9801] * 4, [1.9801] * 4))
    # Forgets: served by its own states (the budget), so its score is its forward transfer.
    drifting = pilot("c", "modular", 1e-4, lower([1.99] * 4, [2.2] * 4))
    result = analyse_pilots([frozen, good, same, drifting])
    assert result["chosen_lr_rw_base"] == 1e-6  # within 0.05 points of the best: smaller
    by_tag = {a["tag"]: a for a in result["attempts"]}
    assert by_tag["c"]["score"] == pytest.approx(0.5)
    assert by_tag["f"]["meets_settings_rule"] and by_tag["f"]["own_improvement_pct"][
        "medical"] == pytest.approx(20.0)


def test_a_later_round_picks_the_rate_with_the_best_worst_pilot():
    """Round 2 pilots each rate on every (seed, order) of the round against the frozen pilot
    of the same seed and order, and scores a rate by its worst pilot: a rate that wins on
    one seed but loses badly on another is not chosen; a rate missing a cell is not a
    candidate; round 1 records (no round/seed) keep their own choice."""
    def lower(own, final):
        return [[own[i] if i == t else final[i] for i in range(t + 1)] for t in range(4)]

    def pilot(tag, mode, lr, order, seed, loss, rnd=2):
        return {"tag": tag, "mode": mode, "order": order, "lr_rw_base": lr, "seed": seed,
                "round": rnd, "domains": list(DOMAIN_ORDER), "matrix": lower([loss] * 4,
                                                                             [loss] * 4),
                "base_losses": [2.5] * 4, "config": {}, "seconds": 1.0, "started_at": "t",
                "parallel": 1}

    old = [pilot("f0", "frozen", None, "forward", 0, 2.0, rnd=1),
           pilot("r1", "modular", 5e-6, "forward", 0, 1.9, rnd=1)]
    for record in old:
        del record["seed"], record["round"]
    new = [pilot("f1", "frozen", None, "reverse", 1, 2.0),
           # 5e-6: best on seed 0 forward, 4% worse than frozen on seed 1 reverse.
           pilot("a0", "modular", 5e-6, "forward", 0, 1.9),
           pilot("a1", "modular", 5e-6, "reverse", 1, 2.08),
           pilot("b0", "modular", 2e-6, "forward", 0, 1.99),
           pilot("b1", "modular", 2e-6, "reverse", 1, 1.995),
           pilot("c0", "modular", 1e-6, "forward", 0, 1.5)]  # one cell only
    result = analyse_pilots(old + new)
    first, second = result["rounds"]
    assert first["round"] == 1 and first["chosen_lr_rw_base"] == 5e-6
    assert second["chosen_lr_rw_base"] == result["chosen_lr_rw_base"] == 2e-6
    assert second["chosen_tags"] == ["b0", "b1"] and set(second["candidates"]) == {"5e-06",
                                                                                    "2e-06"}
    assert second["candidates"]["5e-06"]["score"] == pytest.approx(-4.0)
    assert second["candidates"]["2e-06"]["score"] == pytest.approx(0.25)
    assert "per optimizer group" in second["clipping"] and "WORST" in result["rule"]


def test_the_write_up_says_what_was_tried_while_modular_does_not_beat_frozen():
    from bench.continual_markdown import _beats_frozen_lines

    def report(forward, reverse):
        return {"targets": {o: {"modular_beats_frozen": {"value": v, "beyond_noise": b}}
                            for o, (v, b) in (("forward", forward), ("reverse", reverse))},
                "paper": {"modular_vs_frozen_pct": 1.99, "source": "the paper"},
                "pilot": {"attempts": [{"mode": "modular", "lr_rw_base": 5e-6},
                                       {"mode": "frozen", "lr_rw_base": None}]}}

    text = "\n".join(_beats_frozen_lines(report((0.03, False), (0.33, False))))
    assert "Not beyond the noise" in text and "+0.03% in the forward order" in text
    assert "+1.99% (the paper)" in text and "5e-6 before the multiplier" in text
    assert "Not tried" in text
    assert _beats_frozen_lines(report((0.9, True), (1.2, True))) == []
    assert _beats_frozen_lines(report((0.9, True), (-1.2, True)))  # beyond noise, but worse


def test_the_section_replaces_only_its_own_part(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Continual learning\n\nold\n\n## GPU throughput\n\nkept\n")
    write_markdown_section(doc, "## Continual learning\n\nnew\n")
    assert doc.read_text() == ("# Benchmarks\n\n## Continual learning\n\nnew\n\n"
                               "## GPU throughput\n\nkept\n")


def test_a_partial_benchmark_reports_what_ran(work, tmp_path):
    """Runs that did not finish (here: reverse-order naive, seed 1) leave gaps that the
    report and the write-up name instead of failing."""
    import shutil

    partial = tmp_path / "work"
    shutil.copytree(work, partial)
    for path in (partial / "runs").glob("bench-reverse-naive-*.json"):
        path.unlink()
    (partial / "runs" / "bench-forward-modular-seed1.json").unlink()
    report = build_report(partial, {"config": harness.settings_meta()})
    forward, reverse = report["orders"]["forward"], report["orders"]["reverse"]
    assert forward["modular_vs_frozen_pct"]["noise_floor_pct"] is None  # one seed left
    assert "naive" not in reverse["summary"]
    assert report["targets"]["reverse"]["naive_drift_ge_10"] == {"value": None, "met": None}
    text = markdown_section(report)
    assert "n/a (one seed)" in text and "not run" in text


def test_pilots_rebuilt_from_the_published_report_give_its_scores_and_choice():
    """A work directory without pilots.json: the records rebuilt from the report's pilot
    section (pilots_from_report) analyse to the same scores and the same chosen rate as the
    published docs/benchmarks/continual.json."""
    from bench.continual_report import pilots_from_report

    published = json.loads((Path(harness.DOCS) / "continual.json").read_text())["pilot"]
    rebuilt = analyse_pilots(pilots_from_report(published))
    assert rebuilt["chosen_lr_rw_base"] == published["chosen_lr_rw_base"]
    scored = [a for a in published["attempts"] if "score" in a]
    assert scored and [a.get("score") for a in rebuilt["attempts"]] == pytest.approx(
        [a.get("score") for a in published["attempts"]], abs=1e-9)
    frozen = next(a for a in rebuilt["attempts"] if a["mode"] == "frozen")
    assert frozen["own_improvement_pct"] == pytest.approx(next(
        a for a in published["attempts"] if a["mode"] == "frozen")["own_improvement_pct"])
