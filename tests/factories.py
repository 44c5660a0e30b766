"""Rows for tests, written once: accounts (through the accounts service, with credit through
the ledger), uploaded files, jobs (optionally admitted and offered as the API would) and
continual runs. Every helper flushes and leaves the transaction to the caller."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Account, ContinualRun, ContinualStage, File, Job
from app.domain.ids import new_id
from app.domain.job_settings import JobSettings
from app.services import accounts, billing, outbox
from app.settings import Settings
from tests import billing_support

# Settings as the environment gives them: prices, plan limits and the default (empty) API-key
# pepper the tests' API servers run with.
TEST_SETTINGS = Settings()
PEPPER = TEST_SETTINGS.api_key_pepper
PRICES = TEST_SETTINGS.prices_micros_per_mtok
RUNS_PER_DAY = TEST_SETTINGS.free_runs_per_day
THROUGHPUT = TEST_SETTINGS.throughput_tokens_per_s
TTL_S = TEST_SETTINGS.idempotency_ttl_s


def create_account(session: Session, *, plan: str = "pro", credit_micros: int = 0,
                   name: str | None = None) -> tuple[str, str]:
    """(account id, its API key)."""
    account, key = accounts.create_account(session, name=name or f"{plan} test", plan=plan,
                                           pepper=PEPPER)
    if credit_micros:
        billing.add_credit(session, account_id=account.id, amount_micros=credit_micros,
                           memo="test credit")
    return account.id, key


def make_account(session: Session, *, plan: str = "pro",
                 credit_micros: int = 10_000_000) -> str:
    """An account id; a pro account gets $10 of credit unless told otherwise."""
    return create_account(session, plan=plan,
                          credit_micros=credit_micros if plan == "pro" else 0)[0]


def committed_account(session_factory: Callable[[], Session], *, plan: str,
                      credit_micros: int = 0) -> str:
    """An account committed in its own session (usable from any thread); its id."""
    with session_factory() as session:
        account_id = make_account(session, plan=plan, credit_micros=credit_micros)
        session.commit()
        return account_id


def insert_file(session: Session, *, account_id: str, **values: Any) -> File:
    """A processed training file (no object behind it unless `storage_key` is given)."""
    fields: dict[str, Any] = {
        "id": new_id("file"), "account_id": account_id, "filename": "train.jsonl",
        "purpose": "fine-tune", "bytes": 10, "status": "processed", "format": "chat",
        "example_count": 1, "token_counts": {}, "errors": [], "error_count": 0,
        "created_at": utcnow(),
    }
    row = File(**{**fields, **values})
    session.add(row)
    session.flush()
    return row


def insert_job(session: Session, *, account_id: str, admit: bool = False, offer: bool = False,
               max_cost_micros: int | None = None, job_settings: JobSettings | None = None,
               **values: Any) -> Job:
    """A queued job (the API's shape; `values` override columns). `admit` places the hold
    or reserves the free run for its `estimated_tokens`; `offer` writes the outbox row the
    API writes at creation."""
    training = (values.pop("training_file_id", None)
                or insert_file(session, account_id=account_id).id)
    now = utcnow()
    fields: dict[str, Any] = {
        "id": new_id("job"), "account_id": account_id, "kind": "fine_tune",
        "model": "smollm2-135m-instruct", "training_file_id": training,
        "settings": (job_settings or JobSettings()).stored(), "seed": 0, "status": "queued",
        "queue": "small", "estimated_tokens": 10_000 if admit else 0, "trained_tokens": 0,
        "hold_micros": 0, "cost_micros": 0, "attempt": 0, "created_at": now, "queued_at": now,
    }
    fields.update(values)
    job = Job(**fields)
    session.add(job)
    session.flush()
    if admit:
        billing_support.admit(session, account_id=account_id, model=fields["model"],
                              estimated_tokens=fields["estimated_tokens"], source_id=job.id,
                              max_cost_micros=max_cost_micros)
        session.refresh(job)
    if offer:
        outbox.enqueue(session, task=outbox.RUN_JOB_TASK, queue=fields["queue"],
                       payload={"job_id": job.id})
    return job


def insert_continual_run(session: Session, *, account_id: str,
                         stages: int = 3) -> tuple[str, list[str]]:
    """A modular run of `stages` admitted stages (nothing offered); (run id, stage job ids)."""
    run_id = new_id("continual_run")
    session.add(ContinualRun(id=run_id, account_id=account_id, model="smollm2-135m-instruct",
                             mode="modular", status="queued", seed=0, hyperparameters={},
                             adapter={}, created_at=utcnow()))
    session.flush()
    job_ids = []
    for index in range(stages):
        train = insert_file(session, account_id=account_id).id
        holdout = insert_file(session, account_id=account_id).id
        job_id = insert_job(session, account_id=account_id, kind="continual_stage",
                            continual_run_id=run_id, stage_index=index, training_file_id=train,
                            validation_file_id=holdout, admit=True).id
        session.add(ContinualStage(run_id=run_id, index=index, name=f"domain-{index}",
                                   training_file_id=train, validation_file_id=holdout,
                                   job_id=job_id))
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
