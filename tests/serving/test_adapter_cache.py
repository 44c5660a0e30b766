"""The adapter LRU: bounded by count and bytes, cold vs cached loads, adapters in use are
never evicted, an evicted adapter is unmerged."""

from __future__ import annotations

import pytest
import torch

from crma_core.recipe import load_base_model
from serving.errors import AdapterIncompatible, EngineBusy
from tests.serving.conftest import spec


def _ids(engine):
    return [a["id"] for a in engine.adapters()["adapters"]]


def _sync(engine):
    """Wait until the engine thread has run every control task queued so far."""
    engine.scheduler.call(lambda: None).result(10)


def test_least_recently_used_goes_first_when_the_count_is_full(make_engine):
    engine = make_engine(max_adapters=2)
    assert engine.load_adapter(spec("a1"))["cold"] is True
    assert engine.load_adapter(spec("a2"))["cold"] is True
    assert engine.load_adapter(spec("a1"))["cold"] is False  # a1 is now the most recent
    engine.load_adapter(spec("lora-only"))
    assert _ids(engine) == ["lora-only", "a1"]
    assert engine.load_adapter(spec("a2"))["cold"] is True
    snapshot = engine.adapters()
    assert snapshot["count"] == 2 and snapshot["hits"] == 1 and snapshot["misses"] == 4


def test_the_byte_budget_bounds_the_cache(make_engine):
    probe = make_engine()
    sizes = {name: probe.load_adapter(spec(name))["bytes"] for name in ("a1", "a2")}
    assert sizes["a1"] > 0 and probe.adapters()["bytes"] == sum(sizes.values())
    engine = make_engine(max_adapter_bytes=int(max(sizes.values()) * 1.5))
    engine.load_adapter(spec("a1"))
    engine.load_adapter(spec("a2"))
    assert _ids(engine) == ["a2"]
    assert engine.adapters()["bytes"] <= engine.config.max_adapter_bytes
    tight = make_engine(max_adapter_bytes=sizes["a1"] // 2)
    with pytest.raises(AdapterIncompatible) as info:
        tight.load_adapter(spec("a1"))
    assert "budget" in info.value.message


def test_an_adapter_in_use_is_not_evicted(make_engine):
    engine = make_engine(max_adapters=1, max_batch=2)
    running = engine.submit({"prompt": "the quick brown fox", "max_tokens": 300,
                             "temperature": 1.0, "seed": 1, "adapter": spec("a1")})
    with pytest.raises(EngineBusy) as info:
        engine.submit({"prompt": "one two", "adapter": spec("a2")})
    assert info.value.status_code == 503 and info.value.retry_after_s >= 1
    assert _ids(engine) == ["a1"]
    running.cancel()
    list(running)
    assert engine.submit({"prompt": "one two", "max_tokens": 3,
                          "adapter": spec("a2")}).result().adapter == "a2"
    assert _ids(engine) == ["a2"]


def test_an_evicted_adapter_is_unmerged_and_reloads_cold(make_engine, tiny_dir):
    engine = make_engine(max_adapters=1)
    request = {"prompt": "the quick brown fox", "max_tokens": 8, "temperature": 0}
    with_a1 = engine.submit(dict(request, adapter=spec("a1"))).result().text
    assert engine.weights.merged.id == "a1"
    engine.load_adapter(spec("a2"))  # pushes a1 out
    _sync(engine)
    assert engine.weights.merged is None and engine.residual.active is None
    fresh = load_base_model(tiny_dir).state_dict()
    assert all(torch.equal(t, fresh[k]) for k, t in engine.model.state_dict().items())
    again = engine.submit(dict(request, adapter=spec("a1"))).result()
    assert again.text == with_a1 and engine.adapters()["misses"] == 3


def test_unload(engine):
    engine.load_adapter(spec("a1"))
    assert engine.unload_adapter("a1") == {"id": "a1", "unloaded": True}
    assert _ids(engine) == []
    health = engine.health()
    assert health["adapters"]["count"] == 0 and health["memory"]["rss_bytes"] > 0


def test_a_refused_load_leaves_the_cache_as_it_was():
    """Every cached adapter pinned but the oldest: a load that would need two evictions is
    refused and the one it pushed out goes back where it was."""
    from types import SimpleNamespace

    from serving.adapter_cache import AdapterCache
    from serving.requests import AdapterSpec

    def load(spec):
        size = 3 if spec.id == "big" else 1
        return SimpleNamespace(id=spec.id, nbytes=size, info=lambda: {"id": spec.id})

    evicted = []
    cache = AdapterCache(max_count=4, max_bytes=4, load=load, on_evict=evicted.append)
    held = {}
    for name in ("a", "b", "c", "d"):
        held[name], _ = cache.acquire(AdapterSpec(id=name, location=name))
    for name in ("a", "b"):
        cache.release(held[name])  # a and b may go; c and d are in use
    with pytest.raises(EngineBusy):
        cache.acquire(AdapterSpec(id="big", location="big"))  # needs 3 of 4 bytes free
    assert [a["id"] for a in cache.snapshot()["adapters"]] == ["d", "c", "b", "a"]
    assert evicted == []
    cache.acquire(AdapterSpec(id="e", location="e"))
    assert [a["id"] for a in cache.snapshot()["adapters"]] == ["e", "d", "c", "b"]
    assert [a.id for a in evicted] == ["a"]
