"""The compiled decode step (serving/compiled_decode.py): the tokens eager decoding gives, for
the base model, LoRA and LoRA + CRMA adapters; what its graph does not cover (a batch, a
CRMA the fixed hooks do not fit, a step its guards refuse) decodes eagerly and still right;
a compile that fails leaves an engine that serves."""

from __future__ import annotations

import pytest
import torch

from tests.serving.conftest import spec

PROMPT = "the quick brown fox"


@pytest.fixture(scope="module")
def compiled_engine(tiny_dir, adapter_root):
    from serving.engine import EngineConfig
    from serving.sources import LocalAdapterSource
    from serving.transformers_engine import TransformersEngine

    engine = TransformersEngine(tiny_dir, model_id="tiny-llama",
                                source=LocalAdapterSource(adapter_root),
                                config=EngineConfig(compile=True))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def wide_adapter(tiny_dir, adapter_root):
    """A CRMA twice the default width: the fixed hooks do not fit it."""
    from crma_core.config import CRMAConfig
    from serving.testing import write_random_adapter

    write_random_adapter(tiny_dir, adapter_root / "wide", seed=7, rank=4,
                         crma_config=CRMAConfig(n=8))
    return "wide"


def _complete(engine, adapter: str | None, prompt: str = PROMPT, max_tokens: int = 12):
    request = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    if adapter is not None:
        request["adapter"] = spec(adapter)
    return engine.submit(request).result()


def _text(engine, adapter: str | None, prompt: str = PROMPT) -> str:
    return _complete(engine, adapter, prompt).text


def _decode_steps(completion) -> int:
    return completion.usage.completion_tokens - 1  # the first token comes from the prefill


def test_compiled_steps_give_the_eager_tokens(compiled_engine, make_engine):
    eager = make_engine()
    stats = compiled_engine.health()["compiled_decode"]
    assert stats["state"] == "ready" and stats["warm_s"] > 0
    assert eager.health()["compiled_decode"]["state"] == "off"
    before, steps = stats["steps"], 0
    for adapter in (None, "a1", "lora-only", "a2", None):
        completion = _complete(compiled_engine, adapter)
        assert completion.text == _text(eager, adapter), adapter
        steps += _decode_steps(completion)
    stats = compiled_engine.health()["compiled_decode"]
    assert stats["steps"] - before == steps > 0  # every decode step ran compiled
    assert stats["eager_steps"] == 0


def test_a_crma_the_fixed_hooks_do_not_fit_decodes_eagerly(compiled_engine, make_engine,
                                                           wide_adapter):
    eager = make_engine()
    before = compiled_engine.health()["compiled_decode"]
    wide = _complete(compiled_engine, wide_adapter)
    assert wide.text == _text(eager, wide_adapter)
    after = compiled_engine.health()["compiled_decode"]
    assert after["eager_steps"] - before["eager_steps"] == _decode_steps(wide) > 0
    assert after["steps"] == before["steps"]
    # The next adapter that fits is compiled again.
    fits = _complete(compiled_engine, "a1")
    assert fits.text == _text(eager, "a1")
    assert compiled_engine.health()["compiled_decode"]["steps"] - after["steps"] == \
        _decode_steps(fits)


def test_a_batch_decodes_eagerly_and_right(compiled_engine, make_engine):
    eager = make_engine()
    prompts = ["the quick brown fox", "a lazy dog sleeps under the old oak tree"]
    expected = [_text(eager, "a1", p) for p in prompts]
    streams = [compiled_engine.submit({"prompt": p, "max_tokens": 12, "temperature": 0,
                                       "adapter": spec("a1")}) for p in prompts]
    assert [s.result().text for s in streams] == expected
    assert compiled_engine.health()["scheduler"]["peak_batch"] == 2


def test_a_step_the_graph_does_not_cover_runs_eagerly_untouched(compiled_engine):
    """Outside inference mode the graph's guards fail: the step is refused before it runs
    (no recompile, the cache untouched) and the caller decodes eagerly."""
    from transformers.cache_utils import DynamicCache

    compiled = compiled_engine.compiled
    model = compiled_engine.model
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([[5, 6, 7]]), cache=cache, use_cache=True)
    before = compiled.eager_steps
    with torch.no_grad():
        assert compiled.decode(torch.tensor([[8]]), cache) is None
    assert cache.get_seq_length() == 3
    assert compiled.eager_steps == before + 1


def test_a_failed_compile_leaves_an_engine_that_serves(make_engine, monkeypatch):
    import serving.compiled_decode as compiled_decode

    def refuse(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(compiled_decode.torch, "compile", refuse)
    broken = make_engine(compile=True)
    stats = broken.health()["compiled_decode"]
    assert stats["state"] == "failed" and "no compiler here" in stats["error"]
    assert _text(broken, "a1") == _text(make_engine(), "a1")
    assert broken.health()["compiled_decode"]["steps"] == 0


def test_crma_engine_compiles_with_the_flag(tiny_dir, adapter_root, tmp_path, compiled_engine):
    """`crma engine --compile` (over CRMA_ENGINE_COMPILE=0 from the test environment) serves
    compiled steps once healthy, and they write what the in-process compiled engine writes."""
    import os

    import httpx

    from tests.conftest import running_engine

    env = dict(os.environ, OMP_NUM_THREADS="1", CRMA_DATA_DIR=str(tmp_path / "data"))
    with running_engine(["--model-dir", str(tiny_dir), "--model", "tiny-llama",
                         "--adapter-source", "local", "--adapter-root", str(adapter_root),
                         "--threads", "1", "--compile", "--log-level", "warning"],
                        log=tmp_path / "engine.log", env=env) as url:
        body = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "adapter": spec("a1")}
        text = httpx.post(url + "/generate", json=body, timeout=60).json()["text"]
        stats = httpx.get(url + "/health").json()["compiled_decode"]
    assert stats["state"] == "ready" and stats["steps"] > 0
    assert text == _text(compiled_engine, "a1")
