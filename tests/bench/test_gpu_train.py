"""bench/gpu_train.py on the CPU with toy shapes: the JSON's structure, every variant's
numbers finite, and the loss cross-checks (lr 0: variants of one function agree)."""

import json
import math

import pytest

from bench import gpu_train

VARIANTS = {"peft_eager", "recipe_eager_crma_off", "recipe_eager_crma_on"}
COMPILED = {"recipe_compiled_crma_off", "recipe_compiled_crma_on"}
QLORA = {"qlora_peft_eager", "qlora_recipe_crma_off", "qlora_recipe_crma_on",
         "qlora_gc_crma_off", "qlora_gc_crma_on", "memory_qlora_gc_crma_on_1x32",
         "memory_qlora_gc_crma_on_2x64"}


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _check_variant(name, v):
    assert v["status"] == "ok", (name, v)
    # Times are positive; rates are only non-negative: rounded, a slow (busy) machine's
    # toy-shape figures may read 0.0, which says nothing about the code.
    for key in ("step_ms", "first_step_s"):
        assert _finite(v[key]) and v[key] > 0, (name, key, v[key])
    for key in ("tokens_per_s", "mfu_pct"):
        assert _finite(v[key]) and v[key] >= 0, (name, key, v[key])
    assert v["peak_gib"] is None  # CUDA only
    assert v["timed_steps"] == 2 and len(v["losses"]) == 3
    assert all(_finite(x) for x in v["losses"]), (name, v["losses"])
    assert v["batch"] > 0 and v["seq"] > 0


@pytest.fixture(scope="module")
def toy_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-bench") / "gpu.json"
    gpu_train.main(["--toy", "--device", "cpu", "--steps", "2", "--warmup", "1",
                    "--no-compile", "--out", str(out)])
    return json.loads(out.read_text())


def test_toy_run_structure_and_finite_numbers(toy_report):
    report = toy_report
    assert report["device"] is None and report["toy"] is True
    assert report["status"].startswith("toy")
    assert set(report["shapes"]) == {"tinyllama-1.1b", "gemma-2-2b", "mistral-7b"}
    assert _finite(report["crma_overhead_pct"]) and _finite(report["speedup_vs_peft_eager"])
    assert _finite(report["matmul_ceiling_tflops"]) and report["matmul_ceiling_tflops"] >= 0
    for name, shape in report["shapes"].items():
        assert "error" not in shape, shape.get("error")
        expected = VARIANTS | (QLORA if name == "mistral-7b" else set())
        assert set(shape["variants"]) == expected
        for vname, v in shape["variants"].items():
            _check_variant(vname, v)
        assert shape["product_variant"] == "recipe_eager_crma_on"
        assert _finite(shape["tokens_per_s"]) and _finite(shape["mfu_pct"])
        assert "peak_gib" in shape
        assert _finite(shape["crma_overhead_pct"]["eager"]["median_pct"])
        # the recipe's chunked loss equals the model's own full-logits loss (CRMA off)
        assert shape["loss_agreement_max_rel"]["peft_vs_recipe_crma_off"] <= 1e-3
    mistral = report["shapes"]["mistral-7b"]
    assert mistral["variants"]["qlora_gc_crma_on"]["gradient_checkpointing"] is True
    assert mistral["variants"]["qlora_recipe_crma_on"]["quantization"] is None  # CPU stand-in
    assert "stand-in" in mistral["variants"]["qlora_recipe_crma_on"]["note"]
    assert set(report["targets"]) == set(gpu_train_targets())
    assert all(t["met"] is None for t in report["targets"].values())  # toy: not evaluated


def gpu_train_targets():
    from bench.gpu_measure import TARGETS

    return TARGETS


def test_toy_compiled_phase(tmp_path):
    out = tmp_path / "gpu.json"
    gpu_train.main(["--toy", "--device", "cpu", "--steps", "2", "--warmup", "1",
                    "--shapes", "tinyllama-1.1b", "--compile", "--compile-backend",
                    "aot_eager", "--out", str(out)])
    shape = json.loads(out.read_text())["shapes"]["tinyllama-1.1b"]
    assert set(shape["variants"]) == VARIANTS | COMPILED
    for vname, v in shape["variants"].items():
        _check_variant(vname, v)
        assert v["compiled"] is (vname in COMPILED)
    assert shape["product_variant"] == "recipe_compiled_crma_on"
    agreement = shape["loss_agreement_max_rel"]
    assert agreement["compiled_vs_eager_crma_on"] <= 1e-3
    assert agreement["compiled_vs_eager_crma_off"] <= 1e-3


def test_real_shapes_refuse_the_cpu():
    with pytest.raises(SystemExit):
        gpu_train.parse_args(["--device", "cpu"])


def test_shape_parameter_counts():
    from bench.gpu_shapes import SHAPES

    # N: the matmul parameters, LM head included (the N of the 6·N FLOPs per token)
    assert abs(SHAPES["tinyllama-1.1b"].matmul_params() / 1e9 - 1.03) < 0.01
    assert abs(SHAPES["gemma-2-2b"].matmul_params() / 1e9 - 2.61) < 0.01
    assert abs(SHAPES["mistral-7b"].matmul_params() / 1e9 - 7.11) < 0.02


def test_merge_two_runs(toy_report, tmp_path):
    first = dict(toy_report, shapes={k: v for k, v in toy_report["shapes"].items()
                                     if k != "mistral-7b"})
    second = dict(toy_report, shapes={"mistral-7b": toy_report["shapes"]["mistral-7b"]})
    paths = []
    for i, part in enumerate((first, second)):
        paths.append(tmp_path / f"part{i}.json")
        paths[-1].write_text(json.dumps(part))
    out = tmp_path / "merged.json"
    gpu_train.main(["--merge", str(paths[0]), str(paths[1]), "--out", str(out)])
    merged = json.loads(out.read_text())
    assert set(merged["shapes"]) == set(toy_report["shapes"])
    assert merged["crma_overhead_pct"] == toy_report["crma_overhead_pct"]
    assert merged["targets"] == toy_report["targets"]
