"""CRMA weights on disk: ``crma.safetensors`` + ``crma_config.json`` (never pickle).

Also the small JSON/sha256 helpers the checkpoint and artifact writers share.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from crma_core.config import CRMAConfig
from crma_core.errors import CheckpointError
from crma_core.model import CRMAHandle, attach_crma

CRMA_WEIGHTS = "crma.safetensors"
CRMA_CONFIG = "crma_config.json"
FORMAT_VERSION = 1


def save_crma(handle: CRMAHandle, directory: Path) -> list[Path]:
    """Write ``crma.safetensors`` (keys ``layers.{i}.read|write|log_mix|_log_alpha``) and
    ``crma_config.json`` (the CRMAConfig plus hidden size and layer count)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in handle.state_dict().items()}
    weights = directory / CRMA_WEIGHTS
    save_file(tensors, str(weights), metadata={"format": "crma", "version": str(FORMAT_VERSION)})
    meta = {
        "format": "crma",
        "version": FORMAT_VERSION,
        "config": handle.config.to_dict(),
        "hidden_size": handle.hidden_size,
        "num_layers": len(handle.layers),
        "parameters": handle.num_parameters(),
    }
    config_path = directory / CRMA_CONFIG
    write_json(config_path, meta)
    return [weights, config_path]


def read_crma_config(directory: Path) -> tuple[CRMAConfig, dict[str, Any]]:
    """The CRMAConfig stored in ``directory`` and the whole metadata dict."""
    path = Path(directory) / CRMA_CONFIG
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    meta = json.loads(path.read_text())
    if meta.get("format") != "crma":
        raise CheckpointError(f"{path} is not a CRMA config")
    return CRMAConfig.from_dict(meta["config"]), meta


def load_crma_into(handle: CRMAHandle, directory: Path) -> None:
    """Load saved weights into an existing handle (shapes must match)."""
    config, meta = read_crma_config(directory)
    if (config.n, config.r) != (handle.config.n, handle.config.r):
        raise CheckpointError(
            f"saved CRMA has n={config.n}, r={config.r}; this one n={handle.config.n}, "
            f"r={handle.config.r}")
    tensors = load_file(str(Path(directory) / CRMA_WEIGHTS))
    device = next(handle.parameters()).device
    handle.load_state_dict({k: v.to(device) for k, v in tensors.items()})


def load_crma(model: nn.Module, directory: Path) -> CRMAHandle:
    """Attach CRMA to ``model`` with the configuration and weights saved in ``directory``."""
    config, meta = read_crma_config(directory)
    handle = attach_crma(model, config)
    if meta.get("hidden_size") != handle.hidden_size or meta.get("num_layers") != len(handle.layers):
        handle.remove()
        raise CheckpointError(
            f"saved CRMA is for hidden {meta.get('hidden_size')} × {meta.get('num_layers')} "
            f"layers; the model has hidden {handle.hidden_size} × {len(handle.layers)}")
    try:
        load_crma_into(handle, directory)
    except Exception:
        handle.remove()
        raise
    return handle


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename) so a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors file of CPU, contiguous copies."""
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
