"""`crma train`: the single-task trainer without the service, with a progress bar.

--model is a model id in the store (<data-dir>/models, see `crma models`) or a path to a local
Hugging Face directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from crma_cli.models import data_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train", help="fine-tune LoRA (+ CRMA) locally on a JSONL file")
    train.add_argument("--model", required=True, help="store model id or local model directory")
    train.add_argument("--data", required=True, type=Path, help="training JSONL")
    train.add_argument("--validation", type=Path, default=None, help="validation JSONL")
    train.add_argument("--out", required=True, type=Path, help="output bundle directory")
    train.add_argument("--no-crma", action="store_true", help="LoRA only")
    train.add_argument("--data-dir", default=None,
                       help="installation root for the model store (default $CRMA_DATA_DIR or ./.data)")
    train.add_argument("--epochs", type=int, default=3)
    train.add_argument("--batch-size", type=int, default=4)
    train.add_argument("--lr", type=float, default=2e-4, help="LoRA + CRMA read/write rate")
    train.add_argument("--lr-mix", type=float, default=1e-3)
    train.add_argument("--lr-gate", type=float, default=1e-4)
    train.add_argument("--max-seq-len", type=int, default=1024)
    train.add_argument("--max-steps", type=int, default=None)
    train.add_argument("--eval-every", type=int, default=None)
    train.add_argument("--packing", action="store_true")
    train.add_argument("--clip", choices=("zclip", "max_norm"), default="zclip")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--lora-r", type=int, default=16)
    train.add_argument("--lora-alpha", type=int, default=32)
    train.add_argument("--lora-init", choices=("default", "pissa"), default="default")
    train.add_argument("--qlora", action="store_true", help="4-bit NF4 base (CUDA only)")
    train.add_argument("--n-streams", type=int, default=4)
    train.add_argument("--stream-rank", type=int, default=1)
    train.add_argument("--device", default="cpu")
    train.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    train.add_argument("--gradient-checkpointing", action="store_true")
    train.add_argument("--resume", type=Path, default=None, help="checkpoint directory")
    train.add_argument("--checkpoint-dir", type=Path, default=None,
                       help="keep checkpoints here (with --checkpoint-every)")
    train.add_argument("--checkpoint-every", type=int, default=None, help="steps")
    train.set_defaults(func=run_train)


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

    from crma_core import CRMAConfig, LoraSettings, Recipe, TrainCallbacks, TrainConfig
    from crma_core.errors import CRMAError

    console = Console(stderr=True)
    try:
        model_dir = resolve_model_dir(args.model, args.data_dir)
    except (KeyError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc} (see `crma models list`)")
        return 2
    train_config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr_main=args.lr, lr_mix=args.lr_mix,
        lr_gate=args.lr_gate, max_seq_len=args.max_seq_len, max_steps=args.max_steps,
        eval_every=args.eval_every, packing=args.packing, clip=args.clip, seed=args.seed,
        device=args.device, dtype=args.dtype, gradient_checkpointing=args.gradient_checkpointing,
        checkpoint_every_steps=args.checkpoint_every if args.checkpoint_dir else None)
    lora = LoraSettings(r=args.lora_r, alpha=args.lora_alpha, init=args.lora_init,
                        quantization="nf4" if args.qlora else None)
    crma = None if args.no_crma else CRMAConfig(n=args.n_streams, r=args.stream_rank)

    progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                        console=console, transient=False)
    task = progress.add_task("train", total=None, status="loading model...")

    def on_step(metrics) -> None:  # noqa: ANN001 - crma_core StepMetrics
        status = (f"loss {metrics.loss:.4f}  grad {metrics.grad_norm:.3f}"
                  f"{' (clipped)' if metrics.clipped else ''}  {metrics.tokens_per_s:.0f} tok/s")
        progress.update(task, completed=metrics.step, status=status)

    def on_eval(metrics) -> None:  # noqa: ANN001 - crma_core EvalMetrics
        progress.console.print(f"step {metrics.step}: validation loss {metrics.val_loss:.4f}")

    def on_checkpoint(step: int, directory: Path) -> None:
        target = args.checkpoint_dir / f"step-{step}"
        shutil.copytree(directory, target, dirs_exist_ok=True)
        progress.console.print(f"checkpoint: {target}")

    recipe = Recipe(model_dir=model_dir, train_file=args.data, validation_file=args.validation,
                    crma=crma, lora=lora, train=train_config,
                    callbacks=TrainCallbacks(on_step=on_step, on_eval=on_eval,
                                             on_checkpoint=on_checkpoint if args.checkpoint_dir else None))
    try:
        with progress:
            recipe.setup(resume_from=args.resume)
            progress.update(task, total=recipe.plan.total_steps(len(recipe.rows)),
                            completed=recipe.state.step, status="")
            result = recipe.train()
        manifest = recipe.export_artifacts(args.out)
    except CRMAError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    finally:
        recipe.cleanup()
    console.print(f"{result.stop_reason}: {result.steps} steps, {result.trained_tokens} tokens, "
                  f"train loss {result.final_train_loss:.4f}"
                  + (f", validation loss {result.final_val_loss:.4f}"
                     if result.final_val_loss is not None else ""))
    console.print(f"bundle: {args.out} ({len(manifest['files'])} files)")
    print(json.dumps(result.to_dict()))
    return 0 if result.stop_reason in ("completed", "max_steps") else 1

