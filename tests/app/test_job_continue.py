"""Creating a job that continues from a fine-tuned model or a checkpoint (OpenAI's names):
the base model and adapter come from the source job, the start is recorded in the job's
settings, and every bad reference gets a clear 4xx (another account's job is a 404)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.db.models import Checkpoint, Job
from app.db.session import session_scope
from app.domain.ids import new_id
from app.domain.job_options import checkpoint_model_name, fine_tuned_model_name
from app.domain.job_settings import AdapterSettings, JobSettings, load_job_settings
from tests.app.helpers import upload_id
from tests.factories import insert_job


def source_job(pg_url: str, account_id: str, *, status: str = "succeeded",
               suffix: str | None = "base", steps: tuple[int, ...] = (4, 8)) -> tuple[str, str]:
    """A finished job with a non-default adapter and checkpoints; (job id, its model name)."""
    with session_scope(pg_url) as session:
        job = insert_job(session, account_id=account_id, status=status, suffix=suffix,
                         job_settings=JobSettings(adapter=AdapterSettings(
                             crma=False, lora_r=8, lora_alpha=16)))
        for step in steps:
            session.add(Checkpoint(id=new_id("checkpoint"), job_id=job.id, step=step, attempt=1,
                                   storage_prefix=f"x/{step}/", metrics={"train_loss": 1.0}))
    return job.id, fine_tuned_model_name(model=job.model, account_id=account_id,
                                         suffix=suffix, job_id=job.id)


def create(client, tenant, model: str, **body):
    training_file = body.pop("training_file", None) or upload_id(client, tenant)
    return client.post("/v1/fine_tuning/jobs", headers=tenant.headers,
                       json={"model": model, "training_file": training_file, **body})


@pytest.mark.parametrize("checkpoint", [None, 8])
def test_continue_from_a_job_or_a_checkpoint(client, tenant, pg_url, checkpoint):
    job_id, name = source_job(pg_url, tenant.account_id)
    model = name if checkpoint is None else checkpoint_model_name(name, checkpoint)
    response = create(client, tenant, model, hyperparameters={"n_epochs": 2})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["model"] == "smollm2-135m-instruct"
    assert body["adapter"]["crma"] is False and body["adapter"]["lora_r"] == 8
    with session_scope(pg_url) as session:
        stored = load_job_settings(session.scalar(select(Job.settings)
                                                  .where(Job.id == body["id"])))
    assert stored.start_from.name == model and stored.start_from.job_id == job_id
    assert stored.start_from.checkpoint_step == checkpoint
    assert stored.hyperparameters.n_epochs == 2
    # Repeating the source's adapter values is fine; the estimate accepts the name too.
    again = create(client, tenant, model, adapter={"lora_r": 8, "crma": False})
    assert again.status_code == 201, again.text
    estimate = client.post("/v1/fine_tuning/jobs/estimate", headers=tenant.headers,
                           json={"model": model, "training_file": upload_id(client, tenant)})
    assert estimate.status_code == 200, estimate.text


def test_another_accounts_model_is_not_found(client, tenant, other_tenant, pg_url):
    _, name = source_job(pg_url, other_tenant.account_id)
    for model in (name, checkpoint_model_name(name, 4)):
        response = create(client, tenant, model)
        assert response.status_code == 404, response.text
        error = response.json()["error"]
        assert error["code"] == "model_not_found" and error["param"] == "model"


def test_bad_references_say_why(client, tenant, pg_url):
    _, name = source_job(pg_url, tenant.account_id)
    _, running = source_job(pg_url, tenant.account_id, status="running", steps=(4,))
    cases = [
        (checkpoint_model_name(name, 5), 404, "model_not_found"),       # no such step
        (name.replace(":base:", ":other:"), 404, "model_not_found"),    # wrong suffix
        (f"ft:smollm2-135m-instruct:{tenant.account_id}:ftjob-missing", 404,
         "model_not_found"),
        ("ft:nonsense", 404, "model_not_found"),                         # not a name at all
        (running, 400, "model_not_ready"),                               # not finished yet
    ]
    for model, status, code in cases:
        response = create(client, tenant, model)
        assert response.status_code == status, (model, response.text)
        assert response.json()["error"]["code"] == code, (model, response.text)
    # A running job's checkpoint is a valid start.
    assert create(client, tenant, checkpoint_model_name(running, 4)).status_code == 201
    mismatch = create(client, tenant, name, adapter={"lora_r": 16})
    assert mismatch.status_code == 400
    error = mismatch.json()["error"]
    assert error["code"] == "adapter_mismatch" and error["param"] == "adapter.lora_r"
    assert "16" in error["message"] and "8" in error["message"]
    crma = create(client, tenant, name, adapter={"crma": True})
    assert crma.status_code == 400 and crma.json()["error"]["param"] == "adapter.crma"
