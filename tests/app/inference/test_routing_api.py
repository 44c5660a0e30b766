"""A continual run of two clearly different domains, trained for real on the tiny model, called
through the API with no `domain`: the engine's router sends each held-out prompt to the
domain it came from, and every answer says which domain served it. Once with the routing
centroids a continual stage stores next to each LoRA (the centroid router, fetched from the
object store with the LoRA) and once without (a bundle from before them: the loss router)."""

from __future__ import annotations

import json
import shutil

import httpx
import openai
import pytest

from app.db.base import utcnow
from app.db.models import ContinualRun, ContinualStage
from app.db.session import session_scope
from app.domain.ids import new_id
from app.domain.job_options import run_model_name
from app.services.publishing import insert_artifacts, upload_bundle
from app.storage.factory import open_store
from crma_core.routing import holdout_prompts
from crma_core.testing import arithmetic_chat_rows, write_jsonl
from tests.app.helpers import create_tenant
from tests.app.inference.conftest import MODEL
from tests.factories import insert_file, insert_job

pytestmark = pytest.mark.integration

COLORS = ["red", "blue", "green", "black", "white", "yellow", "brown", "pink", "gray",
          "orange", "purple", "gold"] * 3


def color_rows(count: int, offset: int = 0) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"say the color {COLORS[i]} twice"},
                          {"role": "assistant", "content": f"{COLORS[i]} {COLORS[i]}"}]}
            for i in range(offset, offset + count)]


@pytest.fixture(scope="module", params=["prompt_loss", "centroid"])
def trained_run(request, adapters, pg_url, inference_settings, tmp_path_factory):
    """Two domains (sums, colors), each a LoRA + CRMA trained with crma_core's Recipe, as a
    published continual-run bundle of a tenant; with the centroids or without."""
    from crma_core import CRMAConfig, LoraSettings, Recipe, TrainConfig
    from crma_core.continual_state import BUNDLE_FORMAT
    from crma_core.routing import write_centroids

    root = tmp_path_factory.mktemp("routing-run")
    data = {"sums": (arithmetic_chat_rows(24), arithmetic_chat_rows(10, offset=100)),
            "colors": (color_rows(24), color_rows(10, offset=24))}
    bundle, entries, holdouts = root / "bundle", [], {}
    for index, (name, (train, holdout)) in enumerate(data.items()):
        recipe = Recipe(model_dir=adapters["model"],
                        train_file=write_jsonl(root / f"{name}.jsonl", train),
                        crma=CRMAConfig(), lora=LoraSettings(r=4, alpha=8),
                        train=TrainConfig(epochs=6, batch_size=4, max_seq_len=64,
                                          lr_main=1e-2, seed=0))
        recipe.setup()
        recipe.train()
        recipe.export_artifacts(root / name)
        recipe.cleanup()
        shutil.copytree(root / name / "lora", bundle / f"loras/{index}-{name}")
        (bundle / f"crma/after-{index}").mkdir(parents=True)
        for file in ("crma.safetensors", "crma_config.json"):
            shutil.copy2(root / name / file, bundle / f"crma/after-{index}" / file)
        entries.append({"index": index, "name": name, "lora": f"loras/{index}-{name}",
                        "crma": f"crma/after-{index}", "baseline_lora": None})
        holdouts[name] = write_jsonl(root / f"{name}-holdout.jsonl", holdout)
    (bundle / "manifest.json").write_text(json.dumps({"format": BUNDLE_FORMAT,
                                                      "domains": entries}))
    if request.param == "centroid":  # what a continual stage writes next to each LoRA
        write_centroids(adapters["model"], {root / f"{name}.jsonl": bundle / entry["lora"]
                                            for name, entry in zip(data, entries, strict=True)})
    tenant = create_tenant(pg_url, plan="pro", credit_micros=10_000_000)
    with session_scope(pg_url) as session:
        run_id = new_id("continual_run")
        session.add(ContinualRun(id=run_id, account_id=tenant.account_id, model=MODEL,
                                 mode="modular", status="succeeded", seed=0,
                                 hyperparameters={}, adapter={}, created_at=utcnow()))
        session.flush()
        for index, name in enumerate(data):
            files = [insert_file(session, account_id=tenant.account_id).id for _ in range(2)]
            stage = insert_job(session, account_id=tenant.account_id, kind="continual_stage",
                               continual_run_id=run_id, stage_index=index,
                               status="succeeded", training_file_id=files[0],
                               validation_file_id=files[1], finished_at=utcnow())
            session.add(ContinualStage(run_id=run_id, index=index, name=name,
                                       training_file_id=files[0], validation_file_id=files[1],
                                       job_id=stage.id))
        stored = upload_bundle(store=open_store(inference_settings),
                               account_id=tenant.account_id, owner_id=run_id,
                               bundle_dir=bundle, attempt=1)
        insert_artifacts(session, account_id=tenant.account_id, owner_id=run_id, files=stored)
    return tenant, run_model_name(model=MODEL, account_id=tenant.account_id, run_id=run_id), \
        holdouts, request.param


def test_held_out_prompts_go_to_their_own_domain(api, trained_run, engine_url) -> None:
    tenant, model, holdouts, router = trained_run
    client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=tenant.key, max_retries=0,
                           timeout=60)
    chosen = {name: [] for name in holdouts}
    for name, path in holdouts.items():
        for prompt in holdout_prompts(path):
            answer = client.chat.completions.with_raw_response.create(
                model=model, messages=prompt["messages"], max_tokens=4, temperature=0)
            chosen[name].append(answer.headers["x-crma-domain"])
            assert answer.parse().model_extra["domain"] == chosen[name][-1]
    right = sum(domain == name for name, picks in chosen.items() for domain in picks)
    assert right >= 18, chosen  # of 20
    assert all(picks.count(name) >= 8 for name, picks in chosen.items()), chosen
    # The engine loaded this run's adapters with their centroids exactly when it has them
    # (the API asks for the file by the name crma_core writes it under).
    from app.services.inference_targets import ROUTE_CENTROID
    from crma_core.continual_state import CENTROID_FILE

    assert ROUTE_CENTROID == CENTROID_FILE
    run_id = model.rsplit(":", 1)[-1]
    loaded = [a for a in httpx.get(f"{engine_url}/adapters").json()["adapters"]
              if a["id"].startswith(run_id)]
    assert len(loaded) == 2, loaded
    assert all(a["route_centroid"] == (router == "centroid") for a in loaded), loaded
