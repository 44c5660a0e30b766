"""Measuring for bench/gpu_train.py: interleaved timing, the matmul ceiling, summaries,
targets and the markdown table."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

GIB = 2**30
# The targets (same run, same card).
TARGETS = {
    "crma_overhead_pct_tinyllama_8x1024": ("<=", 2.0),
    "speedup_vs_peft_eager_tinyllama_8x1024": (">=", 1.5),
    "mfu_pct_tinyllama_8x1024": (">=", 30.0),
    "crma_overhead_pct_mistral_qlora_gc_1x1024": ("<=", 10.0),
    "peak_gib_mistral_qlora_crma_gc_1x1024": ("<=", 6.0),
    "peak_gib_mistral_qlora_crma_gc_4x2048": ("<=", 24.0),
    # "well under the prototype's 89 GiB": two thirds of it
    "peak_gib_gemma2_8x1024": ("<=", 60.0),
}


def _noop() -> None:
    return None


@dataclass
class Variant:
    """One way of running a training step, with what its steps measured."""

    name: str
    run: Callable[[dict], float]  # one optimizer step on a batch -> loss
    batches: list[dict]
    enter: Callable[[], None] = _noop  # before each of its steps (CRMA hooks, attention)
    leave: Callable[[], None] = _noop  # after each of its steps
    info: dict = field(default_factory=dict)
    times: list[float] = field(default_factory=list)  # seconds, timed steps
    losses: list[float | None] = field(default_factory=list)  # every step, by step index
    peaks: list[int] = field(default_factory=list)  # bytes, timed steps (CUDA)
    first_step_s: float | None = None  # includes compilation for compiled variants
    error: str | None = None


def interleave(variants: list[Variant], *, warmup: int, steps: int, device: str) -> None:
    """Step every variant ``warmup + steps`` times, one step each in turn (rotating the
    order), so machine state and clocks hit all of them alike. Step i of every variant
    uses batch i of the cycle. A variant that raises (out of memory, compile failure) keeps
    its error and stops; the others go on."""
    cuda = device.startswith("cuda")
    for i in range(warmup + steps):
        live = [v for v in variants if v.error is None]
        if not live:
            return
        k = i % len(live)
        for variant in live[k:] + live[:k]:
            batch = variant.batches[i % len(variant.batches)]
            try:
                variant.enter()
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                started = time.perf_counter()
                loss = variant.run(batch)
                if cuda:
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - started
            except Exception as exc:  # noqa: BLE001 - recorded in the report
                variant.error = f"{type(exc).__name__}: {str(exc)[:400]}"
                if cuda:
                    torch.cuda.empty_cache()
                continue
            finally:
                try:
                    variant.leave()
                except Exception as exc:  # noqa: BLE001
                    variant.error = variant.error or f"leave: {exc}"
            if i == 0:
                variant.first_step_s = elapsed
            variant.losses.append(loss)
            if i >= warmup:
                variant.times.append(elapsed)
                if cuda:
                    variant.peaks.append(torch.cuda.max_memory_allocated())
            print(f"  step {i:2d} {variant.name:32s} {1000 * elapsed:9.1f} ms  loss "
                  f"{loss:.4f}", flush=True)


def random_batches(vocab: int, batch: int, seq: int, *, device: str, count: int = 4,
                   seed: int = 0) -> list[dict]:
    """Full-length rows of random tokens, every position trained (no padding)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(3, vocab, (batch, seq), generator=generator)
        ones = torch.ones_like(ids)
        out.append({k: v.to(device) for k, v in {
            "input_ids": ids, "labels": ids.clone(), "attention_mask": ones,
            "token_mask": ones}.items()})
    return out


def matmul_ceiling(device: str, *, toy: bool = False) -> tuple[float, dict]:
    """bf16 matmul FLOP/s on random data: 8192³ on CUDA (median of 10 after 3 warm-ups)."""
    cuda = device.startswith("cuda")
    n = 8192 if cuda and not toy else 256
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device, torch.bfloat16)
    b = torch.randn(n, n, generator=generator).to(device, torch.bfloat16)
    times = []
    for i in range(13):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.mm(a, b)
            end.record()
            end.synchronize()
            elapsed = start.elapsed_time(end) / 1000
        else:
            started = time.perf_counter()
            torch.mm(a, b)
            elapsed = time.perf_counter() - started
        if i >= 3:
            times.append(elapsed)
    flops = 2 * n**3 / statistics.median(times)
    return flops, {"n": n, "dtype": "bfloat16", "timed": len(times),
                   "tflops": round(flops / 1e12, 3)}


def summarize(variant: Variant, shape, ceiling: float) -> dict:
    out = {"status": "ok" if variant.error is None else "error", **variant.info}
    if variant.error is not None:
        out["error"] = variant.error
    if not variant.times:
        return out
    batch, seq = variant.info["batch"], variant.info["seq"]
    step = statistics.median(variant.times)
    tokens_per_s = batch * seq / step
    ordered = sorted(variant.times)
    out.update({
        "step_ms": round(1000 * step, 2),
        "step_ms_p10_p90": [round(1000 * ordered[len(ordered) // 10], 2),
                            round(1000 * ordered[(9 * len(ordered)) // 10], 2)],
        "tokens_per_s": round(tokens_per_s, 1),
        "mfu_pct": round(100 * tokens_per_s * 4 * shape.matmul_params() / ceiling, 2),
        "peak_gib": round(max(variant.peaks) / GIB, 3) if variant.peaks else None,
        "first_step_s": round(variant.first_step_s, 2) if variant.first_step_s else None,
        "timed_steps": len(variant.times),
        "step_s": [round(t, 5) for t in variant.times],
        "losses": [None if x is None else round(x, 5) for x in variant.losses],
    })
    return out


def _ok(variants: dict, name: str) -> dict | None:
    v = variants.get(name)
    return v if v and v.get("status") == "ok" and v.get("step_ms") else None


def _overhead(variants: dict, off: str, on: str) -> dict | None:
    a, b = _ok(variants, off), _ok(variants, on)
    if not (a and b):
        return None
    paired = [100 * (y - x) / x for x, y in zip(a["step_s"], b["step_s"])]
    return {"median_pct": round(100 * (b["step_ms"] - a["step_ms"]) / a["step_ms"], 2),
            "paired_median_pct": round(statistics.median(paired), 2)}


def _agreement(variants: dict, a: str, b: str) -> float | None:
    """Largest relative loss difference between two variants on the same steps."""
    x, y = _ok(variants, a), _ok(variants, b)
    if not (x and y):
        return None
    pairs = [(p, q) for p, q in zip(x["losses"], y["losses"]) if p is not None and q is not None]
    return round(max(abs(p - q) / max(abs(q), 1e-12) for p, q in pairs), 6) if pairs else None


def shape_summary(entry: dict) -> dict:
    """Per-shape headline: the recipe's product configuration, overheads, speed-up."""
    v = entry["variants"]
    product = next((n for n in ("recipe_compiled_crma_on", "recipe_eager_crma_on")
                    if _ok(v, n)), None)
    out = {"product_variant": product}
    if product:
        out.update({k: v[product][k] for k in ("tokens_per_s", "mfu_pct", "peak_gib")})
    out["crma_overhead_pct"] = {
        "eager": _overhead(v, "recipe_eager_crma_off", "recipe_eager_crma_on"),
        "compiled": _overhead(v, "recipe_compiled_crma_off", "recipe_compiled_crma_on"),
        "qlora": _overhead(v, "qlora_recipe_crma_off", "qlora_recipe_crma_on"),
        "qlora_gc": _overhead(v, "qlora_gc_crma_off", "qlora_gc_crma_on"),
    }
    base = _ok(v, "peft_eager")
    if product and base:
        out["speedup_vs_peft_eager"] = round(v[product]["tokens_per_s"] / base["tokens_per_s"], 3)
    # lr 0: variants that compute the same function must give the same losses
    out["loss_agreement_max_rel"] = {
        "peft_vs_recipe_crma_off": _agreement(v, "peft_eager", "recipe_eager_crma_off"),
        "compiled_vs_eager_crma_off": _agreement(v, "recipe_compiled_crma_off",
                                                 "recipe_eager_crma_off"),
        "compiled_vs_eager_crma_on": _agreement(v, "recipe_compiled_crma_on",
                                                "recipe_eager_crma_on"),
        "flex_vs_eager_attention": _agreement(v, "recipe_compiled_crma_on_flex",
                                              "recipe_compiled_crma_on"),
        "qlora_peft_vs_recipe_crma_off": _agreement(v, "qlora_peft_eager",
                                                    "qlora_recipe_crma_off"),
    }
    return out


def headline(report: dict) -> dict:
    for name, entry in report["shapes"].items():
        entry.update(shape_summary(entry))
    lead = report["shapes"].get("tinyllama-1.1b") or next(iter(report["shapes"].values()), {})
    overhead = lead.get("crma_overhead_pct") or {}
    chosen = overhead.get("compiled") or overhead.get("eager")
    return {"crma_overhead_pct": chosen["median_pct"] if chosen else None,
            "speedup_vs_peft_eager": lead.get("speedup_vs_peft_eager")}


def evaluate_targets(report: dict) -> dict:
    shapes = report["shapes"]
    tiny = shapes.get("tinyllama-1.1b", {})
    mistral = shapes.get("mistral-7b", {})
    gemma = shapes.get("gemma-2-2b", {})
    over = tiny.get("crma_overhead_pct") or {}
    chosen = over.get("compiled") or over.get("eager")
    qlora_gc = (mistral.get("crma_overhead_pct") or {}).get("qlora_gc")
    memory = sorted((k for k in mistral.get("variants", {}) if k.startswith("memory_")),
                    key=lambda k: mistral["variants"][k].get("batch", 0) *
                    mistral["variants"][k].get("seq", 0))
    peaks = [(mistral["variants"][k].get("peak_gib") if mistral["variants"][k].get("status") == "ok"
              else None) for k in memory] + [None, None]
    values = {
        "crma_overhead_pct_tinyllama_8x1024": chosen["median_pct"] if chosen else None,
        "speedup_vs_peft_eager_tinyllama_8x1024": tiny.get("speedup_vs_peft_eager"),
        "mfu_pct_tinyllama_8x1024": tiny.get("mfu_pct"),
        "crma_overhead_pct_mistral_qlora_gc_1x1024": qlora_gc["median_pct"] if qlora_gc else None,
        "peak_gib_mistral_qlora_crma_gc_1x1024": peaks[0],
        "peak_gib_mistral_qlora_crma_gc_4x2048": peaks[1],
        "peak_gib_gemma2_8x1024": gemma.get("peak_gib"),
    }
    out = {}
    for name, (op, bound) in TARGETS.items():
        value = values[name]
        met = None
        if value is not None and not report.get("toy") and math.isfinite(value):
            met = value <= bound if op == "<=" else value >= bound
        out[name] = {"target": f"{op} {bound}", "value": value, "met": met}
    return out


def markdown_table(report: dict, only: str | None = None) -> str:
    lines = ["| shape | variant | batch × seq | step ms | tokens/s | MFU % | peak GiB | first step s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, entry in report["shapes"].items():
        if only is not None and name != only:
            continue
        for vname, v in entry.get("variants", {}).items():
            if v.get("status") != "ok" or "step_ms" not in v:
                reason = v.get("error") or v.get("reason") or v.get("status")
                lines.append(f"| {name} | {vname} | | {reason} | | | | |")
                continue
            peak = "" if v.get("peak_gib") is None else f"{v['peak_gib']:.1f}"
            lines.append(f"| {name} | {vname} | {v['batch']} × {v['seq']} | {v['step_ms']:.1f} "
                         f"| {v['tokens_per_s']:,.0f} | {v['mfu_pct']:.1f} | {peak} "
                         f"| {v.get('first_step_s') or ''} |")
        if entry.get("error"):
            lines.append(f"| {name} | (shape failed) | | {entry['error']} | | | | |")
    return "\n".join(lines)
