"""bench/vs_trl.py in its tiny mode: every trainer runs in its own process, the JSON holds
the summary ratios, and both sides train the same tokens."""

import json
import math

import pytest

pytest.importorskip("trl", reason="trl is the bench extra (pip install '.[bench]'); CI installs "
                                  "only the dev extra")


def test_tiny_mode_writes_the_comparison(tmp_path):
    from bench import vs_trl

    out = tmp_path / "vs_trl.json"
    assert vs_trl.main(["--tiny", "--repeats", "1", "--threads", "1", "--out", str(out),
                        "--work", str(tmp_path / "work")]) == 0
    data = json.loads(out.read_text())
    for kind in ("crma_off", "crma_on"):
        summary = data["summary"][kind]
        for key in ("tokens_per_s_ratio", "holdout_loss_ratio", "peak_rss_ratio",
                    "startup_ratio"):
            assert math.isfinite(summary[key]) and summary[key] > 0, (kind, key)
    assert math.isfinite(data["packing"]["tokens_per_s_ratio"])
    assert set(data["targets_met"]) == {"crma_off_tokens_per_s", "crma_on_tokens_per_s",
                                        "crma_off_holdout_loss", "crma_on_holdout_loss",
                                        "packing_tokens_per_s"}
    runs = {r["kind"]: r for r in data["runs"]}
    assert set(runs) == {"trl", "crma_off", "crma_on", "crma_on_packed", "crma_on_unpacked"}
    # The same tokens (TRL's tokenization equals ours) and steps on every side.
    assert runs["trl"]["same_token_ids"] is True
    assert runs["trl"]["tokens"] == runs["crma_off"]["tokens"] == runs["crma_on"]["tokens"]
    assert runs["trl"]["steps"] == runs["crma_off"]["steps"] == runs["crma_on"]["steps"]
    assert runs["crma_on_packed"]["tokens"] == runs["crma_on_unpacked"]["tokens"]
    assert runs["crma_on_packed"]["steps"] < runs["crma_on_unpacked"]["steps"]
    assert all(r["peak_rss_mib"] > 0 and r["startup_s"] > 0 for r in data["runs"])
    assert data["fairness"] and data["overrides"] and data["trl_settings"]
