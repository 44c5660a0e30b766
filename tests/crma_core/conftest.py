"""Fixtures for crma_core tests: tiny random-weight models of the three families."""

from __future__ import annotations

from pathlib import Path

import pytest

FAMILIES = ("llama", "mistral", "gemma2")


@pytest.fixture(autouse=True, scope="session")
def _quiet_transformers():
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    from crma_core.testing import make_tiny_model_dir

    root = tmp_path_factory.mktemp("tiny-models")
    return {family: make_tiny_model_dir(root / family, family, num_layers=2)
            for family in FAMILIES}


@pytest.fixture(scope="session")
def chat_files(tmp_path_factory) -> tuple[Path, Path]:
    from crma_core.testing import arithmetic_chat_rows as chat_rows, write_jsonl

    root = tmp_path_factory.mktemp("chat-data")
    return (write_jsonl(root / "train.jsonl", chat_rows(24)),
            write_jsonl(root / "val.jsonl", chat_rows(8, offset=100)))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run fastest on one thread, and the 2-core box is shared: no oversubscription."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def lora_crma_model():
    """Factory: (PeftModel, CRMA handle) on a tiny random model of ``family``, LoRA r=4,
    with LoRA B and CRMA's write drawn (both start at zero) so every adapter weight has a
    gradient."""
    import torch

    from crma_core.config import CRMAConfig
    from crma_core.recipe import prepare_model
    from crma_core.settings import LoraSettings
    from crma_core.testing import make_tiny_model

    def make(family: str = "llama"):
        torch.manual_seed(0)
        model, handle = prepare_model(make_tiny_model(family), lora=LoraSettings(r=4, alpha=8),
                                      crma=CRMAConfig(), seed=0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.05)
            for layer in handle.layers:
                layer.write.normal_(std=0.05)
        return model, handle

    return make
