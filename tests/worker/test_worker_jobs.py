"""End to end through a real `crma worker` process (Celery over Redis), PostgreSQL, the outbox
relay and the reaper: a tiny random-weight model trains for real on the CPU."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from app.db.models import Artifact, Checkpoint, LedgerTransaction
from app.storage.factory import open_store

pytestmark = pytest.mark.integration


def test_submitted_job_succeeds_with_events_checkpoints_and_verified_artifacts(make_stack) -> None:
    stack = make_stack(worker_step_delay_s=0.0)
    stack.start_worker()
    account_id, job_id = stack.submit()
    job = stack.wait_status(job_id, ("succeeded", "failed", "cancelled"), 120)
    assert job.status == "succeeded", job.error
    assert job.attempt == 1 and job.stop_reason == "completed"
    assert job.trained_tokens > 0 and job.cost_micros > 0
    assert job.lease_owner is None and job.finished_at is not None

    events = stack.events(job_id)
    keys = [e.dedupe_key for e in events]
    steps = sorted(stack.step_losses(job_id))
    assert steps == list(range(1, 13))  # 24 examples, batch 2, 1 epoch
    assert keys[0] == "created" and keys[1] == "status:running:1"
    assert keys[-1] == "status:succeeded:1"
    metric_keys = [k for k in keys if k.startswith("metrics:step:")]
    assert metric_keys == [f"metrics:step:{n}" for n in steps]  # in order
    first = next(e for e in events if e.dedupe_key == "metrics:step:1").data
    for field in ("train_loss", "grad_norm", "clipped", "learning_rate", "total_steps",
                  "crma_spectral_norm_max", "crma_marginal_error_max", "crma_alpha_mean"):
        assert field in first
    assert first["total_steps"] == 12
    assert [k for k in keys if k.startswith("checkpoint:")] == \
        ["checkpoint:step:4", "checkpoint:step:8", "checkpoint:step:12"]

    with stack.session() as s:
        checkpoints = s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)
                                .order_by(Checkpoint.step)).all()
        assert [(c.step, c.attempt) for c in checkpoints] == [(4, 1), (8, 1), (12, 1)]
        artifacts = s.scalars(select(Artifact).where(Artifact.owner_id == job_id)).all()
        captures = s.scalars(select(LedgerTransaction).where(
            LedgerTransaction.source_id == job_id, LedgerTransaction.kind == "capture")).all()
    assert len(captures) == 1
    names = {a.name for a in artifacts}
    assert {"lora/adapter_config.json", "lora/adapter_model.safetensors", "crma.safetensors",
            "crma_config.json", "metrics.jsonl", "manifest.json", "plots/loss.png",
            "plots/grad_norm.png"} <= names
    store = open_store(stack.settings)
    for artifact in artifacts:
        assert artifact.account_id == account_id
        data = b"".join(store.iter_chunks(artifact.storage_key))
        assert len(data) == artifact.bytes
        assert hashlib.sha256(data).hexdigest() == artifact.sha256
