"""The routing part of bench/inference.py: two domain adapters (LoRA + CRMA) trained by
crma_core's Recipe, each with the routing centroid a continual stage writes next to its LoRA;
then the router's accuracy on their holdouts (the engine's centroid router, and the
prompt-loss router on the same adapters without centroids, for comparison) and what a
routed request costs over a direct one."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench.inference_arms import alternate, paired_ratio, run_engine, summarize

ROOT = Path(__file__).resolve().parents[1]


SYNTHETIC_COLORS = ["red", "blue", "green", "black", "white", "yellow", "brown", "pink"] * 4


def _text_domains() -> dict[str, tuple[Path, Path]] | None:
    """Two of the benchmark corpora (text: every token trained), if they are built."""
    built = ROOT / "bench" / "data" / "cache" / "domains"
    if not all((built / d / "holdout.jsonl").is_file() for d in ("medical", "code")):
        return None
    return {d: (built / d / "train.jsonl", built / d / "holdout.jsonl")
            for d in ("medical", "code")}


def _chat_domains(work: Path) -> dict[str, tuple[Path, Path]]:
    """Two synthetic chat domains, trained on their answers only (the default): their
    LoRAs learn nothing about the prompts the router reads."""
    from crma_core.testing import arithmetic_chat_rows, write_jsonl

    root = work / "synthetic-domains"
    root.mkdir(parents=True, exist_ok=True)
    colors = [{"messages": [{"role": "user", "content": f"say the color {c} twice"},
                            {"role": "assistant", "content": f"{c} {c}"}]}
              for c in SYNTHETIC_COLORS]
    rows = {"math": (arithmetic_chat_rows(24), arithmetic_chat_rows(10, offset=100)),
            "color": (colors[:24], colors[24:])}
    return {name: (write_jsonl(root / f"{name}-train.jsonl", train),
                   write_jsonl(root / f"{name}-holdout.jsonl", holdout))
            for name, (train, holdout) in rows.items()}


def routing_section(engine: Any, directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Both routers on the synthetic chat domains and (full runs, when built) on two text
    corpora; the routed request's cost on the first set."""
    sets = {"chat": ("synthetic chat domains", _chat_domains(args.work))}
    text = None if args.tiny else _text_domains()
    if text is not None:
        sets["text"] = ("bench/data domains (text)", text)
    section = {}
    for key, (kind, files) in sets.items():
        section[key] = _route_set(engine, directory, args, key, kind, files,
                                  time_requests=key == "chat")
    first = section["chat"]
    # The keys of a one-set report, read by docs and tests: the chat set's figures.
    return {**{k: first[k] for k in ("domains", "training", "accuracy",
                                     "accuracy_prompt_loss_router", "ttft_ms",
                                     "ratio_routed_vs_direct_ttft")}, "sets": section}


def _route_set(engine: Any, directory: Path, args: argparse.Namespace, key: str, kind: str,
               files: dict[str, tuple[Path, Path]], *, time_requests: bool) -> dict[str, Any]:
    from crma_core import CRMAConfig, LoraSettings, Recipe, TrainConfig
    from crma_core.routing import write_centroids
    from serving.requests import AdapterSpec
    from serving.routing_eval import DomainHoldout, holdout_prompts, routing_accuracy
    from serving.sources import LocalAdapterSource

    bundles = args.work / ("routing-tiny" if args.tiny else "routing") / key
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
    write_centroids(directory, {train: bundles / name / "lora"
                                for name, (train, _) in files.items()})
    loss_only = _without_centroids(bundles)
    previous = engine.source
    per_domain = 20 if not args.tiny else 5
    result: dict[str, Any] = {"domains": kind, "training": train.to_dict() | {
        "wall_s": round(training_s, 1), "reused_from_an_earlier_run": reused}}
    try:
        engine.source = LocalAdapterSource(loss_only)
        result["accuracy_prompt_loss_router"] = routing_accuracy(engine, [
            DomainHoldout(n, AdapterSpec(id=f"route-loss-{key}:{n}", location=n), holdout)
            for n, (_, holdout) in files.items()], per_domain=per_domain)
        engine.source = LocalAdapterSource(bundles)
        domains = [DomainHoldout(n, AdapterSpec(id=f"route-{key}:{n}", location=n), holdout)
                   for n, (_, holdout) in files.items()]
        result["accuracy"] = routing_accuracy(engine, domains, per_domain=per_domain)
        if time_requests:
            routes = [{"domain": d.domain, "adapter": d.adapter.model_dump(exclude_unset=True)}
                      for d in domains]
            prompt = holdout_prompts(domains[0].holdout, limit=1)[0]
            request = dict(prompt, max_tokens=1, temperature=0)
            samples = alternate({
                "direct": lambda: run_engine(engine, dict(request, adapter=routes[0]["adapter"])),
                "routed": lambda: run_engine(engine, dict(request, routes=routes))}, args.rounds)
            result["ttft_ms"] = {k: summarize(v, ("total_ms",)) for k, v in samples.items()}
            result["ratio_routed_vs_direct_ttft"] = paired_ratio(
                samples["routed"], samples["direct"], "total_ms")
    finally:
        engine.source = previous
    return result


def _without_centroids(bundles: Path) -> Path:
    """A copy of the bundles without the centroids: what the prompt-loss router sees."""
    import shutil

    from crma_core.routing import CENTROID_FILE

    copy = bundles.with_name(bundles.name + "-loss-router")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(bundles, copy, ignore=shutil.ignore_patterns(CENTROID_FILE))
    return copy
