"""The adapter bundle: PEFT LoRA directory, CRMA weights, model card, metrics, plots, manifest.

When CRMA was trained, ``lora/`` alone is not the trained model. Plain peft loads it
without complaint, so the bundle says so three ways: the model card (``README.md``, also
in ``lora/``), the manifest, and a ``"crma"`` key in ``lora/adapter_config.json``. peft
ignores that unknown key with a warning that names it (``PeftModel.from_pretrained``
still loads the LoRA); ``crma_core.loader`` reads it, and warns if the CRMA files it points
to are missing.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from crma_core.io import CRMA_CONFIG, CRMA_WEIGHTS, save_crma, sha256_file, write_json
from crma_core.model import CRMAHandle
from crma_core.model_card import lora_card, model_card
from crma_core.snapshot import WeightSnapshot, swapped_in

LORA_DIR = "lora"
BEST_DIR = "best"
README = "README.md"
METRICS = "metrics.jsonl"
MANIFEST = "manifest.json"
LOSS_PLOT = "plots/loss.png"
GRAD_PLOT = "plots/grad_norm.png"
# The key in adapter_config.json that says a CRMA half belongs to this LoRA.
CRMA_NOTE_KEY = "crma"


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


def crma_note(info: dict[str, Any]) -> dict[str, Any]:
    """The ``"crma"`` entry of a LoRA's adapter_config.json when CRMA was trained with it."""
    return {
        "note": "This LoRA was trained together with a CRMA adapter and is not the trained "
                "model on its own; the CRMA half is in ../crma.safetensors. Load both with "
                "crma_core.loader.load_for_generation(base_dir, bundle_dir); see ../README.md.",
        "weights": f"../{CRMA_WEIGHTS}", "config": f"../{CRMA_CONFIG}",
        "full_valid_loss": info.get("full_valid_loss"),
        "full_valid_loss_lora_only": info.get("full_valid_loss_lora_only"),
    }


def write_adapter(out_dir: Path, *, model: nn.Module, crma: CRMAHandle | None,
                  info: dict[str, Any], pissa_init_dir: Path | None = None,
                  base_model_name: str | None = None) -> None:
    """``lora/`` (PEFT, with its card and, with CRMA, the note) and the CRMA files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if pissa_init_dir is not None:
        kwargs["path_initial_model_for_weight_conversion"] = str(pissa_init_dir)
    # save_embedding_layers=False: "auto" probes the Hub for the base model's config.
    model.save_pretrained(str(out_dir / LORA_DIR), safe_serialization=True,
                          save_embedding_layers=False, **kwargs)
    # Rewritten after saving: peft looks the name up (on the Hub if not a local path) while
    # saving, and the server's local path means nothing to whoever downloads the adapter.
    config_path = out_dir / LORA_DIR / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    if base_model_name is not None:
        adapter_config["base_model_name_or_path"] = base_model_name
    if crma is not None:
        adapter_config[CRMA_NOTE_KEY] = crma_note(info)
    config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    # peft's generated card repeats the local path; ours says what the folder is.
    (out_dir / LORA_DIR / README).write_text(lora_card(info))
    if crma is not None:
        save_crma(crma, out_dir)


def export_bundle(out_dir: Path, *, model: nn.Module, crma: CRMAHandle | None,
                  history: list[dict[str, Any]], info: dict[str, Any],
                  pissa_init_dir: Path | None = None,
                  base_model_name: str | None = None,
                  best: WeightSnapshot | None = None) -> dict[str, Any]:
    """Write the bundle into ``out_dir`` and return its manifest.

    lora/ is a PEFT adapter directory (``PeftModel.from_pretrained(base, out_dir/"lora")``);
    a PiSSA adapter is converted to a plain LoRA that applies to the unmodified base.
    ``best``: the weights with the lowest validation loss, written as ``best/`` (same
    layout: lora/ + CRMA files) unless they are the final weights. ``info`` goes into the
    manifest and the model card (README.md).
    """
    out_dir = Path(out_dir)
    write_adapter(out_dir, model=model, crma=crma, info=info, pissa_init_dir=pissa_init_dir,
                  base_model_name=base_model_name)
    has_best = best is not None and best.step != info.get("steps")
    if has_best:
        with swapped_in(best, model, crma):
            write_adapter(out_dir / BEST_DIR, model=model, crma=crma,
                          info={**info, "weights_of_step": best.step,
                                "full_valid_loss": None, "full_valid_loss_lora_only": None},
                          pissa_init_dir=pissa_init_dir, base_model_name=base_model_name)
    info = {**info, "best_dir": BEST_DIR if has_best else None}
    (out_dir / README).write_text(model_card(info))
    write_metrics(out_dir / METRICS, history)
    plot_history(history, out_dir)
    manifest = build_manifest(out_dir, {
        "format": "crma-adapter-bundle", "version": 1,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info,
    })
    write_json(out_dir / MANIFEST, manifest)
    return manifest


class CRMADroppedWarning(UserWarning):
    """A LoRA trained with CRMA is being loaded without its CRMA half."""


def crma_dropped(lora_dir: Path, crma_dir: Path | None) -> str | None:
    """Why loading ``lora_dir`` with the CRMA files of ``crma_dir`` (None: none) drops a
    CRMA half its adapter_config.json says belongs to it; None when nothing is dropped."""
    config_path = Path(lora_dir) / "adapter_config.json"
    note = json.loads(config_path.read_text()).get(CRMA_NOTE_KEY) if config_path.is_file() \
        else None
    if not note or (crma_dir is not None and (Path(crma_dir) / CRMA_WEIGHTS).is_file()):
        return None
    figures = ""
    both, alone = note.get("full_valid_loss"), note.get("full_valid_loss_lora_only")
    if both is not None and alone is not None:
        figures = f" (validation loss {both:.4f} with it, {alone:.4f} without)"
    return (f"{lora_dir} was trained together with a CRMA adapter, which is not being loaded"
            f"{figures}: this is not the trained model. Load the whole bundle with "
            "crma_core.loader.load_for_generation.")


def warn_if_crma_dropped(lora_dir: Path, crma_dir: Path | None) -> None:
    """``warnings.warn(CRMADroppedWarning)`` when ``crma_dropped`` says so."""
    message = crma_dropped(lora_dir, crma_dir)
    if message is not None:
        warnings.warn(message, CRMADroppedWarning, stacklevel=3)


@contextmanager
def peft_ignoring_crma_note() -> Iterator[None]:
    """Silence peft's warning about the ``"crma"`` key while our own loader reads a LoRA (it
    loads the CRMA half itself)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Unexpected keyword arguments \['crma'\]")
        yield


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
