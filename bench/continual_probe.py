"""Reproduce the first stage of one benchmark run with train-setting overrides: the per-step
loss and gradient norm, and the stage's own holdout loss against the base model's. A
diagnostic, not a benchmark: nothing it prints goes into docs/benchmarks.

    python bench/continual_probe.py --order reverse --seed 1 --mode modular [--set lr_rw=0]

The config is the benchmark's (``bench/continual.py:product_config``, the same API request),
the data the benchmark's report split unless ``--split dev``; ``--set`` replaces fields of
crma_core's TrainConfig after the product has resolved them (rates are after the
learning-rate multiplier).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.continual import (DEFAULT_DATA, DEFAULT_MODEL_DIR, DEFAULT_WORK,  # noqa: E402
                             HARNESS, api_request, domain_files, ensure_model, ordered,
                             product_config)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--order", default="forward")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", default="modular")
    parser.add_argument("--split", default="report", choices=["report", "dev"])
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a TrainConfig field after resolution, e.g. lr_rw=0")
    args = parser.parse_args(argv)

    import torch

    from crma_core.callbacks import TrainCallbacks
    from crma_core.continual import run_stage
    from crma_core.continual_state import DomainSpec

    torch.set_num_threads(HARNESS["threads_per_run"])
    files = domain_files(DEFAULT_DATA, DEFAULT_WORK, split=args.split)
    name = ordered(args.order)[0]
    count = len(files[name]["train"].read_text().splitlines())
    config = product_config(api_request(mode=args.mode, seed=args.seed), example_count=count)
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, **overrides))
    steps: list[tuple[int, float, float]] = []
    out = Path(tempfile.mkdtemp(prefix="continual-probe-"))
    try:
        result = run_stage(None, DomainSpec(name=name, train_file=files[name]["train"],
                                            holdout_file=files[name]["holdout"]),
                           out / "state", model_dir=ensure_model(DEFAULT_MODEL_DIR),
                           config=config, callbacks=TrainCallbacks(on_step=lambda m: steps.append(
                               (m.step, round(m.loss, 3), round(m.grad_norm, 2)))))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({"domain": name, "overrides": overrides,
                      "rates": {k: getattr(config.train, k)
                                for k in ("lr_main", "lr_rw", "lr_mix", "lr_gate")},
                      "own_loss": result.row[0], "base_loss": result.base_loss,
                      "peak_grad_norm": result.peak_grad_norm,
                      "steps": steps}, indent=1))


if __name__ == "__main__":
    main()
