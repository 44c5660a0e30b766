"""Terminal transitions (app/services/job_lifecycle.py) on PostgreSQL: fenced, settled in the same
transaction, and the continual-run cascade: the next stage offered when one succeeds, the
later stages cancelled (holds released) when one fails."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.db.models import ContinualRun, JobEvent, LedgerTransaction, OutboxMessage
from app.domain.job_state import ErrorCode, JobStatus
from app.services import leases
from tests.factories import (
    PRICES,
    account_row,
    insert_continual_run,
    insert_job,
    job_row,
    make_account,
)
from app.services.job_lifecycle import finish_job as finish
from app.services.job_lifecycle import job_error

pytestmark = pytest.mark.integration


def finish_job(session, **kwargs) -> bool:
    return finish(session, prices=PRICES, **kwargs)


def _claim(tx, job_id: str) -> int:
    with tx() as s:
        return leases.claim_job(s, job_id=job_id, owner="w", lease_ttl_s=30,
                                max_attempts=3).attempt


def _offers(s, job_id: str) -> int:
    return len(s.scalars(select(OutboxMessage.id).where(
        OutboxMessage.payload["job_id"].as_string() == job_id)).all())


def test_a_stale_attempt_cannot_finish_the_job(tx) -> None:
    with tx() as s:
        job_id = insert_job(s, account_id=make_account(s), admit=True).id
    attempt = _claim(tx, job_id)
    with tx() as s:
        assert not finish_job(s, job_id=job_id, attempt=attempt + 1, to=JobStatus.SUCCEEDED)
    with tx() as s:
        assert job_row(s, job_id).status == "running"
        assert s.scalars(select(LedgerTransaction.kind).where(
            LedgerTransaction.source_id == job_id)).all() == ["hold"]


def test_success_settles_and_records_the_status_event_once(tx) -> None:
    with tx() as s:
        account = make_account(s)
        job_id = insert_job(s, account_id=account, admit=True).id
        available_before = account_row(s, account).credit_available_micros
    attempt = _claim(tx, job_id)
    with tx() as s:
        assert finish_job(s, job_id=job_id, attempt=attempt, to=JobStatus.SUCCEEDED,
                          values={"trained_tokens": 1000})
        assert not finish_job(s, job_id=job_id, attempt=attempt, to=JobStatus.SUCCEEDED)
    with tx() as s:
        job = job_row(s, job_id)
        assert (job.status, job.cost_micros, job.lease_owner) == ("succeeded", 100, None)
        assert account_row(s, account).credit_available_micros == available_before + \
            job.hold_micros - 100
        keys = s.scalars(select(JobEvent.dedupe_key).where(JobEvent.job_id == job_id)).all()
        assert keys == [f"status:succeeded:{attempt}"]


def test_a_succeeded_stage_offers_the_next_and_the_last_one_finishes_the_run(tx) -> None:
    with tx() as s:
        run_id, stages = insert_continual_run(s, account_id=make_account(s), stages=2)
    for index, job_id in enumerate(stages):
        attempt = _claim(tx, job_id)
        assert attempt == 1
        with tx() as s:
            finish_job(s, job_id=job_id, attempt=attempt, to=JobStatus.SUCCEEDED)
        with tx() as s:
            run = s.get(ContinualRun, run_id)
            if index == 0:
                assert _offers(s, stages[1]) == 1 and run.status != "succeeded"
            else:
                assert run.status == "succeeded" and run.finished_at is not None


def test_a_failed_stage_cancels_the_later_stages_and_fails_the_run(tx) -> None:
    with tx() as s:
        account = make_account(s)
        held_before = account_row(s, account).credit_held_micros
        run_id, stages = insert_continual_run(s, account_id=account, stages=3)
    attempt = _claim(tx, stages[0])
    error = job_error(ErrorCode.OUT_OF_MEMORY, "out of memory")
    with tx() as s:
        assert finish_job(s, job_id=stages[0], attempt=attempt, to=JobStatus.FAILED, error=error)
    with tx() as s:
        assert [job_row(s, j).status for j in stages] == ["failed", "cancelled", "cancelled"]
        run = s.get(ContinualRun, run_id)
        assert (run.status, run.error["code"]) == ("failed", "out_of_memory")
        # Every hold released: the platform fault and the never-started stages cost nothing.
        assert account_row(s, account).credit_held_micros == held_before
        for job_id in stages:
            assert job_row(s, job_id).cost_micros == 0
            assert _offers(s, job_id) == 0
