"""bench/inference.py in its tiny mode (a random model, a few tokens): every section runs
and the JSON carries what docs/benchmarks/inference.json promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_inference_bench_runs_end_to_end(tmp_path):
    out = tmp_path / "inference.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "inference.py"), "--tiny",
                           "--work", str(tmp_path / "work"), "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["model"] == "tiny-llama"
    decode = result["decode"]
    assert set(decode["arms"]) == {"generate_base", "engine_base", "engine_base_eager",
                                   "engine_lora", "engine_lora_crma", "peft_lora_unmerged",
                                   "peft_lora_crma_unmerged"}
    # The engine at its defaults compiles its decode step, and its forward CPU is metered.
    compiled = result["compiled_decode"]
    assert compiled["state"] == "ready" and compiled["steps"] > 0
    assert compiled["engine_start_s"] >= compiled["warm_s"] > 0
    assert decode["speed_ratios_cpu_time"]["engine_base_vs_engine_base_eager"] > 0
    assert all(arm["runs"] == 2 and arm["decode_tps"] > 0 and arm["forward_cpu_ms"] > 0
               for arm in decode["arms"].values())
    # Greedy: the engine's base model writes exactly what transformers' generate writes.
    assert decode["engine_base_text_equals_generate"] is True
    for name in ("lora_crma_vs_base_decode", "engine_base_vs_plain_generate"):
        target = result["targets"][name]
        assert target["measured"] > 0 and target["measured_wall_clock"] > 0
        assert target["met"] == (target["measured"] >= target["target"])
    assert set(result["adapter_switch"]["ttft"]) == {"base", "merged", "cached", "cold"}
    assert result["adapter_switch"]["ttft"]["cold"]["switch_ms"] > 0
    concurrency = result["concurrency"]["arms"]
    assert concurrency["base_4"]["tokens"] > concurrency["base_1"]["tokens"]
    for hop in ("engine_http_hop", "engine_http_hop_tiny_model"):
        assert result[hop]["added_ms_p50_json"] is not None
    routing = result["routing"]
    assert routing["accuracy"]["examples"] == 10 and routing["accuracy"]["accuracy"] is not None
    # The product's router (centroids next to the LoRAs) and the loss router for comparison.
    assert routing["accuracy"]["router"] == "centroid"
    assert routing["accuracy_prompt_loss_router"]["router"] == "prompt_loss"
    assert routing["accuracy_prompt_loss_router"]["examples"] == 10
    # The API hop: /v1/chat/completions through crma serve against the engine directly.
    hop = result["api_hop"]
    assert hop["target_p50_ms"] == 5.0 and hop["added_ms_p50"] is not None
    assert hop["met"] == (hop["added_ms_p50"] <= hop["target_p50_ms"])
    assert result["overrides"] and result["machine"]["load_average_before"]
