"""Fixtures for the serving engine: a tiny random-weight model and adapters whose LoRA and
CRMA weights are random too (so each adapter visibly changes the model's output)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _quiet_and_one_thread():
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; the 2-core box is shared
    yield
    torch.set_num_threads(previous)


def write_adapter(model_dir: Path, out_dir: Path, *, seed: int, crma: bool = True,
                  rank: int = 4, target_modules="all-linear") -> Path:
    from serving.testing import write_random_adapter

    return write_random_adapter(model_dir, out_dir, seed=seed, crma=crma, rank=rank,
                                target_modules=target_modules)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from crma_core.testing import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("serving-model") / "tiny-llama", "llama")


@pytest.fixture(scope="session")
def adapter_root(tiny_dir, tmp_path_factory) -> Path:
    """a1, a2: LoRA + CRMA; lora-only: no CRMA; attention-only: LoRA on q/v only."""
    root = tmp_path_factory.mktemp("serving-adapters")
    write_adapter(tiny_dir, root / "a1", seed=1)
    write_adapter(tiny_dir, root / "a2", seed=2)
    write_adapter(tiny_dir, root / "lora-only", seed=3, crma=False)
    write_adapter(tiny_dir, root / "attention-only", seed=4, rank=2,
                  target_modules=["q_proj", "v_proj"])
    return root


def spec(name: str, **extra) -> dict:
    return {"id": name, "location": name, **extra}


@pytest.fixture
def make_engine(tiny_dir, adapter_root):
    """Build engines on the tiny model (closed at the end of the test)."""
    from serving.engine import EngineConfig
    from serving.sources import LocalAdapterSource
    from serving.transformers_engine import TransformersEngine

    engines = []

    def build(**config):
        engine = TransformersEngine(tiny_dir, model_id="tiny-llama",
                                    source=LocalAdapterSource(adapter_root),
                                    config=EngineConfig(**{"compile": False, **config}))
        engines.append(engine)
        return engine

    yield build
    for engine in engines:
        engine.close()


@pytest.fixture
def engine(make_engine):
    return make_engine()
