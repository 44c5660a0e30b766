"""Continuing a job through real workers: a job created (as the API creates it) with
`model` = a checkpoint's `fine_tuned_model_checkpoint` starts at that checkpoint's adapter.
Its first step's loss is the checkpoint's last reported loss (within noise), not the base
model's; its events say where it started; it is billed for its own tokens only."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.db.models import Checkpoint, File, Job
from app.domain.job_options import checkpoint_model_name, fine_tuned_model_name
from app.domain.job_settings import load_job_settings
from app.domain.pricing import price_micros
from app.schemas.jobs import JobCreate
from app.services import job_creation, outbox
from crma_core.catalog import CATALOG
from tests.factories import PRICES
from tests.worker.stack import MODEL_ID

pytestmark = pytest.mark.integration


def test_a_job_continued_from_a_checkpoint_starts_at_its_adapter(worker_stack) -> None:
    stack = worker_stack
    stack.ensure_workers(1)
    # A source that learns visibly: 3 epochs at 10x the base learning rates.
    account_id, source_id = stack.submit(examples=16, n_epochs=3, batch_size=2, offer=False)
    with stack.session() as s:
        job = s.get(Job, source_id)
        settings = load_job_settings(job.settings)
        hyper = settings.hyperparameters.model_copy(update={"learning_rate_multiplier": 10})
        job.settings = settings.model_copy(update={"hyperparameters": hyper}).stored()
        outbox.enqueue(s, task=outbox.RUN_JOB_TASK, queue=job.queue,
                       payload={"job_id": source_id})
    source = stack.wait_status(source_id, ("succeeded", "failed", "cancelled"), 300)
    assert source.status == "succeeded", source.error
    source_losses = stack.step_losses(source_id)
    with stack.session() as s:
        checkpoint = s.scalars(select(Checkpoint).where(Checkpoint.job_id == source_id)
                               .order_by(Checkpoint.step.desc()).limit(1)).one()
        name = checkpoint_model_name(
            fine_tuned_model_name(model=source.model, account_id=account_id,
                                  suffix=source.suffix, job_id=source_id), checkpoint.step)
        # Token counts as the upload would have measured them: the continued job's estimate
        # (and hold) come from them.
        s.get(File, source.training_file_id).token_counts = {CATALOG[MODEL_ID].family: 5_000}
        spec = JobCreate(model=name, training_file=source.training_file_id,
                         hyperparameters={"n_epochs": 1, "batch_size": 2,
                                          "learning_rate_multiplier": 10})
        continued, _ = job_creation.create_job(s, account_id=account_id, spec=spec,
                                               settings=stack.settings)
    assert checkpoint.metrics["train_loss"] == source_losses[checkpoint.step]

    job = stack.wait_status(continued.id, ("succeeded", "failed", "cancelled"), 300)
    assert job.status == "succeeded", job.error
    assert job.model == source.model
    losses = stack.step_losses(continued.id)
    learned = source_losses[1] - checkpoint.metrics["train_loss"]
    assert learned > 0.2, source_losses  # the source moved well away from the base model
    assert abs(losses[1] - checkpoint.metrics["train_loss"]) < 0.25 * learned, \
        (losses[1], checkpoint.metrics["train_loss"], source_losses[1])

    started = [e for e in stack.events(continued.id) if e.dedupe_key == "started_from"]
    assert len(started) == 1 and started[0].data["model"] == name
    assert started[0].data["checkpoint_step"] == checkpoint.step and started[0].data["crma"]
    assert name in started[0].message
    # Billed for what it trained itself: one epoch of the file, a third of the source's 3.
    assert job.trained_tokens * 3 == source.trained_tokens
    assert job.cost_micros == price_micros(job.model, job.trained_tokens, prices=PRICES) > 0
    assert len(stack.captures(continued.id)) == 1
