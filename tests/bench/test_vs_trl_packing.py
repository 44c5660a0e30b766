"""bench/vs_trl.py --packing-only and --quality-only in the tiny mode (no TRL needed): only
that part runs, merged into the JSON already at --out (the TRL comparison kept), with the
short rows' length distribution and the work of each layout, or our holdout losses."""

import json


def _rerun(tmp_path, recorded: dict, flag: str) -> dict:
    """Run bench/vs_trl.py with ``flag`` in the tiny mode over ``recorded``; the merged JSON."""
    from bench import vs_trl

    out = tmp_path / "vs_trl.json"
    out.write_text(json.dumps(recorded))
    assert vs_trl.main(["--tiny", flag, "--repeats", "1", "--threads", "1",
                        "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    return json.loads(out.read_text())


def test_packing_only_merges_into_the_recorded_json(tmp_path):
    recorded = {"summary": {"crma_off": {"tokens_per_s_ratio": 1.6},
                            "crma_on": {"tokens_per_s_ratio": 1.5}},
                "runs": [{"kind": "trl"}], "packing": {"tokens_per_s_ratio": 1.0},
                "targets_met": {"crma_off_tokens_per_s": True, "packing_tokens_per_s": False}}
    data = _rerun(tmp_path, recorded, "--packing-only")
    assert data["summary"] == recorded["summary"] and data["runs"] == recorded["runs"]
    packing = data["packing"]
    assert packing["tokens_per_s_ratio"] > 0 and "--packing-only" in packing["rerun"]["command"]
    assert {r["kind"] for r in packing["rerun"]["runs"]} == {"crma_on_packed",
                                                             "crma_on_unpacked"}
    assert data["targets_met"]["packing_tokens_per_s"] == (packing["tokens_per_s_ratio"] >= 2.0)
    lengths = packing["row_lengths"]
    assert lengths["rows"] == 36 and lengths["min"] <= lengths["median"] <= lengths["max"]
    layouts = packing["layouts"]
    assert layouts["unpacked"]["real_tokens"] == layouts["packed_narrowed"]["real_tokens"] \
        == lengths["tokens"]
    assert layouts["packed_narrowed"]["attention_pairs"] <= \
        layouts["packed_full_width"]["attention_pairs"]
    assert packing["padding_bound"] == round(
        layouts["unpacked"]["positions"] / layouts["unpacked"]["real_tokens"], 4)


def test_quality_only_merges_our_losses_against_the_recorded_trl(tmp_path):
    recorded = {"summary": {"medians": {"trl": {"holdout_loss": 5.0}}},
                "runs": [{"kind": "trl"}], "packing": {"tokens_per_s_ratio": 2.4},
                "targets_met": {"crma_off_holdout_loss": False, "crma_on_holdout_loss": False}}
    data = _rerun(tmp_path, recorded, "--quality-only")
    assert data["runs"] == recorded["runs"] and data["packing"] == recorded["packing"]
    rerun = data["quality_rerun"]
    assert set(rerun["holdout_loss"]) == {"crma_off", "crma_on", "crma_on_packed",
                                          "crma_on_unpacked"}
    for kind in ("crma_off", "crma_on"):
        ratio = rerun["holdout_loss"][kind] / 5.0
        assert rerun["holdout_loss_ratio_to_trl"][kind] == ratio
        assert data["targets_met"][f"{kind}_holdout_loss"] == (ratio <= 1.01)
