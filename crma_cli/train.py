"""`crma train`: the single-task trainer without the service, with a progress bar.

--model is a model id in the store (<data-dir>/models, see `crma models`) or a path to a local
Hugging Face directory. Every knob of crma_core's TrainConfig / LoraSettings / CRMAConfig
that a run can set has a flag; a flag left out keeps the dataclass default (shown in
--help), so crma_core/settings.py stays the one home of each default."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from crma_cli.models import data_dir

# (flag, TrainConfig field, type, help). Booleans become --flag / --no-flag.
TRAIN_FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    ("--epochs", "epochs", int, "passes over the training data"),
    ("--batch-size", "batch_size", int,
     "rows per optimizer step (the effective batch; gradients accumulate over micro-batches)"),
    ("--micro-batch-size", "micro_batch_size", int,
     "rows per forward/backward pass (default: as many as fit the memory budget)"),
    ("--memory-budget-mb", "memory_budget_mb", int,
     "memory training may use, MiB (default: derived from the device's free memory)"),
    ("--lr", "lr_main", float, "learning rate of the LoRA A/B matrices"),
    ("--lr-rw", "lr_rw", float, "learning rate of CRMA's read/write projections"),
    ("--lr-mix", "lr_mix", float, "learning rate of CRMA's mixing logits"),
    ("--lr-gate", "lr_gate", float, "learning rate of CRMA's gate"),
    ("--lr-schedule", "lr_schedule", ("constant", "linear", "cosine"),
     "decay after warm-up"),
    ("--warmup-steps", "warmup_steps", int, "linear warm-up length in steps"),
    ("--warmup-ratio", "warmup_ratio", float, "warm-up as a share of the planned steps"),
    ("--weight-decay", "weight_decay", float,
     "AdamW weight decay of the LoRA and CRMA projections"),
    ("--clip", "clip", ("zclip", "max_norm", "none"), "gradient clipping"),
    ("--max-grad-norm", "max_grad_norm", float, "clipping threshold (zclip: its cap)"),
    ("--max-seq-len", "max_seq_len", int, "tokens per row (longer examples are truncated)"),
    ("--packing", "packing", bool,
     "pack short examples into rows of max-seq-len tokens (attention stays within each example)"),
    ("--train-on-inputs", "train_on_inputs", bool,
     "put prompt tokens in the loss too (chat: every turn; prompt/completion: the prompt)"),
    ("--max-steps", "max_steps", int, "stop after this many optimizer steps"),
    ("--token-budget", "token_budget", int, "stop before training more tokens than this"),
    ("--eval-every", "eval_every", int, "evaluate the validation file every N steps"),
    ("--n-evals", "n_evals", int, "evaluations spread evenly over the run (the last at the end)"),
    ("--eval-batch-size", "eval_batch_size", int,
     "rows per evaluation pass (default: micro-batch)"),
    ("--n-checkpoints", "n_checkpoints", int,
     "checkpoints spread evenly over the run, each evaluated (needs --checkpoint-dir)"),
    ("--checkpoint-every", "checkpoint_every_steps", int,
     "also a checkpoint every N steps (needs --checkpoint-dir)"),
    ("--checkpoint-every-seconds", "checkpoint_every_seconds", float,
     "also a checkpoint every N seconds (needs --checkpoint-dir)"),
    ("--seed", "seed", int, "data order, LoRA and CRMA init, dropout"),
    ("--device", "device", str, "cpu, cuda or cuda:N"),
    ("--dtype", "dtype", ("float32", "bfloat16"), "base model and activation dtype"),
    ("--gradient-checkpointing", "gradient_checkpointing", bool,
     "recompute activations in backward (less memory, ~30%% more compute)"),
    ("--compile", "compile", bool, "torch.compile the decoder layers and CRMA"),
    ("--loss-chunk-tokens", "loss_chunk_tokens", int,
     "LM-head loss chunk (default: 1 GiB of logits)"),
)
LORA_FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    ("--lora-r", "r", int, "LoRA rank"),
    ("--lora-alpha", "alpha", int, "LoRA scaling alpha"),
    ("--lora-dropout", "dropout", float, "dropout on the LoRA branch's input"),
    ("--lora-target-modules", "target_modules", str,
     "all-linear, or a comma-separated list of q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,"
     "down_proj"),
    ("--lora-init", "init", ("default", "pissa"), "LoRA initialisation"),
)
CRMA_FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    ("--n-streams", "n", int, "CRMA streams n (mixing matrix n x n)"),
    ("--stream-rank", "r", int, "CRMA rank per stream"),
)
_ALIASES = {"--lr": ("--learning-rate",), "--lr-schedule": ("--lr-scheduler",)}
# argparse destinations: TrainConfig fields as they are, the others prefixed (LoRA's and
# CRMA's ``r`` would collide).
_PREFIXES = {"train": "", "lora": "lora_", "crma": "crma_"}


def _add_flags(group: argparse._ArgumentGroup, flags, defaults: Any, prefix: str) -> None:
    for flag, name, kind, text in flags:
        default = getattr(defaults, name)
        shown = ",".join(default) if isinstance(default, tuple) else default
        if default is None:
            help_text = text if "default" in text else f"{text} (default: off)"
        else:
            help_text = f"{text} (default: {shown})"
        options = dict(dest=prefix + name, default=None, help=help_text)
        names = (flag, *_ALIASES.get(flag, ()))
        if kind is bool:
            group.add_argument(*names, action=argparse.BooleanOptionalAction, **options)
        elif isinstance(kind, tuple):
            group.add_argument(*names, choices=kind, **options)
        else:
            group.add_argument(*names, type=kind, **options)


def register(subparsers: argparse._SubParsersAction) -> None:
    from crma_core.config import CRMAConfig
    from crma_core.settings import LoraSettings, TrainConfig

    train = subparsers.add_parser(
        "train", help="fine-tune LoRA (+ CRMA) locally on a JSONL file",
        description="Fine-tune LoRA (+ CRMA) on a JSONL file and write an adapter bundle.")
    train.add_argument("--model", required=True, help="store model id or local model directory")
    train.add_argument("--data", required=True, type=Path, help="training JSONL")
    train.add_argument("--validation", type=Path, default=None, help="validation JSONL")
    train.add_argument("--out", required=True, type=Path, help="output bundle directory")
    train.add_argument("--no-crma", action="store_true", help="LoRA only")
    train.add_argument("--qlora", action="store_true", help="4-bit NF4 base (CUDA only)")
    train.add_argument("--data-dir", default=None,
                       help="installation root for the model store "
                            "(default $CRMA_DATA_DIR or ./.data)")
    train.add_argument("--resume", type=Path, default=None, help="checkpoint directory")
    train.add_argument("--checkpoint-dir", type=Path, default=None,
                       help="keep checkpoints here (step-N/ each; see --n-checkpoints)")
    train.add_argument("--threads", type=int, default=None,
                       help="torch CPU threads (default: torch's choice)")
    for title, flags, defaults, prefix in (
            ("training (crma_core.TrainConfig)", TRAIN_FLAGS, TrainConfig, _PREFIXES["train"]),
            ("LoRA (crma_core.LoraSettings)", LORA_FLAGS, LoraSettings, _PREFIXES["lora"]),
            ("CRMA (crma_core.CRMAConfig)", CRMA_FLAGS, CRMAConfig, _PREFIXES["crma"])):
        _add_flags(train.add_argument_group(title), flags, defaults, prefix)
    train.set_defaults(func=run_train)


def _given(args: argparse.Namespace, flags, prefix: str) -> dict[str, Any]:
    values = {name: getattr(args, prefix + name, None) for _, name, _, _ in flags}
    return {name: value for name, value in values.items() if value is not None}


def configs_from_args(args: argparse.Namespace):
    """(TrainConfig, LoraSettings, CRMAConfig or None) from parsed flags; what is not given
    keeps the dataclass default. Raises crma_core's ConfigError on a bad value."""
    from crma_core.config import CRMAConfig
    from crma_core.errors import ConfigError
    from crma_core.settings import LoraSettings, TrainConfig

    train = _given(args, TRAIN_FLAGS, _PREFIXES["train"])
    wants_checkpoints = any(train.get(name) for name in (
        "n_checkpoints", "checkpoint_every_steps", "checkpoint_every_seconds"))
    if wants_checkpoints and args.checkpoint_dir is None:
        raise ConfigError("checkpoints (--n-checkpoints, --checkpoint-every...) need "
                          "--checkpoint-dir")
    lora = _given(args, LORA_FLAGS, _PREFIXES["lora"])
    modules = lora.get("target_modules")
    if modules is not None and modules != "all-linear":
        lora["target_modules"] = tuple(m.strip() for m in modules.split(",") if m.strip())
    if args.qlora:
        lora["quantization"] = "nf4"
    crma = None if args.no_crma else CRMAConfig(**_given(args, CRMA_FLAGS, _PREFIXES["crma"]))
    return TrainConfig(**train), LoraSettings(**lora), crma


def resolve_model_dir(model: str, data_dir_arg: str | None) -> Path:
    candidate = Path(model)
    if candidate.is_dir() and (candidate / "config.json").is_file():
        return candidate
    from crma_core.model_store import ModelStore

    return ModelStore(data_dir(data_dir_arg) / "models").path(model)


def run_train(args: argparse.Namespace) -> int:
    import shutil

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from crma_core import Recipe, TrainCallbacks
    from crma_core.errors import CRMAError

    started = time.perf_counter()
    console = Console(stderr=True)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        model_dir = resolve_model_dir(args.model, args.data_dir)
        train_config, lora, crma = configs_from_args(args)
    except (KeyError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc} (see `crma models list`)")
        return 2
    except CRMAError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2

    progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                        console=console, transient=False)
    task = progress.add_task("train", total=None, status="loading model...")

    def on_step(metrics) -> None:  # noqa: ANN001 - crma_core StepMetrics
        status = (f"loss {metrics.loss:.4f}  acc {metrics.mean_token_accuracy:.3f}  "
                  f"grad {metrics.grad_norm:.3f}{' (clipped)' if metrics.clipped else ''}  "
                  f"{metrics.tokens_per_s:.0f} tok/s")
        progress.update(task, completed=metrics.step, status=status)

    def on_eval(metrics) -> None:  # noqa: ANN001 - crma_core EvalMetrics
        progress.console.print(
            f"step {metrics.step}: valid_loss {metrics.val_loss:.4f}, valid_mean_token_accuracy "
            f"{metrics.val_mean_token_accuracy:.4f}{' (best so far)' if metrics.is_best else ''}")

    def on_memory(event) -> None:  # noqa: ANN001 - crma_core MemoryEvent
        progress.console.print(f"step {event.step}: out of memory ({event.message}); "
                               f"micro-batch {event.previous} -> {event.micro_batch_size} rows")

    def on_checkpoint(step: int, directory: Path) -> None:
        target = args.checkpoint_dir / f"step-{step}"
        shutil.copytree(directory, target, dirs_exist_ok=True)
        progress.console.print(f"checkpoint: {target}")

    recipe = Recipe(model_dir=model_dir, train_file=args.data, validation_file=args.validation,
                    crma=crma, lora=lora, train=train_config,
                    callbacks=TrainCallbacks(
                        on_step=on_step, on_eval=on_eval, on_memory=on_memory,
                        on_checkpoint=on_checkpoint if args.checkpoint_dir else None))
    seconds: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}
    try:
        with progress:
            recipe.setup(resume_from=args.resume)
            plan = recipe.memory_plan
            progress.console.print(
                f"batch {plan.batch_size} rows = {plan.accumulation_steps} pass(es) of at most "
                f"{plan.micro_batch_size} ({plan.source}); "
                f"{recipe.plan.total_steps(len(recipe.rows))} steps")
            progress.update(task, total=recipe.plan.total_steps(len(recipe.rows)),
                            completed=recipe.state.step, status="")
            seconds["setup"] = time.perf_counter() - started
            result = recipe.train()
            seconds["train"] = result.train_seconds
            cpu_seconds["train"] = result.train_cpu_seconds
        exported, exported_cpu = time.perf_counter(), time.process_time()
        manifest = recipe.export_artifacts(args.out)
        seconds["export"] = time.perf_counter() - exported
        cpu_seconds["export"] = time.process_time() - exported_cpu
    except CRMAError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    finally:
        recipe.cleanup()
    _report(console, result, args.out, manifest)
    print(json.dumps({**result.to_dict(), "memory_plan": plan.to_dict(), "seconds": seconds,
                      "cpu_seconds": cpu_seconds}))
    return 0 if result.stop_reason in ("completed", "max_steps") else 1


def _report(console, result, out: Path, manifest: dict[str, Any]) -> None:  # noqa: ANN001
    line = (f"{result.stop_reason}: {result.steps} steps, {result.trained_tokens} tokens, "
            f"train_loss {result.final_train_loss:.4f}")
    if result.full_valid_loss is not None:
        line += f", full_valid_loss {result.full_valid_loss:.4f}"
    if result.full_valid_loss_lora_only is not None:
        line += f" ({result.full_valid_loss_lora_only:.4f} with the LoRA alone)"
    console.print(line)
    if result.best_step is not None:
        best = manifest.get("best_dir")
        console.print(f"best validation loss {result.best_valid_loss:.4f} at step "
                      f"{result.best_step}" + (f" (weights in {out / best})" if best else ""))
    console.print(f"bundle: {out} ({len(manifest['files'])} files; see {out / 'README.md'})")
