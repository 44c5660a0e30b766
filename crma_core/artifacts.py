"""The adapter bundle: PEFT LoRA directory, CRMA weights, metrics, plots and a manifest."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from torch import nn

from crma_core.io import save_crma, sha256_file, write_json
from crma_core.model import CRMAHandle

LORA_DIR = "lora"
METRICS = "metrics.jsonl"
MANIFEST = "manifest.json"
LOSS_PLOT = "plots/loss.png"
GRAD_PLOT = "plots/grad_norm.png"


def write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for record in history:
            fh.write(json.dumps(record) + "\n")


def plot_history(history: list[dict[str, Any]], directory: Path) -> list[Path]:
    """plots/loss.png (train loss per step, validation loss per eval) and
    plots/grad_norm.png (gradient norm before clipping; clipped steps marked)."""
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: never needs a display
    import matplotlib.pyplot as plt

    directory = Path(directory)
    (directory / "plots").mkdir(parents=True, exist_ok=True)
    steps = [r for r in history if r.get("type") == "step"]
    evals = [r for r in history if r.get("type") == "eval"]

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], label="train loss", lw=1.2)
    if evals:
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-",
                label="validation loss", lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (response tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    loss_path = directory / LOSS_PLOT
    fig.savefig(loss_path)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([r["step"] for r in steps], [r["grad_norm"] for r in steps],
            label="gradient norm (before clipping)", lw=1.2)
    clipped = [r for r in steps if r.get("clipped")]
    if clipped:
        ax.plot([r["step"] for r in clipped], [r["grad_norm"] for r in clipped], "x",
                color="tab:red", label="clipped")
    ax.set_xlabel("step")
    ax.set_ylabel("global L2 norm")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    grad_path = directory / GRAD_PLOT
    fig.savefig(grad_path)
    plt.close(fig)
    return [loss_path, grad_path]


def build_manifest(directory: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """{"files": [{"name", "bytes", "sha256"}], **extra} over every file but the manifest."""
    directory = Path(directory)
    files = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix()
        if name == MANIFEST:
            continue
        files.append({"name": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return {"files": files, **extra}


def export_bundle(out_dir: Path, *, model: nn.Module, crma: CRMAHandle | None,
                  history: list[dict[str, Any]], info: dict[str, Any],
                  pissa_init_dir: Path | None = None,
                  base_model_name: str | None = None) -> dict[str, Any]:
    """Write the bundle into ``out_dir`` and return its manifest.

    lora/ is a PEFT adapter directory (``PeftModel.from_pretrained(base, out_dir/"lora")``);
    a PiSSA adapter is converted to a plain LoRA that applies to the unmodified base.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if pissa_init_dir is not None:
        kwargs["path_initial_model_for_weight_conversion"] = str(pissa_init_dir)
    # save_embedding_layers=False: "auto" probes the Hub for the base model's config.
    model.save_pretrained(str(out_dir / LORA_DIR), safe_serialization=True,
                          save_embedding_layers=False, **kwargs)
    if base_model_name is not None:
        # The server's local path means nothing to whoever downloads the adapter. Rewritten
        # after saving: peft looks the name up (on the Hub if not a local path) while saving.
        config_path = out_dir / LORA_DIR / "adapter_config.json"
        adapter_config = json.loads(config_path.read_text())
        adapter_config["base_model_name_or_path"] = base_model_name
        config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    # peft's generated model card repeats the local path and adds nothing we need.
    (out_dir / LORA_DIR / "README.md").unlink(missing_ok=True)
    if crma is not None:
        save_crma(crma, out_dir)
    write_metrics(out_dir / METRICS, history)
    plot_history(history, out_dir)
    manifest = build_manifest(out_dir, {
        "format": "crma-adapter-bundle", "version": 1,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info,
    })
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def verify_bundle(directory: Path) -> dict[str, Any]:
    """Check every file against the manifest; returns the manifest or raises ValueError."""
    directory = Path(directory)
    manifest = json.loads((directory / MANIFEST).read_text())
    for entry in manifest["files"]:
        path = directory / entry["name"]
        if not path.is_file() or path.stat().st_size != entry["bytes"] \
                or sha256_file(path) != entry["sha256"]:
            raise ValueError(f"bundle file {entry['name']} is missing or altered")
    return manifest
