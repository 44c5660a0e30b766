"""Routing a continual run's request: per-row scoring equals scoring each adapter alone;
two clearly different trained domains are told apart on their holdouts; routed requests
say which domain served them; both bundle layouts (one CRMA, a CRMA per domain) route."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from crma_core.testing import arithmetic_chat_rows, write_jsonl
from serving.requests import AdapterSpec
from serving.routing import prompt_losses
from serving.routing_eval import DomainHoldout, holdout_prompts, routing_accuracy
from tests.serving.conftest import spec

COLORS = ["red", "blue", "green", "black", "white", "yellow", "brown", "pink", "gray",
          "orange", "purple", "gold"] * 3


def _color_rows(count, offset=0):
    return [{"messages": [{"role": "user", "content": f"say the color {COLORS[i]} twice"},
                          {"role": "assistant", "content": f"{COLORS[i]} {COLORS[i]}"}]}
            for i in range(offset, offset + count)]


def _loss_alone(engine, adapter, ids):
    """Mean prompt NLL with ``adapter`` merged and its CRMA hooked, the serving path."""
    engine.scheduler.call(lambda: (engine.weights.activate(adapter),
                                   engine.residual.activate(adapter))).result(10)
    with torch.no_grad():
        logits = engine.model(input_ids=torch.tensor([ids])).logits
    return float(F.cross_entropy(logits[0, :-1], torch.tensor(ids[1:])))


def test_per_row_scores_equal_each_adapter_scored_alone(engine):
    names = ["a1", "a2", "lora-only", "attention-only"]
    adapters = [engine.cache.acquire(AdapterSpec(**spec(n)))[0] for n in names]
    ids = engine.tokenizer("what is 12 plus 12? the quick brown fox").input_ids
    alone = [_loss_alone(engine, a, ids) for a in adapters]
    # Score with a2 merged: every row must take a2's delta out again.
    engine.scheduler.call(lambda: (engine.weights.activate(adapters[1]),
                                   engine.residual.activate(adapters[1]))).result(10)
    together = engine.scheduler.call(lambda: prompt_losses(
        engine.model, engine.residual, ids, adapters, engine.weights.merged,
        engine.num_layers)).result(10)
    assert together == pytest.approx(alone, abs=1e-4)
    assert len(set(round(v, 4) for v in alone)) == len(alone)
    assert engine.weights.merged is adapters[1] and engine.residual.active is adapters[1]


@pytest.fixture(scope="module")
def trained_domains(tiny_dir, tmp_path_factory):
    """Two domains trained for real (crma_core Recipe, LoRA + CRMA) on the tiny model."""
    from crma_core import CRMAConfig, LoraSettings, Recipe, TrainConfig

    root = tmp_path_factory.mktemp("routing")
    data = {"math": (arithmetic_chat_rows(24), arithmetic_chat_rows(10, offset=100)),
            "color": (_color_rows(24), _color_rows(10, offset=24))}
    domains = []
    for name, (train, holdout) in data.items():
        write_jsonl(root / f"{name}-train.jsonl", train)
        recipe = Recipe(model_dir=tiny_dir, train_file=root / f"{name}-train.jsonl",
                        crma=CRMAConfig(), lora=LoraSettings(r=4, alpha=8),
                        train=TrainConfig(epochs=6, batch_size=4, max_seq_len=64,
                                          lr_main=1e-2, seed=0))
        recipe.setup()
        recipe.train()
        recipe.export_artifacts(root / "bundles" / name)
        recipe.cleanup()
        domains.append(DomainHoldout(name, AdapterSpec(id=f"run:{name}", location=name),
                                     write_jsonl(root / f"{name}-holdout.jsonl", holdout)))
    return root, domains


def test_the_router_tells_two_trained_domains_apart(make_engine, trained_domains):
    from serving.sources import LocalAdapterSource

    root, domains = trained_domains
    engine = make_engine()
    engine.source = LocalAdapterSource(root / "bundles")
    report = routing_accuracy(engine, domains)
    assert report["examples"] == 20 and report["skipped"] == 0
    assert report["accuracy"] >= 0.9, report["confusion"]
    assert all(p["accuracy"] >= 0.8 for p in report["per_domain"].values())
    assert report["ms_p50"] > 0


def test_a_routed_request_says_which_domain_served_it(make_engine, trained_domains):
    from serving.sources import LocalAdapterSource

    root, domains = trained_domains
    engine = make_engine()
    engine.source = LocalAdapterSource(root / "bundles")
    routes = [{"domain": d.domain, "adapter": d.adapter.model_dump(exclude_unset=True)}
              for d in domains]
    prompt = holdout_prompts(domains[0].holdout, limit=1)[0]  # a math question
    body = dict(prompt, max_tokens=8, temperature=0)
    routed = engine.submit(dict(body, routes=routes)).result()
    direct = engine.submit(dict(body, adapter=routes[0]["adapter"])).result()
    assert routed.domain == "math" and routed.adapter == "run:math"
    assert routed.text == direct.text
    assert set(routed.routing.scores) == {"math", "color"}
    assert routed.routing.scores["math"] < routed.routing.scores["color"]
    events = list(engine.submit(dict(body, routes=routes)))
    assert events[0].type == "start" and events[0].domain == "math"
    assert engine.adapters()["count"] == 2 and all(
        a["in_use"] == 0 for a in engine.adapters()["adapters"])  # candidates released


@pytest.mark.parametrize("per_domain_crma", [False, True])
def test_continual_bundle_layouts_route(make_engine, adapter_root, tmp_path, per_domain_crma):
    """loras/<i>-<name>/ with one CRMA at the top (today's bundle), or a CRMA state per
    domain (crma/<i>-<name>/): the routing code only sees (domain, adapter) pairs."""
    from serving.sources import LocalAdapterSource

    run = tmp_path / "run"
    for index, source in enumerate(("a1", "a2")):
        shutil.copytree(adapter_root / source / "lora", run / "loras" / f"{index}-{source}")
        crma_dir = run / "crma" / f"{index}-{source}" if per_domain_crma else run
        crma_dir.mkdir(parents=True, exist_ok=True)
        for name in ("crma.safetensors", "crma_config.json"):
            shutil.copy2(adapter_root / ("a1" if not per_domain_crma else source) / name,
                         crma_dir / name)
    engine = make_engine()
    engine.source = LocalAdapterSource(tmp_path)
    routes = [{"domain": name, "adapter": {
        "id": f"run:{index}", "location": "run", "lora": f"loras/{index}-{name}",
        "crma": f"crma/{index}-{name}" if per_domain_crma else "."}}
        for index, name in enumerate(("a1", "a2"))]
    result = engine.submit({"prompt": "the quick brown fox", "max_tokens": 6,
                            "temperature": 0, "routes": routes}).result()
    chosen = next(r for r in routes if r["domain"] == result.domain)
    direct = engine.submit({"prompt": "the quick brown fox", "max_tokens": 6,
                            "temperature": 0, "adapter": chosen["adapter"]}).result()
    assert result.text == direct.text
    assert all(a["crma"] for a in engine.adapters()["adapters"])
    decision = engine.route({"prompt": "the quick brown fox", "routes": routes})
    assert decision.domain == result.domain and set(decision.scores) == {"a1", "a2"}


def test_the_centroid_router_reads_the_base_model_under_a_merged_adapter(make_engine,
                                                                         tiny_dir):
    """The engine's routing features equal the plain base model's, whatever adapter is
    merged into its weights at the time (its delta is hooked out, CRMA switched off)."""
    from crma_core.recipe import load_base_model
    from crma_core.routing import decoder_features
    from serving.routing import base_features

    engine = make_engine()
    adapter = engine.cache.acquire(AdapterSpec(**spec("a1")))[0]
    ids = engine.tokenizer("what is 12 plus 12? the quick brown fox").input_ids
    engine.scheduler.call(lambda: (engine.weights.activate(adapter),
                                   engine.residual.activate(adapter))).result(10)
    served = engine.scheduler.call(lambda: base_features(
        engine.model, engine.residual, ids, engine.weights.merged)).result(10)
    plain = decoder_features(load_base_model(tiny_dir).eval().get_decoder(), ids)
    assert torch.allclose(served, plain, atol=1e-4)
    assert engine.weights.merged is adapter and engine.residual.active is adapter


@pytest.mark.parametrize("router", ["prompt_loss", "centroid"])
def test_the_run_reports_routing_accuracy_of_the_engines_router(make_engine, trained_domains,
                                                                tiny_dir, tmp_path, router):
    """crma_core.routing.bundle_routing_accuracy (what the worker puts in a run's report) on
    a continual bundle of the two trained domains picks what the engine's router picks,
    with the centroids a stage writes (the centroid router) and without (prompt loss)."""
    import json

    from crma_core.continual_state import BUNDLE_FORMAT
    from crma_core.routing import bundle_routing_accuracy
    from serving.sources import LocalAdapterSource

    root, domains = trained_domains
    run, entries = tmp_path / "run", []
    for index, domain in enumerate(domains):
        source = root / "bundles" / domain.domain
        shutil.copytree(source / "lora", run / "loras" / f"{index}-{domain.domain}")
        (run / "crma" / f"after-{index}").mkdir(parents=True)
        for name in ("crma.safetensors", "crma_config.json"):
            shutil.copy2(source / name, run / "crma" / f"after-{index}" / name)
        entries.append({"index": index, "name": domain.domain,
                        "lora": f"loras/{index}-{domain.domain}",
                        "crma": f"crma/after-{index}", "baseline_lora": None})
    (run / "manifest.json").write_text(json.dumps({"format": BUNDLE_FORMAT,
                                                   "domains": entries}))
    if router == "centroid":
        from crma_core.routing import write_centroids

        write_centroids(tiny_dir, {root / f"{d.domain}-train.jsonl": run / e["lora"]
                                   for d, e in zip(domains, entries, strict=True)})
    report = bundle_routing_accuracy(tiny_dir, run, {d.domain: d.holdout for d in domains},
                                     per_domain=10)
    assert report["router"] == router
    assert report["examples"] == 20 and report["accuracy"] >= 0.9, report["confusion"]

    engine = make_engine()
    engine.source = LocalAdapterSource(tmp_path)
    through_engine = routing_accuracy(engine, [
        DomainHoldout(e["name"], AdapterSpec(id=f"r:{e['name']}", location="run",
                                             lora=e["lora"], crma=e["crma"]), d.holdout)
        for e, d in zip(entries, domains, strict=True)], per_domain=10)
    assert through_engine["router"] == router and through_engine["method"] == report["method"]
    assert report["confusion"] == through_engine["confusion"]

    one = run.parent / "one"
    shutil.copytree(run, one)
    (one / "manifest.json").write_text(json.dumps({"format": BUNDLE_FORMAT,
                                                   "domains": entries[:1]}))
    assert bundle_routing_accuracy(tiny_dir, one, {"math": domains[0].holdout}) is None
