"""Merged-weights export: a trained adapter folded into its base model, written as one
Hugging Face model folder (config, tokenizer, generation config, safetensors shards).

Two formats:

- ``merged``: every LoRA update merged into the base weights (W ← W₀ + s·B·A, summed in
  float32 and rounded once to the export dtype). The folder is a standard model of the base
  architecture: ``AutoModelForCausalLM.from_pretrained(folder)`` loads it with neither peft
  nor ``trust_remote_code``. A bundle with trained CRMA cannot be exported this way
  (``CRMANotFoldable``): CRMA is a linear map of the whole residual stream between decoder
  layers, and nothing in a standard Llama/Mistral/Gemma-2 layer can express it (the reasoning
  is in docs/user-guide.md, "Exporting merged weights").
- ``merged_crma``: the same merged weights plus CRMA kept as custom code: the folder ships
  ``modeling_crma.py`` (``crma_core.remote_modeling``: the base architecture with a CRMA
  residual hooked onto every decoder layer) and a ``model_type`` plain transformers does not
  know, so it loads with ``trust_remote_code=True`` and fails loudly without it.

The output generates what base + LoRA (+ CRMA) through peft and crma_core generates: same
greedy tokens in float32 (tests/crma_core/test_crma_export.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crma_core.artifacts import MANIFEST, build_manifest, peft_ignoring_crma_note
from crma_core.errors import CheckpointError, ConfigError
from crma_core.io import CRMA_CONFIG, CRMA_WEIGHTS, load_tensors, read_crma_config, write_json
from crma_core.layer import mixed_writes, mixing_matrices

FORMATS = ("merged", "merged_crma")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Shards of at most this size: small enough for any HTTP download, few enough files for 7B.
DEFAULT_MAX_SHARD_SIZE = "2GB"
MODELING_FILE = "modeling_crma.py"
EXPORT_FORMAT = "crma-merged-export"
_BASE_LINE_MARK = "# crma:base"


class CRMANotFoldable(ConfigError):
    """A bundle with trained CRMA was asked for as plain merged weights (format ``merged``)."""


CRMA_NOT_FOLDABLE = (
    "this adapter was trained with CRMA, which cannot be folded exactly into the base "
    "model's weights (it is a linear map of the whole residual stream after every decoder "
    "layer; a standard layer has nothing that computes it), so a plain merged folder would "
    "be a different model. Export it with format 'merged_crma' (loads with "
    "trust_remote_code=True), or train the job with CRMA off for a plain merged export.")


def crma_state(crma_dir: Path | None) -> str:
    """"none" (no CRMA files), "identity" (every write is zero: CRMA changes nothing, so a
    plain merge is exact) or "trained"."""
    if crma_dir is None or not (Path(crma_dir) / CRMA_CONFIG).is_file():
        return "none"
    tensors = load_tensors(Path(crma_dir) / CRMA_WEIGHTS)
    writes = [t for key, t in tensors.items() if key.endswith(".write")]
    if not writes:
        raise CheckpointError(f"{crma_dir / CRMA_WEIGHTS} holds no CRMA write weights")
    return "identity" if all(not torch.any(w) for w in writes) else "trained"


def export_merged(*, model_dir: Path, bundle_dir: Path, out_dir: Path, format: str = "merged",
                  dtype: str = "float32", max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
                  device: str = "cpu", domain: str | int | None = None,
                  info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the merged model folder into ``out_dir`` (created; must be empty) and return its
    manifest (also written as ``manifest.json``: every file with bytes and sha256).

    ``bundle_dir`` is a trained bundle (``Recipe.export_artifacts``; ``domain`` picks a
    continual run's pair as in ``crma_core.loader``). The merge runs in float32 on ``device``
    (peak memory about 4 bytes per base parameter, plus one shard while writing); ``dtype``
    is what the folder stores. ``info`` goes into the manifest as is.
    """
    from crma_core.loader import domain_pair

    if format not in FORMATS:
        raise ConfigError(f"format must be one of {FORMATS}, got {format!r}")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} is not empty")
    lora_dir, crma_dir = domain_pair(Path(bundle_dir), domain)
    state = crma_state(crma_dir)
    if format == "merged" and state == "trained":
        raise CRMANotFoldable(CRMA_NOT_FOLDABLE)
    if format == "merged_crma" and state == "none":
        raise ConfigError("this adapter has no CRMA half: export it with format 'merged'")

    model = merge_lora(Path(model_dir), lora_dir, device=device)
    model.to(DTYPES[dtype])
    model.config.use_cache = True  # the training loader turns it off
    state_dict = None
    if format == "merged_crma":
        state_dict = {**model.state_dict(), **crma_residual_tensors(crma_dir)}
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), state_dict=state_dict, max_shard_size=max_shard_size,
                          safe_serialization=True)
    save_tokenizer(Path(model_dir), out_dir)
    if format == "merged_crma":
        write_crma_code(out_dir, model, crma_dir)
    manifest = build_manifest(out_dir, {
        "format": EXPORT_FORMAT, "version": 1, "export_format": format, "dtype": dtype,
        "crma": state, "parameters": sum(p.numel() for p in model.parameters()),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(info or {}),
    })
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def merge_lora(model_dir: Path, lora_dir: Path, *, device: str = "cpu") -> nn.Module:
    """The base model in float32 with the LoRA of ``lora_dir`` merged in (peft unloaded)."""
    from peft import PeftModel

    from crma_core.recipe import load_base_model

    weights = lora_dir / "adapter_model.safetensors"
    if not weights.is_file():
        # peft would fall back to a pickled adapter_model.bin: refuse instead.
        raise CheckpointError(f"{weights} is missing: bundles load from safetensors only")
    base = load_base_model(model_dir, device=device, dtype="float32")
    tied = _tied_pointers(base)
    with peft_ignoring_crma_note():  # the CRMA half is handled by the caller
        peft_model = PeftModel.from_pretrained(base, str(lora_dir), is_trainable=False)
    for name, module in peft_model.named_modules():
        weight = getattr(getattr(module, "base_layer", None), "weight", None)
        if weight is not None and weight.data_ptr() in tied:
            raise CheckpointError(f"the LoRA targets {name}, whose weight is tied to another "
                                  "layer: merging it would change both")
    # safe_merge: refuse NaN/inf instead of writing a broken model.
    merged = peft_model.merge_and_unload(safe_merge=True)
    return merged.eval()


def _tied_pointers(model: nn.Module) -> set[int]:
    seen: dict[int, int] = {}
    for _, parameter in model.named_parameters(remove_duplicate=False):
        seen[parameter.data_ptr()] = seen.get(parameter.data_ptr(), 0) + 1
    return {ptr for ptr, count in seen.items() if count > 1}


def crma_residual_tensors(crma_dir: Path) -> dict[str, torch.Tensor]:
    """{"crma.read": L×d×K, "crma.write": L×K×d} float32: every layer's read and its write
    with Sinkhorn mixing and gate folded in, computed as crma_core's forward pass does."""
    config, meta = read_crma_config(crma_dir)
    tensors = load_tensors(Path(crma_dir) / CRMA_WEIGHTS)
    layers = int(meta["num_layers"])

    def stacked(name: str) -> torch.Tensor:
        return torch.stack([tensors[f"layers.{i}.{name}"] for i in range(layers)])

    with torch.no_grad():
        m = mixing_matrices(stacked("log_mix"), config)
        wm = mixed_writes(m, stacked("write"), stacked("_log_alpha"), config)
    return {"crma.read": stacked("read").to(torch.float32).contiguous(),
            "crma.write": wm.to(torch.float32).contiguous()}


def write_crma_code(out_dir: Path, model: nn.Module, crma_dir: Path) -> None:
    """``modeling_crma.py`` for this base architecture, and config.json pointing at it."""
    import transformers

    from crma_core import remote_modeling

    config_class, model_class = type(model.config).__name__, type(model).__name__
    if not (hasattr(transformers, config_class) and hasattr(transformers, model_class)):
        raise ConfigError(f"{model_class} is not a transformers class a modeling file can "
                          "subclass")
    source = Path(remote_modeling.__file__).read_text()
    lines = source.splitlines(keepends=True)
    [index] = [i for i, line in enumerate(lines) if line.rstrip().endswith(_BASE_LINE_MARK)]
    lines[index] = (f"from transformers import {config_class} as BaseConfig, "
                    f"{model_class} as BaseForCausalLM  {_BASE_LINE_MARK}\n")
    (out_dir / MODELING_FILE).write_text("".join(lines))

    crma_config, meta = read_crma_config(crma_dir)
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    config.update({
        "model_type": f"crma_{config['model_type']}",
        "architectures": ["CRMAForCausalLM"],
        "auto_map": {"AutoConfig": "modeling_crma.CRMAResidualConfig",
                     "AutoModelForCausalLM": "modeling_crma.CRMAForCausalLM"},
        "crma_width": crma_config.width,
        "crma_attach": crma_config.attach,
    })
    if meta.get("num_layers") != config.get("num_hidden_layers"):
        raise CheckpointError(f"the CRMA weights are for {meta.get('num_layers')} layers, the "
                              f"model has {config.get('num_hidden_layers')}")
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_tokenizer(model_dir: Path, out_dir: Path) -> None:
    """The base model's tokenizer as it is (no pad fallback: the folder is the base's)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True,
                                              trust_remote_code=False)
    tokenizer.save_pretrained(str(out_dir))
