"""crma_core: CRMA adapter + LoRA fine-tuning library.

Importing the package does not import torch: ``crma_core.formats`` and ``crma_core.catalog``
stay light for the API process, and the torch-backed names below load on first access.
"""

from __future__ import annotations

import importlib

# name -> submodule that defines it
_LAZY = {
    "CRMAConfig": "crma_core.config",
    "sinkhorn": "crma_core.mixing",
    "CRMALayer": "crma_core.layer",
    "CRMAHandle": "crma_core.model",
    "attach_crma": "crma_core.model",
    "get_crma": "crma_core.model",
    "save_crma": "crma_core.io",
    "load_crma": "crma_core.io",
    "build_model": "crma_core.recipe",
    "make_optimizer": "crma_core.optim",
    "train_loop": "crma_core.loop",
    "train_step": "crma_core.loop",
    "evaluate_loss": "crma_core.loop",
    "LoopState": "crma_core.loop",
    "LoopPlan": "crma_core.loop",
    "load_examples": "crma_core.data",
    "load_eval_batches": "crma_core.data",
    "LoraSettings": "crma_core.settings",
    "TrainConfig": "crma_core.settings",
    "Recipe": "crma_core.recipe",
    "TrainCallbacks": "crma_core.callbacks",
    "TrainResult": "crma_core.callbacks",
    "StepMetrics": "crma_core.callbacks",
    "EvalMetrics": "crma_core.callbacks",
    "ZClip": "crma_core.clipping",
    "load_for_generation": "crma_core.loader",
    "ModelStore": "crma_core.model_store",
    "InstalledModel": "crma_core.model_store",
    "make_tiny_model_dir": "crma_core.testing",
    "CatalogModel": "crma_core.catalog",
    "CATALOG": "crma_core.catalog",
    "get_model": "crma_core.catalog",
    "FieldIssue": "crma_core.formats",
    "detect_and_validate": "crma_core.formats",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'crma_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
