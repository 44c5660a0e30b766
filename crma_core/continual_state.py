"""The continual run's state directory and its adapter bundle (safetensors + JSON only).

A state directory is everything needed to add the next domain later, on another machine:

  state.json                      format/version, mode, seed, config, base model identity,
                                  optimizer policy, the domains (name, adapter, holdout copy,
                                  sha256s, base loss, stage summary) and the loss matrix
  report.json                     ``crma_core.drift.continual_report`` of the matrix so far
  loras/<adapter>/adapter_model.safetensors, adapter_config.json
                                  one LoRA per domain (adapters d0, d1, ...; modular and
                                  frozen) or the one LoRA (adapter "shared"; naive), in PEFT's
                                  on-disk format
                                  and, with ``baseline``, loras/b<i>/: each domain's plain
                                  baseline LoRA
  crma/crma.safetensors, crma/crma_config.json     the current (shared) CRMA (modular only)
  crma_states/after-<k>/          the CRMA snapshot taken after stage k, for every k < the
                                  last stage that still serves some domain (modular; which
                                  domain uses which: state.json "served", last row)
  holdouts/d<i>.jsonl             a copy of every domain's holdout file (JSON lines), so
                                  later stages score earlier domains without the caller
                                  keeping or re-sending those files
  holdouts/general.jsonl          the general-text holdout, when the run was given one

Nothing is pickled and nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crma_core.artifacts import build_manifest
from crma_core.continual_config import (  # noqa: F401 - re-exported
    DEFAULT_DRIFT_BUDGET_PCT,
    MODES,
    STAGE_MAY_CHANGE,
    ContinualConfig,
)
from crma_core.errors import CheckpointError
from crma_core.io import load_tensors, save_tensors, sha256_file, write_json

STATE_FORMAT = "crma-continual-state"
STATE_VERSION = 2  # 2: per-domain CRMA snapshots, serving, baseline, general holdout
STATE_FILE = "state.json"
REPORT_FILE = "report.json"
LORAS_DIR = "loras"
CRMA_DIR = "crma"
HOLDOUTS_DIR = "holdouts"
ROUTING_DIR = "routing"  # each domain's routing centroid (crma_core.routing)
# The centroid's name in a domain's LoRA folder of a bundle, where the engine reads it.
CENTROID_FILE = "route_centroid.safetensors"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
NAIVE_ADAPTER = "shared"
BASELINE_DIR = "baseline"  # the baseline LoRAs (b0, b1, ...) in a state and a bundle
CRMA_STATES_DIR = "crma_states"  # CRMA snapshots that serve earlier domains
GENERAL_HOLDOUT = "holdouts/general.jsonl"
BUNDLE_FORMAT = "crma-continual-bundle"
# What happens to optimizer state between domains (recorded in every state).
OPTIMIZER_POLICY = {
    "lora": "fresh AdamW moments for every domain's LoRA (naive: the shared LoRA's moments "
            "are reset at every domain too)",
    "crma": "re-created at every domain: each domain's stage has its own warm-up/decay "
            "schedule and optimizer, so no moments carry over (the CRMA weights do)",
    "clipper": "fresh ZClip/max-norm state per optimizer group for every domain",
    "lr_schedule": "restarts at every domain (warm-up, then decay over that domain's steps)",
}


@dataclass(frozen=True)
class DomainSpec:
    """One domain: a name, its training file and its holdout file (JSONL, any format)."""

    name: str
    train_file: Path
    holdout_file: Path


def adapter_name(mode: str, index: int) -> str:
    """The PEFT adapter that domain ``index`` trains and is scored with."""
    return NAIVE_ADAPTER if mode == "naive" else f"d{index}"


def baseline_adapter(index: int) -> str:
    """The PEFT adapter of domain ``index``'s baseline LoRA (``ContinualConfig.baseline``)."""
    return f"b{index}"


def crma_state_dir(stage: int) -> str:
    """Where a state directory keeps the CRMA snapshot taken after stage ``stage``."""
    return f"{CRMA_STATES_DIR}/after-{stage}"


def base_model_identity(model_dir: Path) -> dict[str, Any]:
    """{"dir_name", "config_sha256"}: a later stage must run on the same base model."""
    model_dir = Path(model_dir)
    return {"dir_name": model_dir.name,
            "config_sha256": sha256_file(model_dir / "config.json")}


def slug(name: str) -> str:
    """A path-safe form of a domain name (for artifact paths)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")
    return cleaned[:60] or "domain"


# -- LoRA tensors ----------------------------------------------------------------------------
def lora_state(model: nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """The adapter's LoRA tensors under PEFT's saved names (adapter name stripped)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, adapter_name=adapter, save_embedding_layers=False)


def save_lora(model: nn.Module, adapter: str, directory: Path, *, base_model_name: str) -> None:
    """``adapter_model.safetensors`` + ``adapter_config.json`` (loadable with
    ``peft.PeftModel.from_pretrained(base, directory)``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(directory / ADAPTER_WEIGHTS, lora_state(model, adapter))
    config = model.peft_config[adapter].to_dict()
    for key, value in config.items():
        if isinstance(value, set):
            config[key] = sorted(value)  # sorted: the same adapter gives the same bytes
    config["base_model_name_or_path"] = base_model_name
    config["inference_mode"] = True
    write_json(directory / ADAPTER_CONFIG, config)


def load_lora(model: nn.Module, adapter: str, directory: Path) -> None:
    """Load saved LoRA weights into the model's existing adapter ``adapter`` (exact names
    and shapes required)."""
    from peft import set_peft_model_state_dict

    saved = load_tensors(Path(directory) / ADAPTER_WEIGHTS)
    expected = lora_state(model, adapter)
    if set(saved) != set(expected):
        raise CheckpointError(f"LoRA {adapter} in {directory} does not match this model's "
                              "LoRA layout (different base model or LoRA settings?)")
    for key, tensor in saved.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(f"LoRA tensor {key}: shape {tuple(tensor.shape)} saved, "
                                  f"{tuple(expected[key].shape)} here")
    result = set_peft_model_state_dict(model, saved, adapter_name=adapter)
    if result.unexpected_keys:
        raise CheckpointError(f"unexpected LoRA keys {result.unexpected_keys[:3]}")


# -- the state directory ---------------------------------------------------------------------
def read_state(directory: Path) -> dict[str, Any]:
    """``state.json`` of a state directory, checked for format and version."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a continual-run state (no {STATE_FILE})")
    state = json.loads(path.read_text())
    if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
        raise CheckpointError(f"{path}: unsupported state format "
                              f"{state.get('format')!r} v{state.get('version')!r}")
    return state


def holdout_path(directory: Path, entry: dict[str, Any]) -> Path:
    """The stored holdout copy of a domain entry, verified against its sha256."""
    path = Path(directory) / entry["holdout"]
    if not path.is_file() or sha256_file(path) != entry["holdout_sha256"]:
        raise CheckpointError(f"holdout copy {entry['holdout']} is missing or altered")
    return path


def begin_state_dir(directory: Path) -> Path:
    """A fresh temporary sibling of ``directory`` to write into (``finish_state_dir`` moves
    it into place, so a crash never leaves half a state where a whole one is expected)."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise CheckpointError(f"state directory {directory} already exists and is not empty")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def finish_state_dir(tmp: Path, directory: Path) -> Path:
    directory = Path(directory)
    if directory.exists():
        directory.rmdir()  # empty (checked by begin_state_dir)
    os.replace(tmp, directory)
    return directory


def state_files(directory: Path) -> list[str]:
    """Every file in a state directory, relative and sorted."""
    directory = Path(directory)
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


# -- the published bundle --------------------------------------------------------------------
def export_bundle(state_dir: Path, out_dir: Path, *, title: str | None = None) -> dict[str, Any]:
    """The run's downloadable artifacts from a state directory; returns the manifest.

    loras/<i>-<domain>/{adapter_model.safetensors,adapter_config.json} (modular, frozen) or
    lora/ (naive); baseline/<i>-<domain>/ (each domain's baseline LoRA, when trained);
    crma/after-<k>/{crma.safetensors,crma_config.json} (modular: every CRMA state that
    serves a domain) and crma.safetensors + crma_config.json (modular: the shared CRMA, the
    one a next stage continues training); continual_report.json; plots/loss_matrix.png (and
    plots/versus_baseline.png with a baseline); manifest.json (sha256 of every file, and
    per domain the paths of its served pair: ``domains[i].lora`` / ``.crma`` /
    ``.baseline_lora``, what ``crma_core.loader.load_for_generation(domain=...)`` reads).
    """
    from crma_core.drift import plot_loss_matrix, plot_versus_baseline

    state_dir, out_dir = Path(state_dir), Path(out_dir)
    state = read_state(state_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last = len(state["domains"]) - 1
    serving = state["served"][-1] if state.get("served") else None
    entries = []
    for entry in state["domains"]:
        i, name = entry["index"], slug(entry["name"])
        item = {"index": i, "name": entry["name"], "crma": None, "baseline_lora": None}
        if state["mode"] == "naive":
            item["lora"] = "lora"
        else:
            item["lora"] = f"{LORAS_DIR}/{i}-{name}"
            shutil.copytree(state_dir / LORAS_DIR / entry["adapter"], out_dir / item["lora"])
            if entry.get("route_centroid"):  # the engine's router reads it from there
                shutil.copy2(state_dir / entry["route_centroid"],
                             out_dir / item["lora"] / CENTROID_FILE)
        if entry.get("baseline"):
            item["baseline_lora"] = f"{BASELINE_DIR}/{i}-{name}"
            shutil.copytree(state_dir / LORAS_DIR / entry["baseline"]["adapter"],
                            out_dir / item["baseline_lora"])
        if serving is not None:
            k = serving[i]
            item["crma"] = f"{CRMA_DIR}/after-{k}"
            if not (out_dir / item["crma"]).exists():
                shutil.copytree(state_dir / (CRMA_DIR if k == last else crma_state_dir(k)),
                                out_dir / item["crma"])
        entries.append(item)
    if state["mode"] == "naive":
        shutil.copytree(state_dir / LORAS_DIR / NAIVE_ADAPTER, out_dir / "lora")
    if state["mode"] == "modular":
        for name in ("crma.safetensors", "crma_config.json"):
            shutil.copy2(state_dir / CRMA_DIR / name, out_dir / name)
    report = json.loads((state_dir / REPORT_FILE).read_text())
    report = {"mode": state["mode"], "seed": state["seed"], **report}
    write_json(out_dir / "continual_report.json", report)
    names = [entry["name"] for entry in state["domains"]]
    title = title or f"{state['mode']} run, seed {state['seed']}"
    plot_loss_matrix(report["matrix"], names, out_dir / "plots" / "loss_matrix.png",
                     title=title)
    if "versus_baseline" in report:
        plot_versus_baseline(report, out_dir / "plots" / "versus_baseline.png", title=title)
    manifest = build_manifest(out_dir, {
        "format": BUNDLE_FORMAT, "version": 2, "mode": state["mode"],
        "seed": state["seed"], "base_model": state["base_model"], "domains": entries,
        "config": state["config"],
    })
    write_json(out_dir / "manifest.json", manifest)
    return manifest
