"""A real `crma engine` process on a tiny random-weight model (named smollm2-135m-instruct, so
the catalog prices and bounds it), reading adapters from the tests' local object store as in
production, and a real API server in front of it. Published adapters are random LoRA + CRMA
weights written exactly as a worker publishes a bundle: a succeeded job, a checkpoint with its
serving export, and a two-domain continual run with its manifest."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.db.base import utcnow
from app.db.models import Checkpoint, ContinualRun, ContinualStage, Job
from app.db.session import session_scope
from app.domain.ids import new_id
from app.domain.job_options import checkpoint_model_name, fine_tuned_model_name, run_model_name
from app.services.publishing import insert_artifacts, upload_bundle
from app.settings import Settings
from app.storage import keys
from app.storage.base import upload_directory
from app.storage.factory import open_store
from tests.app.helpers import LiveServer, Tenant, create_tenant, make_settings
from tests.conftest import running_engine
from tests.factories import insert_file, insert_job

MODEL = "smollm2-135m-instruct"


@dataclass
class Published:
    """The models a tenant can call."""

    tenant: Tenant
    job_id: str
    fine_tuned: str
    checkpoint: str
    run_id: str
    run_model: str
    running_job: str  # the fine_tuned_model name of a job still running


@pytest.fixture(scope="module")
def objects_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("inference-objects")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, Path]:
    from crma_core.testing import make_tiny_model_dir
    from serving.testing import write_random_adapter

    root = tmp_path_factory.mktemp("inference-adapters")
    model_dir = make_tiny_model_dir(root / "tiny", "llama")
    made = {"model": model_dir}
    for name, seed in (("job", 11), ("checkpoint", 12), ("domain-a", 13), ("domain-b", 14)):
        made[name] = write_random_adapter(model_dir, root / name, seed=seed, rank=4)
    return made


def run_bundle(adapters: dict[str, Path], out: Path) -> Path:
    """A continual run's bundle as crma_core.continual_state.export_bundle lays it out."""
    import shutil

    from crma_core.continual_state import BUNDLE_FORMAT

    domains = []
    for index, name in enumerate(("cooking", "astronomy")):
        source = adapters[f"domain-{'ab'[index]}"]
        shutil.copytree(source / "lora", out / f"loras/{index}-{name}")
        crma = out / f"crma/after-{index}"
        crma.mkdir(parents=True)
        for file in ("crma.safetensors", "crma_config.json"):
            shutil.copy2(source / file, crma / file)
        domains.append({"index": index, "name": name, "lora": f"loras/{index}-{name}",
                        "crma": f"crma/after-{index}", "baseline_lora": None})
    (out / "manifest.json").write_text(json.dumps(
        {"format": BUNDLE_FORMAT, "version": 2, "mode": "modular", "domains": domains}))
    return out


def publish(pg_url: str, settings: Settings, adapters: dict[str, Path], tmp: Path,
            tenant: Tenant) -> Published:
    store = open_store(settings)
    account = tenant.account_id
    with session_scope(pg_url) as session:
        job = insert_job(session, account_id=account, status="succeeded", suffix="tiny",
                         finished_at=utcnow(), attempt=1)
        running = insert_job(session, account_id=account, status="running", attempt=1)
        files = upload_bundle(store=store, account_id=account, owner_id=job.id,
                              bundle_dir=adapters["job"], attempt=1)
        insert_artifacts(session, account_id=account, owner_id=job.id, files=files)
        prefix = f"{keys.checkpoint_prefix(account, job.id, 40)}attempt-1/"
        upload_directory(store, adapters["checkpoint"], prefix + "serving/")
        session.add(Checkpoint(id=new_id("checkpoint"), job_id=job.id, step=40, attempt=1,
                               storage_prefix=prefix, metrics={}, created_at=utcnow()))
        run_id = new_id("continual_run")
        session.add(ContinualRun(id=run_id, account_id=account, model=MODEL, mode="modular",
                                 status="succeeded", seed=0, hyperparameters={}, adapter={},
                                 created_at=utcnow()))
        session.flush()
        for index, name in enumerate(("cooking", "astronomy")):
            train = insert_file(session, account_id=account).id
            holdout = insert_file(session, account_id=account).id
            stage = insert_job(session, account_id=account, kind="continual_stage",
                               continual_run_id=run_id, stage_index=index, status="succeeded",
                               training_file_id=train, validation_file_id=holdout,
                               finished_at=utcnow())
            session.add(ContinualStage(run_id=run_id, index=index, name=name,
                                       training_file_id=train, validation_file_id=holdout,
                                       job_id=stage.id))
        bundle = run_bundle(adapters, tmp / f"run-{run_id}")
        files = upload_bundle(store=store, account_id=account, owner_id=run_id,
                              bundle_dir=bundle, attempt=1)
        insert_artifacts(session, account_id=account, owner_id=run_id, files=files)
        name = fine_tuned_model_name(model=MODEL, account_id=account, suffix="tiny",
                                     job_id=job.id)
        return Published(
            tenant=tenant, job_id=job.id, fine_tuned=name,
            checkpoint=checkpoint_model_name(name, 40), run_id=run_id,
            run_model=run_model_name(model=MODEL, account_id=account, run_id=run_id),
            running_job=fine_tuned_model_name(model=MODEL, account_id=account, suffix=None,
                                              job_id=running.id))


@pytest.fixture(scope="module")
def engine_url(adapters, objects_dir, tmp_path_factory) -> Iterator[str]:
    """`crma engine` as production runs it: adapters from the object store."""
    data = tmp_path_factory.mktemp("engine-data")
    env = dict(os.environ, OMP_NUM_THREADS="1", CRMA_DATA_DIR=str(data),
               CRMA_STORAGE_URL=objects_dir.as_uri())
    with running_engine(["--model-dir", str(adapters["model"]), "--model", MODEL,
                         "--threads", "1", "--max-batch", "2", "--log-level", "warning"],
                        log=data / "engine.log", env=env) as url:
        yield url


@pytest.fixture(scope="module")
def inference_settings(tmp_path_factory, pg_url, objects_dir, engine_url) -> Settings:
    tmp = tmp_path_factory.mktemp("inference-api")
    return make_settings(tmp, pg_url, storage_url=objects_dir.as_uri(), engine_url=engine_url,
                         engine_timeout_s=20.0)


@pytest.fixture(scope="module")
def api(inference_settings) -> Iterator[LiveServer]:
    from app.main import create_app

    with LiveServer(create_app(inference_settings)) as server:
        yield server


@pytest.fixture(scope="module")
def published(pg_url, inference_settings, adapters, tmp_path_factory) -> Published:
    tenant = create_tenant(pg_url, plan="pro", credit_micros=50_000_000)
    return publish(pg_url, inference_settings, adapters, tmp_path_factory.mktemp("bundles"),
                   tenant)
