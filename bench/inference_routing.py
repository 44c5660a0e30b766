"""The routing part of bench/inference.py: two domain adapters (LoRA + CRMA) trained by
crma_core's Recipe, then the router's accuracy on their holdouts and what a routed request
costs over a direct one."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench.inference_arms import alternate, paired_ratio, run_engine, summarize

ROOT = Path(__file__).resolve().parents[1]


SYNTHETIC_COLORS = ["red", "blue", "green", "black", "white", "yellow", "brown", "pink"] * 4


def _domains(args: argparse.Namespace) -> tuple[dict[str, tuple[Path, Path]], str]:
    """Two domains' (train, holdout) files: the benchmark corpora if they are built, else
    two synthetic chat domains."""
    from crma_core.testing import arithmetic_chat_rows, write_jsonl

    built = ROOT / "bench" / "data" / "cache" / "domains"
    if not args.tiny and all((built / d / "holdout.jsonl").is_file() for d in ("medical", "code")):
        return {d: (built / d / "train.jsonl", built / d / "holdout.jsonl")
                for d in ("medical", "code")}, "bench/data domains (text)"
    root = args.work / "synthetic-domains"
    root.mkdir(parents=True, exist_ok=True)
    colors = [{"messages": [{"role": "user", "content": f"say the color {c} twice"},
                            {"role": "assistant", "content": f"{c} {c}"}]}
              for c in SYNTHETIC_COLORS]
    rows = {"math": (arithmetic_chat_rows(24), arithmetic_chat_rows(10, offset=100)),
            "color": (colors[:24], colors[24:])}
    return {name: (write_jsonl(root / f"{name}-train.jsonl", train),
                   write_jsonl(root / f"{name}-holdout.jsonl", holdout))
            for name, (train, holdout) in rows.items()}, "synthetic chat domains"


def routing_section(engine: Any, directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    from crma_core import CRMAConfig, LoraSettings, Recipe, TrainConfig
    from serving.requests import AdapterSpec
    from serving.routing_eval import DomainHoldout, holdout_prompts, routing_accuracy
    from serving.sources import LocalAdapterSource

    files, kind = _domains(args)
    bundles = args.work / ("routing-tiny" if args.tiny else "routing")
    train = TrainConfig(max_steps=12, batch_size=4, max_seq_len=128, lr_main=1e-3, seed=0) \
        if not args.tiny else TrainConfig(epochs=6, batch_size=4, max_seq_len=64,
                                          lr_main=1e-2, seed=0)
    started = time.perf_counter()
    reused = []
    for name, (train_file, _) in files.items():
        if (bundles / name / "manifest.json").is_file():  # trained by an earlier run
            reused.append(name)
            continue
        recipe = Recipe(model_dir=directory, train_file=train_file, crma=CRMAConfig(),
                        lora=LoraSettings(), train=train)
        recipe.setup()
        try:
            recipe.train()
            recipe.export_artifacts(bundles / name)
        finally:
            recipe.cleanup()
    training_s = time.perf_counter() - started
    previous = engine.source
    engine.source = LocalAdapterSource(bundles)
    try:
        domains = [DomainHoldout(n, AdapterSpec(id=f"route:{n}", location=n), holdout)
                   for n, (_, holdout) in files.items()]
        report = routing_accuracy(engine, domains, per_domain=20 if not args.tiny else 5)
        routes = [{"domain": d.domain, "adapter": d.adapter.model_dump(exclude_unset=True)}
                  for d in domains]
        prompt = holdout_prompts(domains[0].holdout, limit=1)[0]
        request = dict(prompt, max_tokens=1, temperature=0)
        samples = alternate({
            "direct": lambda: run_engine(engine, dict(request, adapter=routes[0]["adapter"])),
            "routed": lambda: run_engine(engine, dict(request, routes=routes))}, args.rounds)
    finally:
        engine.source = previous
    return {"domains": kind, "training": train.to_dict() | {
                "wall_s": round(training_s, 1), "reused_from_an_earlier_run": reused},
            "accuracy": report, "ttft_ms": {k: summarize(v, ("total_ms",))
                                            for k, v in samples.items()},
            "ratio_routed_vs_direct_ttft": paired_ratio(samples["routed"], samples["direct"],
                                                        "total_ms")}
