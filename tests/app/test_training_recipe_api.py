"""The training recipe over HTTP (issue 18): every hyperparameter checked against the
model's bounds, which GET /v1/models/{id} serves under the request's names; the estimate
shows the hyperparameters as the job would resolve them and the micro-batch plan; the
OpenAPI document carries them."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.domain.job_limits import KNOBS
from crma_core.catalog import CATALOG
from crma_core.limits import MAX_LORA_R
from crma_core.memory import MIB, ModelShape, memory_model, plan_micro_batch
from crma_core.settings import LoraSettings, TrainConfig
from tests.app.helpers import Tenant, jsonl, make_settings, upload_id

pytestmark = pytest.mark.integration

SMOL, TINY = "smollm2-135m-instruct", "tinyllama-1.1b-chat"


def test_the_models_route_serves_each_models_bounds_in_the_requests_names(
        client: TestClient, tenant: Tenant) -> None:
    smol = client.get(f"/v1/models/{SMOL}", headers=tenant.headers).json()["limits"]
    tiny = client.get(f"/v1/models/{TINY}", headers=tenant.headers).json()["limits"]
    # Every knob the request has, in the request's names.
    for knob in KNOBS:
        group, name = knob.param.split(".")
        if name not in ("lora_trainable_modules", "quantization"):
            assert name in smol[group], knob.param
    assert smol["hyperparameters"]["max_seq_len"] == {"min": 32, "max": 8192}
    assert tiny["hyperparameters"]["max_seq_len"]["max"] == 2048  # its context length
    assert smol["adapter"]["lora_r"]["max"] == CATALOG[SMOL].hidden_size // 4 == 144
    assert tiny["adapter"]["lora_r"]["max"] == min(MAX_LORA_R, CATALOG[TINY].hidden_size // 4)
    # In the request's units: learning_rate_multiplier is crma_core's lr over its 2e-4.
    assert smol["hyperparameters"]["learning_rate_multiplier"] == {"min": 0.0005, "max": 50}
    assert (smol["quantization"], tiny["quantization"]) == ([], ["nf4"])
    assert smol["lr_scheduler_types"] == ["constant", "linear", "cosine"]
    assert smol["lora_trainable_modules"][0] == "all-linear"


@pytest.mark.parametrize(("model", "body", "param", "code"), [
    (SMOL, {"adapter": {"lora_r": 200}}, "adapter.lora_r", "hyperparameter_out_of_range"),
    (TINY, {"hyperparameters": {"max_seq_len": 4096}}, "hyperparameters.max_seq_len",
     "hyperparameter_out_of_range"),
    (SMOL, {"adapter": {"quantization": "nf4"}}, "adapter.quantization", "qlora_not_supported"),
])
def test_a_setting_outside_the_models_bounds_is_a_400_naming_it(
        client: TestClient, tenant: Tenant, model: str, body: dict, param: str,
        code: str) -> None:
    file_id = upload_id(client, tenant, jsonl(20))
    for path in ("/v1/fine_tuning/jobs/estimate", "/v1/fine_tuning/jobs"):
        response = client.post(path, headers=tenant.headers,
                               json={"model": model, "training_file": file_id, **body})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["param"], error["code"]) == (param, code)
        assert model in error["message"]


def test_bad_recipe_values_are_refused_by_name(client: TestClient, tenant: Tenant) -> None:
    file_id = upload_id(client, tenant, jsonl(20))
    for hyperparameters, param in (({"warmup_ratio": 0.9}, "warmup_ratio"),
                                   ({"weight_decay": -0.1}, "weight_decay"),
                                   ({"lr_scheduler_type": "polynomial"}, "lr_scheduler_type"),
                                   ({"n_checkpoints": 99}, "n_checkpoints"),
                                   ({"packing": "yes"}, "packing")):
        response = client.post("/v1/fine_tuning/jobs/estimate", headers=tenant.headers, json={
            "model": SMOL, "training_file": file_id, "hyperparameters": hyperparameters})
        assert response.status_code == 422, (hyperparameters, response.text)
        assert param in response.text
    # Evaluations need something to evaluate.
    response = client.post("/v1/fine_tuning/jobs/estimate", headers=tenant.headers, json={
        "model": SMOL, "training_file": file_id, "hyperparameters": {"n_evals": 3}})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "hyperparameters.n_evals"


def test_the_estimate_shows_the_resolved_hyperparameters_and_the_micro_batch_plan(
        client: TestClient, tenant: Tenant) -> None:
    file_id = upload_id(client, tenant, jsonl(40))
    body = {"model": TINY, "training_file": file_id, "validation_file": file_id,
            "hyperparameters": {"batch_size": 64, "packing": True, "max_seq_len": 512,
                                "lr_scheduler": {"lr_scheduler_type": "cosine"},
                                "warmup_ratio": 0.1},
            "adapter": {"lora_dropout": 0.05, "lora_trainable_modules": "q_proj,v_proj"}}
    estimate = client.post("/v1/fine_tuning/jobs/estimate", headers=tenant.headers,
                           json=body)
    assert estimate.status_code == 200, estimate.text
    shown = estimate.json()
    hp = shown["hyperparameters"]
    assert (hp["batch_size"], hp["packing"], hp["max_seq_len"]) == (64, True, 512)
    assert (hp["lr_scheduler_type"], hp["warmup_ratio"]) == ("cosine", 0.1)
    # "auto" decided as the job decides it: 3 epochs, 10 evaluations with a validation file.
    assert (hp["n_epochs"], hp["n_evals"], hp["n_checkpoints"]) == (3, 10, 3)
    assert hp["weight_decay"] == TrainConfig().weight_decay
    assert (hp["crma_learning_rate"], hp["max_steps"]) == (TrainConfig().lr_rw, None)
    adapter = shown["adapter"]
    assert (adapter["lora_dropout"], adapter["lora_trainable_modules"]) == (
        0.05, ["q_proj", "v_proj"])
    # No worker budget configured: the workers plan against their free memory.
    plan = shown["micro_batch_plan"]
    assert plan == {"batch_size": 64, "micro_batch_size": 64, "accumulation_steps": 1,
                    "width": 512, "memory_budget_mb": None,
                    "estimated_mb_per_pass": plan["estimated_mb_per_pass"], "fits": True,
                    "source": "device"}
    created = client.post("/v1/fine_tuning/jobs", headers=tenant.headers, json=body).json()
    assert created["hyperparameters"] == hp
    assert {k: created["adapter"][k] for k in adapter} == adapter


def test_the_estimate_plans_micro_batches_on_the_workers_memory_budget(
        tmp_path: Path, pg_url: str, tenant: Tenant) -> None:
    from app.main import create_app

    settings = make_settings(tmp_path, pg_url, worker_memory_budget_mb=16384)
    with TestClient(create_app(settings)) as client:
        file_id = upload_id(client, tenant, jsonl(40))
        shown = client.post("/v1/fine_tuning/jobs/estimate", headers=tenant.headers, json={
            "model": TINY, "training_file": file_id, "adapter": {"crma": False},
            "hyperparameters": {"batch_size": 64, "max_seq_len": 1024, "packing": True}})
        assert shown.status_code == 200, shown.text
        plan = shown.json()["micro_batch_plan"]
        # crma_core's memory model on the catalog shape, as a worker with that budget plans.
        model = memory_model(ModelShape.of_catalog(CATALOG[TINY]), lora=LoraSettings(r=16),
                             train=TrainConfig(batch_size=64, max_seq_len=1024))
        expected = plan_micro_batch(model, batch_size=64, width=1024, budget_bytes=16384 * MIB)
        assert 1 < plan["accumulation_steps"] == expected.accumulation_steps
        assert plan["micro_batch_size"] == expected.micro_batch_size < 64
        assert (plan["source"], plan["memory_budget_mb"], plan["fits"]) == ("budget", 16384,
                                                                            True)
        assert plan["estimated_mb_per_pass"] <= 16384

        # Too long a row for the budget: the estimate says it would not fit.
        tight = client.post("/v1/fine_tuning/jobs/estimate", headers=tenant.headers, json={
            "model": "mistral-7b-v0.3", "training_file": file_id,
            "hyperparameters": {"max_seq_len": 32768, "packing": True}}).json()
        assert tight["micro_batch_plan"]["fits"] is False


def test_the_openapi_document_carries_the_recipe(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    request = schemas["HyperparametersIn"]["properties"]
    for name in ("batch_size", "lr_scheduler_type", "warmup_ratio", "weight_decay",
                 "max_grad_norm", "train_on_inputs", "packing", "n_evals", "n_checkpoints",
                 "max_seq_len", "max_steps"):
        assert name in request and request[name].get("description"), name
    adapter = schemas["AdapterIn"]["properties"]
    for name in ("lora_r", "lora_alpha", "lora_dropout", "lora_trainable_modules"):
        assert name in adapter, name
    estimate = schemas["JobEstimatePublic"]["properties"]
    assert {"hyperparameters", "adapter", "micro_batch_plan"} <= set(estimate)
    assert "limits" in schemas["ModelPublic"]["properties"]
    metrics = schemas["CheckpointMetricsPublic"]["properties"]
    assert {"train_loss", "train_mean_token_accuracy", "valid_loss",
            "valid_mean_token_accuracy", "full_valid_loss"} <= set(metrics)
    assert "best" in schemas["CheckpointPublic"]["properties"]


def test_the_api_and_crma_train_read_each_default_from_crma_core() -> None:
    """One home per default: a job that leaves a knob out trains with crma_core's default,
    which is what `crma train` uses for a flag left out (tests/cli/test_train_cli.py); every
    request knob has a `crma train` flag. Only the "auto" rules (epochs, batch size,
    evaluations and checkpoints for the file at hand, app/domain/hyperparameters.py) are
    the service's own."""
    from crma_cli.train import CRMA_FLAGS, LORA_FLAGS, TRAIN_FLAGS
    from app.domain.job_settings import JobSettings, recipe_configs
    from app.schemas.jobs import AdapterIn, HyperparametersIn
    from crma_core.config import CRMAConfig

    built = recipe_configs(JobSettings(), seed=0, token_budget=None, example_count=100,
                           has_validation=False, device="cpu", checkpoint_every_steps=None,
                           checkpoint_every_s=None)
    defaults, lora = TrainConfig(), LoraSettings()
    for name in ("max_seq_len", "lr_main", "lr_rw", "lr_mix", "lr_gate", "lr_schedule",
                 "warmup_ratio", "weight_decay", "clip", "max_grad_norm", "train_on_inputs",
                 "packing", "max_steps"):
        assert getattr(built.train, name) == getattr(defaults, name), name
    for name in ("r", "alpha", "dropout", "target_modules", "quantization"):
        assert getattr(built.lora, name) == getattr(lora, name), name
    assert (built.crma.n, built.crma.r) == (CRMAConfig().n, CRMAConfig().r)
    # The request's names -> the crma_core field a `crma train` flag sets.
    fields = {"n_epochs": "epochs", "batch_size": "batch_size",
              "learning_rate_multiplier": "lr_main", "crma_learning_rate": "lr_rw",
              "crma_mixing_learning_rate": "lr_mix", "crma_gate_learning_rate": "lr_gate",
              "lr_scheduler_type": "lr_schedule", "lora_r": "r", "lora_alpha": "alpha",
              "lora_dropout": "dropout", "lora_trainable_modules": "target_modules",
              "n_streams": "n", "rank": "r"}
    flagged = {name for _, name, _, _ in TRAIN_FLAGS + LORA_FLAGS + CRMA_FLAGS}
    for name in [*HyperparametersIn.model_fields, *AdapterIn.model_fields]:
        if name in ("crma", "quantization"):  # --no-crma, --qlora
            continue
        assert fields.get(name, name) in flagged, name
