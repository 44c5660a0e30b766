"""The official `openai` Python client against a real uvicorn server: upload a file, create,
retrieve, list and cancel jobs, list events and checkpoints."""

from __future__ import annotations

import io

import openai
import pytest

from app.db.base import utcnow
from app.db.models import Checkpoint
from app.db.session import session_scope
from app.domain.ids import new_id
from tests.app.helpers import Tenant, jsonl

pytestmark = pytest.mark.integration


def test_openai_client_round_trip(live_server, tenant: Tenant, pg_url: str) -> None:
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=tenant.key, max_retries=0)

    uploaded = client.files.create(file=("train.jsonl", io.BytesIO(jsonl(20))),
                                   purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.status == "processed"
    assert uploaded.bytes == len(jsonl(20)) and uploaded.filename == "train.jsonl"

    job = client.fine_tuning.jobs.create(
        model="tinyllama-1.1b-chat", training_file=uploaded.id, suffix="sdk",
        hyperparameters={"n_epochs": 2}, seed=11, metadata={"source": "sdk"},
    )
    assert job.status == "queued" and job.hyperparameters.n_epochs == 2 and job.seed == 11
    assert job.metadata == {"source": "sdk"}

    fetched = client.fine_tuning.jobs.retrieve(job.id)
    assert (fetched.id, fetched.training_file, fetched.model) == (
        job.id, uploaded.id, "tinyllama-1.1b-chat")

    second = client.fine_tuning.jobs.create(model="tinyllama-1.1b-chat",
                                            training_file=uploaded.id)
    page = client.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in page.data] == [second.id] and page.has_more
    everything = [j.id for j in client.fine_tuning.jobs.list(limit=1)]  # auto-paginates
    assert everything[:2] == [second.id, job.id]

    events = client.fine_tuning.jobs.list_events(job.id)
    assert [e.message for e in events.data] == [f"Created fine-tuning job: {job.id}"]
    assert events.data[0].object == "fine_tuning.job.event"

    with session_scope(pg_url) as session:
        session.add(Checkpoint(id=new_id("checkpoint"), job_id=job.id, step=50, attempt=1,
                               storage_prefix="tenants/x/", metrics={"train_loss": 1.25},
                               created_at=utcnow()))
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id)
    assert [(c.step_number, c.fine_tuning_job_id) for c in checkpoints.data] == [(50, job.id)]
    assert checkpoints.data[0].fine_tuned_model_checkpoint.endswith("ckpt-step-50")

    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"

    with pytest.raises(openai.NotFoundError) as missing:
        client.fine_tuning.jobs.retrieve("ftjob-000000000000000000000000")
    assert missing.value.body["code"] == "not_found"
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.BadRequestError) as invalid:
        client.files.create(file=("bad.jsonl", io.BytesIO(b"{nope\n")), purpose="fine-tune")
    assert invalid.value.body["code"] == "invalid_file"
    assert invalid.value.body["errors"][0]["line"] == 1

    stranger = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="sk-crma-" + "x" * 40,
                             max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.fine_tuning.jobs.list()
