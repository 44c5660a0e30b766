"""Credit, holds and settlement against real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import Account, Job, LedgerEntry, LedgerTransaction
from app.domain.errors import InsufficientCredit
from app.domain.pricing import price_micros
from app.domain.job_state import JobStatus
from app.services import billing
from app.services.job_status import transition_job
from tests.billing_support import admit, free_runs
from tests.factories import PRICES

MODEL = "mistral-7b-v0.3"  # 500_000 micros per 1M tokens


def postings(session: Session, job_id: str) -> dict[str, int]:
    rows = session.execute(
        select(LedgerTransaction.kind, func.count())
        .where(LedgerTransaction.source_id == job_id)
        .group_by(LedgerTransaction.kind)
    ).all()
    return dict(rows)


def new_pro_job(session: Session, make_job: Callable[..., Job], account_id: str, tokens: int,
                max_cost: int | None = None) -> Job:
    job = make_job(session, account_id=account_id, model=MODEL, queue="large")
    admit(session, account_id=account_id, model=MODEL, estimated_tokens=tokens,
          source_id=job.id, max_cost_micros=max_cost)
    return job


def finish(session: Session, job_id: str, status: JobStatus, trained: int,
           error: dict | None = None) -> None:
    assert transition_job(session, job_id=job_id, to=JobStatus.RUNNING, expected=[JobStatus.QUEUED])
    assert transition_job(session, job_id=job_id, to=status, expected=[JobStatus.RUNNING],
                          values={"trained_tokens": trained, "error": error})
    billing.settle_job(session, job_id=job_id, prices=PRICES)


def test_add_credit_is_double_entry(pg_session: Session, make_account) -> None:
    account_id = make_account("pro")
    tx = billing.add_credit(pg_session, account_id=account_id, amount_micros=5_000_000, memo="x")
    again = billing.add_credit(pg_session, account_id=account_id, amount_micros=1_000_000,
                               memo="payment", source_id="pay-1")
    replay = billing.add_credit(pg_session, account_id=account_id, amount_micros=1_000_000,
                                memo="payment", source_id="pay-1")
    assert replay.id == again.id and tx.id.startswith("ltx-")
    assert pg_session.get(Account, account_id, populate_existing=True).credit_available_micros == 6_000_000
    report = billing.reconcile(pg_session, account_id)
    assert report.ok and report.ledger_available == 6_000_000
    with pytest.raises(ValueError):
        billing.add_credit(pg_session, account_id=account_id, amount_micros=0, memo="")


def test_success_captures_trained_tokens_and_releases_rest(pg_session, make_account, make_job):
    account_id = make_account("pro", credit_micros=10_000_000)
    job = new_pro_job(pg_session, make_job, account_id, tokens=4_000_000)  # $2.00 hold
    pg_session.refresh(job)
    # The budget is what the hold buys: training can never cost more than was held.
    assert job.hold_micros == 2_000_000 and job.token_budget == 4_000_000
    acct = pg_session.get(Account, account_id, populate_existing=True)
    assert (acct.credit_available_micros, acct.credit_held_micros) == (8_000_000, 2_000_000)
    assert billing.reconcile(pg_session, account_id).ok

    finish(pg_session, job.id, JobStatus.SUCCEEDED, trained=3_000_001)
    acct = pg_session.get(Account, account_id, populate_existing=True)
    cost = price_micros(MODEL, 3_000_001, prices=PRICES)
    assert cost == 1_500_001
    assert (acct.credit_available_micros, acct.credit_held_micros) == (10_000_000 - cost, 0)
    assert pg_session.get(Job, job.id, populate_existing=True).cost_micros == cost
    for _ in range(3):  # replays are no-ops
        billing.settle_job(pg_session, job_id=job.id, prices=PRICES)
    assert postings(pg_session, job.id) == {"hold": 1, "capture": 1, "release": 1}
    assert pg_session.get(Account, account_id, populate_existing=True).credit_available_micros == 10_000_000 - cost
    assert billing.reconcile(pg_session, account_id).ok


def test_capture_is_capped_at_the_hold(pg_session, make_account, make_job):
    account_id = make_account("pro", credit_micros=10_000_000)
    job = new_pro_job(pg_session, make_job, account_id, tokens=2_000_000)
    finish(pg_session, job.id, JobStatus.SUCCEEDED, trained=5_000_000)
    assert pg_session.get(Job, job.id, populate_existing=True).cost_micros == 1_000_000
    assert billing.reconcile(pg_session, account_id).ok


def test_platform_fault_is_free_and_cancel_pays_for_what_was_trained(
    pg_session, make_account, make_job
):
    account_id = make_account("pro", credit_micros=10_000_000)
    lost = new_pro_job(pg_session, make_job, account_id, tokens=2_000_000)
    finish(pg_session, lost.id, JobStatus.FAILED, trained=1_000_000,
           error={"code": "worker_lost", "message": "gone"})
    user_fault = new_pro_job(pg_session, make_job, account_id, tokens=2_000_000)
    finish(pg_session, user_fault.id, JobStatus.FAILED, trained=1_000_000,
           error={"code": "invalid_training_file", "message": "bad"})
    cancelled = new_pro_job(pg_session, make_job, account_id, tokens=2_000_000)
    finish(pg_session, cancelled.id, JobStatus.CANCELLED, trained=400_000)
    costs = [pg_session.get(Job, j.id, populate_existing=True).cost_micros
             for j in (lost, user_fault, cancelled)]
    assert costs == [0, 500_000, 200_000]
    acct = pg_session.get(Account, account_id, populate_existing=True)
    assert acct.credit_available_micros == 10_000_000 - 700_000 and acct.credit_held_micros == 0
    assert billing.reconcile(pg_session, account_id).ok


def test_max_cost_sets_budget_and_caps_hold(pg_session, make_account, make_job):
    account_id = make_account("pro", credit_micros=1_000_000)
    job = new_pro_job(pg_session, make_job, account_id, tokens=10_000_000, max_cost=750_000)
    pg_session.refresh(job)
    assert job.hold_micros == 750_000 and job.token_budget == 1_500_000
    finish(pg_session, job.id, JobStatus.SUCCEEDED, trained=1_500_000)
    assert pg_session.get(Account, account_id, populate_existing=True).credit_available_micros == 250_000
    assert billing.reconcile(pg_session, account_id).ok


def test_insufficient_credit_moves_nothing(pg_session, make_account, make_job):
    account_id = make_account("pro", credit_micros=999_999)
    job = make_job(pg_session, account_id=account_id, model=MODEL)
    with pytest.raises(InsufficientCredit) as info:
        admit(pg_session, account_id=account_id, model=MODEL,
              estimated_tokens=2_000_000, source_id=job.id)
    assert info.value.status_code == 402 and info.value.code == "insufficient_credit"
    assert postings(pg_session, job.id) == {}
    assert pg_session.get(Account, account_id, populate_existing=True).credit_held_micros == 0


def test_settle_refuses_a_live_job(pg_session, make_account, make_job):
    account_id = make_account("pro", credit_micros=10_000_000)
    job = new_pro_job(pg_session, make_job, account_id, tokens=1000)
    with pytest.raises(ValueError):
        billing.settle_job(pg_session, job_id=job.id, prices=PRICES)


def test_free_job_moves_no_money(pg_session, make_account, make_job):
    account_id = make_account("free")
    job = make_job(pg_session, account_id=account_id)
    admitted = admit(pg_session, account_id=account_id, model="tinyllama-1.1b-chat",
                     estimated_tokens=9_000_000, source_id=job.id)
    assert admitted.hold_micros == 0 and admitted.token_budget == 2_000_000
    finish(pg_session, job.id, JobStatus.SUCCEEDED, trained=2_000_000)
    assert postings(pg_session, job.id) == {}
    assert pg_session.get(Job, job.id, populate_existing=True).cost_micros == 0
    entries = pg_session.scalar(
        select(func.count()).select_from(LedgerEntry).where(LedgerEntry.account_id == account_id))
    assert entries == 0


def test_full_lifecycle_on_sqlite(sqlite_url, make_job) -> None:
    from app.db.session import get_sessionmaker
    from app.services import accounts

    with get_sessionmaker(sqlite_url)() as session:
        account, _ = accounts.create_account(session, name="dev", plan="pro", pepper="")
        billing.add_credit(session, account_id=account.id, amount_micros=3_000_000, memo="dev")
        job = new_pro_job(session, make_job, account.id, tokens=4_000_000)
        with pytest.raises(InsufficientCredit), session.begin_nested():
            new_pro_job(session, make_job, account.id, tokens=4_000_002)
        finish(session, job.id, JobStatus.CANCELLED, trained=1_000_000)
        billing.settle_job(session, job_id=job.id, prices=PRICES)
        session.commit()
        assert postings(session, job.id) == {"hold": 1, "capture": 1, "release": 1}
        row = session.get(Account, account.id, populate_existing=True)
        assert (row.credit_available_micros, row.credit_held_micros) == (2_500_000, 0)
        assert billing.reconcile(session, account.id).ok


@pytest.mark.parametrize(
    ("status", "started", "error", "refunded"),
    [
        (JobStatus.FAILED, True, {"code": "worker_lost"}, True),  # our fault
        (JobStatus.FAILED, True, {"code": "invalid_training_file"}, False),  # the user's data
        (JobStatus.CANCELLED, False, None, True),  # cancelled before it started
        (JobStatus.CANCELLED, True, None, False),  # it trained: the run was used
        (JobStatus.SUCCEEDED, True, None, False),
    ],
)
def test_free_run_given_back_only_when_nothing_was_used(
    pg_session: Session, make_account, make_job, status, started, error, refunded
) -> None:
    from app.db.base import utcnow
    from app.services import quotas

    account_id = make_account("free")
    job = make_job(pg_session, account_id=account_id, model="tinyllama-1.1b-chat", queue="small")
    admit(pg_session, account_id=account_id, model="tinyllama-1.1b-chat",
          estimated_tokens=1000, source_id=job.id)
    assert free_runs(pg_session, account_id=account_id).remaining == 2
    if started:
        assert transition_job(pg_session, job_id=job.id, to=JobStatus.RUNNING,
                              expected=[JobStatus.QUEUED], values={"started_at": utcnow()})
    assert transition_job(pg_session, job_id=job.id, to=status,
                          expected=[JobStatus.RUNNING if started else JobStatus.QUEUED],
                          values={"error": error})
    for _ in range(3):  # replayed settlements give the run back at most once
        billing.settle_job(pg_session, job_id=job.id, prices=PRICES)
    remaining = free_runs(pg_session, account_id=account_id).remaining
    assert remaining == (3 if refunded else 2)
    assert postings(pg_session, job.id).get("run_refund", 0) == (1 if refunded else 0)
