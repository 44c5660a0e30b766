"""Put a trained bundle back together for generation: base + LoRA (peft) + CRMA.

A single-task bundle has one pair (lora/ + crma.*); a continual run's bundle has one per
domain (its LoRA + the CRMA state that serves it, or its baseline LoRA alone), named in the
bundle's manifest (``crma_core.continual_state.export_bundle``)."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from crma_core.artifacts import (LORA_DIR, MANIFEST, peft_ignoring_crma_note,
                                 warn_if_crma_dropped)
from crma_core.continual_state import BUNDLE_FORMAT
from crma_core.errors import CheckpointError, ConfigError
from crma_core.io import CRMA_CONFIG, load_crma
from crma_core.model import CRMAHandle, get_crma
from crma_core.recipe import load_base_model, load_tokenizer


def load_for_generation(model_dir: Path, bundle_dir: Path, device: str = "cpu",
                        dtype: str = "float32", *, domain: str | int | None = None,
                        baseline: bool = False):
    """(model, tokenizer) ready for ``model.generate``.

    ``model`` is a ``peft.PeftModel`` over the base in ``model_dir`` with the bundle's LoRA,
    in eval mode, with the bundle's CRMA attached when it has one (reach it with
    ``crma_core.model.get_crma(model)``; ``.enabled = False`` turns it off). For a continual
    run's bundle, ``domain`` (name or index) picks the pair that serves that domain;
    ``baseline=True`` loads that domain's baseline LoRA instead (no CRMA). Only local files
    are read, and only safetensors/JSON.
    """
    from peft import PeftModel

    bundle_dir = Path(bundle_dir)
    lora_dir, crma_dir = domain_pair(bundle_dir, domain, baseline=baseline)
    weights = lora_dir / "adapter_model.safetensors"
    if not weights.is_file():
        # peft would fall back to a pickled adapter_model.bin (torch.load): refuse instead.
        raise CheckpointError(f"{weights} is missing: bundles load from safetensors only")
    tokenizer = load_tokenizer(Path(model_dir))
    base = load_base_model(Path(model_dir), device=device, dtype=dtype)
    base.config.use_cache = True
    warn_if_crma_dropped(lora_dir, crma_dir)
    with peft_ignoring_crma_note():  # the CRMA half it notes is loaded right below
        model = PeftModel.from_pretrained(base, str(lora_dir), is_trainable=False)
    if crma_dir is not None and (crma_dir / CRMA_CONFIG).is_file():
        load_crma(model, crma_dir)
    model.eval()
    return model, tokenizer


def domain_pair(bundle_dir: Path, domain: str | int | None, *,
                baseline: bool = False) -> tuple[Path, Path | None]:
    """(LoRA directory, CRMA directory or None) of a bundle; see ``load_for_generation``."""
    manifest_path = bundle_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if manifest.get("format") != BUNDLE_FORMAT:
        if domain is not None or baseline:
            raise ConfigError(f"{bundle_dir} is a single-task bundle: it has no domains")
        return bundle_dir / LORA_DIR, bundle_dir
    entries = manifest["domains"]
    if domain is None:
        raise ConfigError("a continual run's bundle holds one adapter per domain: pass "
                          f"domain= one of {[e['name'] for e in entries]}")
    entry = next((e for e in entries if domain in (e["name"], e["index"])), None)
    if entry is None:
        raise ConfigError(f"no domain {domain!r} in this bundle; it has "
                          f"{[e['name'] for e in entries]}")
    if baseline:
        if not entry.get("baseline_lora"):
            raise ConfigError(f"the run trained no baseline LoRA for {entry['name']!r}")
        return bundle_dir / entry["baseline_lora"], None
    return bundle_dir / entry["lora"], bundle_dir / entry["crma"] if entry["crma"] else None


def crma_of(model: nn.Module) -> CRMAHandle | None:
    """The CRMA handle of a model returned by ``load_for_generation`` (None if LoRA only)."""
    return get_crma(model)
