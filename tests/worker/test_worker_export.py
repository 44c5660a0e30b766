"""A merged-weights export built by a real worker (crma.export_job through the outbox and
Celery): a tiny model trained with LoRA + CRMA, exported as `merged_crma`, published as
verified files, loaded with transformers alone (trust_remote_code) and equal to the trained
bundle loaded through crma_core; the fee is captured once."""

from __future__ import annotations

import hashlib

import pytest
import torch
from sqlalchemy import select

from app.db.models import Artifact, ModelExport
from app.services import exports
from app.storage.factory import open_store
from tests.worker.stack import wait_for

pytestmark = pytest.mark.integration


def download(store, rows, target):
    for row in rows:
        path = target / row.name
        path.parent.mkdir(parents=True, exist_ok=True)
        store.get_to_file(row.storage_key, path)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row.sha256
    return target


def test_a_worker_builds_a_merged_crma_export(worker_stack, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    from crma_core.loader import load_for_generation

    stack = worker_stack
    stack.ensure_workers(1)
    account_id, job_id = stack.submit(examples=8, batch_size=4)
    job = stack.wait_status(job_id, ("succeeded", "failed", "cancelled"), 300)
    assert job.status == "succeeded", job.error
    with stack.session() as s:
        made, created = exports.create_export(s, account_id=account_id, job_id=job_id,
                                              format="merged_crma", dtype="float32",
                                              settings=stack.settings)
        assert created
    wait_for(lambda: stack_export(stack, made.id).status in ("succeeded", "failed"), 300,
             what="the export to finish", diagnose=lambda: stack._diagnose(job_id))
    done = stack_export(stack, made.id)
    assert done.status == "succeeded", done.error
    assert done.cost_micros == done.price_micros > 0 and done.bytes > 0

    store = open_store(stack.settings)
    with stack.session() as s:
        files = s.scalars(select(Artifact).where(Artifact.owner_id == made.id)).all()
        bundle = s.scalars(select(Artifact).where(Artifact.owner_id == job_id)).all()
    names = {f.name for f in files}
    assert {"config.json", "modeling_crma.py", "manifest.json", "tokenizer.json"} <= names
    assert any(n.endswith(".safetensors") for n in names)
    folder = download(store, files, tmp_path / "export")
    trained = download(store, bundle, tmp_path / "bundle")

    exported = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True,
                                                    local_files_only=True).eval()
    model_dir = stack.settings.model_store_dir / "smollm2-135m-instruct"
    reference, _ = load_for_generation(model_dir, trained)
    prompt = torch.tensor([[5, 17, 33, 90, 4, 61, 12]])
    with torch.no_grad():
        torch.testing.assert_close(exported(prompt).logits, reference(prompt).logits,
                                   rtol=1e-4, atol=1e-4)

    # Delivered again (a duplicate message): nothing happens, nothing is charged twice.
    from worker.exports import run_export

    assert run_export(export_id=made.id, settings=stack.settings) == "skipped"
    assert len([c for c in stack.captures(made.id)]) == 1


def stack_export(stack, export_id: str) -> ModelExport:
    with stack.session() as s:
        return s.get(ModelExport, export_id)
