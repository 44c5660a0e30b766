"""Training checkpoints as safetensors + JSON only (nothing pickled, nothing unpickled).

A checkpoint directory holds:
  trainable.safetensors   every trainable base-model parameter (the LoRA A/B) by name
  crma.safetensors, crma_config.json   when CRMA is attached
  optimizer.safetensors   AdamW state flattened to ``state.{index}.{key}``
  optimizer.json          AdamW param_groups (hyper-parameters, parameter indices)
  rng.safetensors         torch CPU/CUDA generator states (uint8) and numpy's MT state
  trainer.json            loop state, clipper state, Python RNG state, run settings
  metrics.jsonl           the step/eval history so far
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crma_core.errors import CheckpointError, StaleCheckpointError
from crma_core.io import load_crma_into, load_tensors, save_crma, save_tensors, write_json
from crma_core.loop import LoopState
from crma_core.model import CRMAHandle

CHECKPOINT_VERSION = 1


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    state = optimizer.state_dict()
    tensors = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    save_tensors(directory / "optimizer.safetensors", tensors)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
              for g in state["param_groups"]]
    write_json(directory / "optimizer.json", {"param_groups": groups, "scalars": scalars})


def load_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    meta = json.loads((directory / "optimizer.json").read_text())
    tensors = load_tensors(directory / "optimizer.safetensors")
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, entry in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()}
              for g in meta["param_groups"]]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        raise CheckpointError("optimizer groups in the checkpoint do not match this model")
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss = random.getstate()
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss]}
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted(k for k in tensors if k.startswith("torch_cuda_"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss,
                         cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(directory: Path, *, model: nn.Module, crma: CRMAHandle | None,
                    optimizer: torch.optim.Optimizer, clipper, state: LoopState,
                    run: dict[str, Any]) -> Path:
    """Write everything needed to continue training bit-for-bit into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(directory / "trainable.safetensors", trainable_state(model))
    if crma is not None:
        save_crma(crma, directory)
    save_optimizer(optimizer, directory)
    rng_tensors, rng_meta = capture_rng()
    save_tensors(directory / "rng.safetensors", rng_tensors)
    with open(directory / "metrics.jsonl", "w", encoding="utf-8") as fh:
        for record in state.history:
            fh.write(json.dumps(record) + "\n")
    write_json(directory / "trainer.json", {
        "version": CHECKPOINT_VERSION, "loop": state.to_dict(),
        "clipper": clipper.state_dict(), "rng": rng_meta, "run": run,
    })
    return directory


def settings_difference(a: dict, b: dict, prefix: str = "") -> str:
    """`key: a vs b` for every (nested, dotted) setting that differs: why a resume was refused."""
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            sub = settings_difference(x, y, f"{prefix}{key}.")
            if sub:
                out.append(sub)
        elif x != y:
            out.append(f"{prefix}{key}: {x!r} vs {y!r}")
    return ", ".join(out)


# Before CRMA's read/write projections had their own optimizer group and rate (lr_rw), they
# trained in the LoRA's group and run settings had no lr_rw: such a checkpoint's optimizer
# state and settings cannot continue with today's (a LoRA-only one differs in lr_rw only,
# but the settings check cannot tell which rate it would have used).
STALE_OPTIMIZER_GROUPS = (
    "this checkpoint was written before CRMA's read/write projections got their own "
    "optimizer group and learning rate (lr_rw, far below the LoRA's), so it cannot be "
    "resumed; start the run again")


def read_run_settings(directory: Path) -> dict[str, Any]:
    """The ``run`` settings dict stored by ``save_checkpoint`` (a single-task run's, or a
    continual stage's under "continual"). Raises StaleCheckpointError for a checkpoint
    written before lr_rw existed."""
    run = _trainer_meta(Path(directory))["run"]
    settings = (run.get("continual") or {}).get("config") or run
    if "lr_rw" not in (settings.get("train") or {}):
        raise StaleCheckpointError(STALE_OPTIMIZER_GROUPS)
    return run


def _trainer_meta(directory: Path) -> dict[str, Any]:
    path = directory / "trainer.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a checkpoint (no trainer.json)")
    meta = json.loads(path.read_text())
    if meta.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"unsupported checkpoint version {meta.get('version')}")
    return meta


def load_checkpoint(directory: Path, *, model: nn.Module, crma: CRMAHandle | None,
                    optimizer: torch.optim.Optimizer, clipper) -> LoopState:
    """Restore weights, optimizer, clipper and RNG; returns the loop state to continue from.

    The RNG is restored last, so whatever building the model consumed does not matter.
    """
    directory = Path(directory)
    meta = _trainer_meta(directory)
    saved = load_tensors(directory / "trainable.safetensors")
    params = trainable_state(model)
    if set(saved) != set(params):
        raise CheckpointError("the checkpoint's trainable parameters do not match this model "
                              "(different LoRA settings or base model?)")
    with torch.no_grad():
        for name, p in params.items():
            if saved[name].shape != p.shape:
                raise CheckpointError(f"{name}: shape {tuple(saved[name].shape)} in the "
                                      f"checkpoint, {tuple(p.shape)} here")
            p.copy_(saved[name])
    has_crma = (directory / "crma.safetensors").is_file()
    if has_crma != (crma is not None):
        raise CheckpointError("the checkpoint and this run disagree on whether CRMA is used")
    if crma is not None:
        load_crma_into(crma, directory)
    load_optimizer(optimizer, directory)
    clipper.load_state_dict(meta["clipper"])
    history = [json.loads(line) for line in
               (directory / "metrics.jsonl").read_text().splitlines() if line.strip()]
    state = LoopState.from_dict(meta["loop"], history)
    restore_rng(load_tensors(directory / "rng.safetensors"), meta["rng"])
    return state
