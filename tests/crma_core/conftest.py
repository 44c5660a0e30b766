"""Fixtures for crma_core tests: tiny random-weight models of the three families."""

from __future__ import annotations

import json
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


def chat_rows(count: int, *, offset: int = 0) -> list[dict]:
    return [
        {"messages": [
            {"role": "system", "content": "answer briefly"},
            {"role": "user", "content": f"what is {i} plus {i}?"},
            {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
        ]}
        for i in range(offset, offset + count)
    ]


def write_jsonl(path: Path, rows: list) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="session")
def chat_files(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("chat-data")
    return (write_jsonl(root / "train.jsonl", chat_rows(24)),
            write_jsonl(root / "val.jsonl", chat_rows(8, offset=100)))
