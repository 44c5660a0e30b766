"""The bundle's model cards: README.md (the whole bundle) and lora/README.md (that folder).

Written from the manifest's ``info`` dict (``Recipe.export_artifacts``), so the card and the
manifest always agree. The point of the card: when CRMA was trained, the LoRA folder alone
is not the trained model, and loading it in plain peft drops the CRMA half silently.
"""

from __future__ import annotations

from typing import Any


def _number(value: Any, digits: int = 4) -> str:
    return "not measured" if value is None else f"{value:.{digits}f}"


def _base_name(info: dict[str, Any]) -> str:
    return (info.get("base_model") or {}).get("dir_name") or "the base model"


def _crma_section(info: dict[str, Any], *, lora_path: str, bundle_path: str) -> list[str]:
    with_crma, lora_only = info.get("full_valid_loss"), info.get("full_valid_loss_lora_only")
    lines = [
        "## The LoRA alone is not the trained model",
        "",
        f"This adapter was trained as LoRA **and** CRMA together: `{lora_path}` holds the "
        "LoRA half, `crma.safetensors` + `crma_config.json` the CRMA half. "
        f"`peft.PeftModel.from_pretrained(base, \"{lora_path}\")` loads the LoRA without a "
        "word about CRMA (peft only warns that it ignores the `crma` key of "
        "`adapter_config.json`), and what it loads is a different model from the one "
        "trained.",
        "",
    ]
    if with_crma is not None and lora_only is not None:
        lines += [
            "| loaded as | validation loss (whole file, per token) |",
            "|---|---:|",
            f"| LoRA + CRMA (`crma_core.loader`) | {with_crma:.4f} |",
            f"| LoRA alone (plain peft) | {lora_only:.4f} |",
            "",
        ]
    else:
        lines += ["(No validation file was given, so the difference was not measured.)", ""]
    lines += [
        "Load both halves with crma_core:",
        "",
        "```python",
        "from crma_core.loader import load_for_generation",
        f"model, tokenizer = load_for_generation(\"path/to/{_base_name(info)}\", "
        f"\"{bundle_path}\")",
        "```",
        "",
    ]
    return lines


def _crma_summary(crma: dict[str, Any] | None, train: dict[str, Any]) -> str:
    if not crma:
        return "off"
    return (f"n={crma.get('n')} streams of rank {crma.get('r')}; learning rates read/write "
            f"{train.get('lr_rw')}, mixing {train.get('lr_mix')}, gate {train.get('lr_gate')} "
            "(the rest in crma_config.json)")


def model_card(info: dict[str, Any]) -> str:
    """README.md of the bundle root."""
    crma = info.get("crma") is not None
    train = info.get("train") or {}
    lora = info.get("lora") or {}
    metrics = info.get("metrics") or {}
    best = info.get("best") or {}
    lines = [
        f"# {'LoRA + CRMA' if crma else 'LoRA'} adapter for {_base_name(info)}",
        "",
        f"Fine-tuned with crma_core: {info.get('steps', 0)} optimizer steps, "
        f"{info.get('trained_tokens', 0):,} trained tokens"
        + (f" (stopped: {info['stop_reason']})" if info.get("stop_reason") else "") + ".",
        "",
        "## What is in this bundle",
        "",
        "| path | what it is |",
        "|---|---|",
        "| `lora/` | a PEFT LoRA adapter (`adapter_config.json`, `adapter_model.safetensors`)"
        + (": the LoRA half only" if crma else "") + " |",
    ]
    if crma:
        lines.append("| `crma.safetensors`, `crma_config.json` | the CRMA half (read, write, "
                     "mixing logits and gate per decoder layer) |")
    if info.get("best_dir"):
        lines.append(f"| `{info['best_dir']}/` | the same adapter at step {best.get('step')}, "
                     f"the lowest validation loss ({_number(best.get('valid_loss'))}) |")
    lines += [
        "| `metrics.jsonl` | one line per step, evaluation, checkpoint and memory event, "
        "and a final summary (OpenAI's names: `train_loss`, `train_mean_token_accuracy`, "
        "`valid_loss`, `valid_mean_token_accuracy`, `full_valid_loss`) |",
        "| `plots/` | loss and gradient-norm curves |",
        "| `manifest.json` | settings, results, and size + sha256 of every file |",
        "",
    ]
    if crma:
        lines += _crma_section(info, lora_path="lora", bundle_path="path/to/this/bundle")
    else:
        lines += ["## Loading", "", "```python", "from peft import PeftModel",
                  "model = PeftModel.from_pretrained(base_model, \"lora\")", "```", ""]
    lines += [
        "## Results",
        "",
        "| metric | value |",
        "|---|---:|",
        f"| train_loss (last step) | {_number(metrics.get('train_loss'))} |",
        f"| train_mean_token_accuracy (last step) | "
        f"{_number(metrics.get('train_mean_token_accuracy'))} |",
        f"| full_valid_loss | {_number(metrics.get('full_valid_loss'))} |",
        f"| full_valid_mean_token_accuracy | "
        f"{_number(metrics.get('full_valid_mean_token_accuracy'))} |",
        "",
        "## Training settings",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    for label, value in (
            ("epochs", train.get("epochs")),
            ("batch size (rows per step)", train.get("batch_size")),
            ("micro-batch (rows per pass)", info.get("micro_batch_size")),
            ("max sequence length", train.get("max_seq_len")), ("packing", train.get("packing")),
            ("learning rate (LoRA)", train.get("lr_main")),
            ("schedule", train.get("lr_schedule")),
            ("warm-up", f"{train.get('warmup_steps')} steps / ratio {train.get('warmup_ratio')}"),
            ("weight decay", train.get("weight_decay")),
            ("clipping", f"{train.get('clip')} (max norm {train.get('max_grad_norm')})"),
            ("loss on prompt tokens (train_on_inputs)", train.get("train_on_inputs")),
            ("LoRA r / alpha / dropout", f"{lora.get('r')} / {lora.get('alpha')} / "
                                         f"{lora.get('dropout')}"),
            ("LoRA target modules", lora.get("target_modules")),
            ("CRMA", _crma_summary(info.get("crma"), train)), ("seed", train.get("seed"))):
        lines.append(f"| {label} | {value} |")
    return "\n".join(lines) + "\n"


def lora_card(info: dict[str, Any]) -> str:
    """README.md inside lora/: what this folder is, and what it is not."""
    weights_of = info.get("weights_of_step")
    title = "LoRA half of a LoRA + CRMA adapter" if info.get("crma") else "LoRA adapter"
    lines = [f"# {title} for {_base_name(info)}", ""]
    if weights_of is not None:
        lines += [f"These are the weights of step {weights_of} (lowest validation loss).", ""]
    if info.get("crma"):
        lines += _crma_section(info, lora_path="lora", bundle_path="path/to/the/folder/above")
        lines += ["See `../README.md` for the whole bundle."]
    else:
        lines += ["A standard PEFT LoRA adapter: "
                  "`PeftModel.from_pretrained(base_model, \"path/to/lora\")`. "
                  "See `../README.md` for the whole bundle."]
    return "\n".join(lines) + "\n"
