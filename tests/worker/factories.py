"""Rows for worker tests: accounts (through the accounts service), uploaded files and jobs
(admitted through `tests.billing_support.admit`: admission.reserve, then the terms on the row)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Account, ContinualRun, ContinualStage, File, Job
from app.domain.ids import new_id
from app.services import accounts, billing, outbox
from tests import billing_support


def make_account(session: Session, *, plan: str = "pro", credit_micros: int = 10_000_000) -> str:
    account, _ = accounts.create_account(session, name=f"worker-test-{plan}", plan=plan,
                                         pepper="test")
    if plan == "pro" and credit_micros:
        billing.add_credit(session, account_id=account.id, amount_micros=credit_micros,
                           memo="test credit")
    return account.id


def make_file(session: Session, *, account_id: str, storage_key: str | None = None,
              example_count: int = 1) -> str:
    row = File(
        id=new_id("file"), account_id=account_id, filename="train.jsonl", purpose="fine-tune",
        bytes=10, status="processed", format="chat", example_count=example_count,
        token_counts={}, errors=[], error_count=0, created_at=utcnow(), storage_key=storage_key,
    )
    session.add(row)
    session.flush()
    return row.id


def make_job(session: Session, *, account_id: str, admit: bool = False,
             estimated_tokens: int = 10_000, offer: bool = False,
             max_cost_micros: int | None = None, **values: Any) -> str:
    """A queued job (the API's shape). `admit` places the hold / reserves the free run;
    `offer` writes the outbox row the API writes at creation."""
    training = values.pop("training_file_id", None) or make_file(session, account_id=account_id)
    now = utcnow()
    fields: dict[str, Any] = {
        "id": new_id("job"), "account_id": account_id, "kind": "fine_tune",
        "model": "smollm2-135m-instruct", "training_file_id": training, "hyperparameters": {},
        "adapter": {}, "seed": 0, "status": "queued", "queue": "small",
        "estimated_tokens": estimated_tokens, "trained_tokens": 0, "hold_micros": 0,
        "cost_micros": 0, "attempt": 0, "created_at": now, "queued_at": now,
    }
    fields.update(values)
    session.add(Job(**fields))
    session.flush()
    if admit:
        billing_support.admit(session, account_id=account_id, model=fields["model"],
                              estimated_tokens=estimated_tokens, source_id=fields["id"],
                              max_cost_micros=max_cost_micros)
    if offer:
        outbox.enqueue(session, task=outbox.RUN_JOB_TASK, queue=fields["queue"],
                       payload={"job_id": fields["id"]})
    return fields["id"]


def make_continual_run(session: Session, *, account_id: str, stages: int = 3) -> tuple[str, list[str]]:
    run_id = new_id("continual_run")
    session.add(ContinualRun(id=run_id, account_id=account_id, model="smollm2-135m-instruct",
                             mode="modular", status="queued", seed=0, hyperparameters={},
                             adapter={}, created_at=utcnow()))
    session.flush()
    job_ids = []
    for index in range(stages):
        train = make_file(session, account_id=account_id)
        val = make_file(session, account_id=account_id)
        job_id = make_job(session, account_id=account_id, kind="continual_stage",
                          continual_run_id=run_id, stage_index=index, training_file_id=train,
                          validation_file_id=val, admit=True)
        session.add(ContinualStage(run_id=run_id, index=index, name=f"domain-{index}",
                                   training_file_id=train, validation_file_id=val, job_id=job_id))
        job_ids.append(job_id)
    session.flush()
    return run_id, job_ids


def expire_lease(session: Session, job_id: str, *, seconds_ago: float = 5.0) -> None:
    session.execute(update(Job).where(Job.id == job_id)
                    .values(lease_expires_at=utcnow() - timedelta(seconds=seconds_ago)))


def job_row(session: Session, job_id: str) -> Job:
    session.expire_all()
    return session.execute(select(Job).where(Job.id == job_id)).scalar_one()


def account_row(session: Session, account_id: str) -> Account:
    session.expire_all()
    return session.execute(select(Account).where(Account.id == account_id)).scalar_one()
