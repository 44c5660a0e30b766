"""Free-tier quota and plan rules, on PostgreSQL and on SQLite (dev mode)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from app.db.models import Account
from app.db.session import get_sessionmaker
from app.domain.errors import InvalidRequest, QuotaExceeded
from app.services import accounts, admission, quotas
from tests.billing_support import admit, free_runs
from tests.factories import TEST_SETTINGS

NOON = datetime(2031, 5, 6, 12, 0, tzinfo=UTC)


def admit_free(session: Session, make_job, account_id: str, now: datetime,
               model: str = "tinyllama-1.1b-chat"):
    job = make_job(session, account_id=account_id)
    return admit(session, account_id=account_id, model=model, estimated_tokens=1000,
                 source_id=job.id, now=now)


def check_daily_quota(session: Session, make_job, account_id: str) -> None:
    remaining = [admit_free(session, make_job, account_id, NOON).quota.remaining for _ in range(3)]
    assert remaining == [2, 1, 0]
    with pytest.raises(QuotaExceeded) as info:
        admit_free(session, make_job, account_id, NOON)
    error = info.value
    assert error.status_code == 429 and error.code == "quota_exceeded"
    assert error.retry_after_s == 12 * 3600
    assert error.headers["Retry-After"] == str(12 * 3600)
    assert error.headers["x-quota-runs-remaining"] == "0"
    assert error.headers["x-quota-runs-reset"] == str(int((NOON + timedelta(hours=12)).timestamp()))
    # The next UTC day starts over.
    tomorrow = NOON + timedelta(days=1)
    assert free_runs(session, account_id=account_id, now=tomorrow).remaining == 3
    assert admit_free(session, make_job, account_id, tomorrow).quota.remaining == 2
    assert session.get(Account, account_id, populate_existing=True).runs_used == 1


def test_three_runs_per_utc_day_postgres(pg_session, make_account, make_job) -> None:
    check_daily_quota(pg_session, make_job, make_account("free"))


def test_three_runs_per_utc_day_sqlite(sqlite_url, make_job) -> None:
    with get_sessionmaker(sqlite_url)() as session:
        account, _ = accounts.create_account(session, name="dev", plan="free", pepper="")
        check_daily_quota(session, make_job, account.id)


def test_rollback_gives_the_run_back(pg_factory, make_account, make_job) -> None:
    account_id = make_account("free")
    with pg_factory() as session:
        admit_free(session, make_job, account_id, NOON)
        session.rollback()
    with pg_factory() as session:
        assert free_runs(session, account_id=account_id, now=NOON).remaining == 3


def test_plan_rules(pg_session, make_account, make_job) -> None:
    free = make_account("free")
    with pytest.raises(InvalidRequest) as info:
        admit_free(pg_session, make_job, free, NOON, model="mistral-7b-v0.3")
    assert info.value.code == "model_not_available_on_plan" and info.value.param == "model"
    with pytest.raises(InvalidRequest) as info:
        admit_free(pg_session, make_job, free, NOON, model="gpt-17")
    assert info.value.code == "model_not_found"
    assert free_runs(pg_session, account_id=free, now=NOON).remaining == 3
    pro = make_account("pro")
    assert free_runs(pg_session, account_id=pro) is None
    assert quotas.running_limit("free") == quotas.FREE_RUNNING_LIMIT == 1
    assert quotas.running_limit("pro") is None
    with pytest.raises(InvalidRequest) as info:
        admission.quote(plan="pro", model="mistral-7b-v0.3", estimated_tokens=10,
                        max_cost_micros=0, settings=TEST_SETTINGS)
    assert info.value.code == "max_cost_too_low"


def test_preview_reserves_nothing(pg_session, make_account) -> None:
    free = make_account("free")
    ok = admission.preview(pg_session, account_id=free, model="tinyllama-1.1b-chat",
                           estimated_tokens=[1000, 1000, 1000], now=NOON, settings=TEST_SETTINGS)
    assert ok.allowed and ok.quota.remaining == 3
    too_many = admission.preview(pg_session, account_id=free, model="tinyllama-1.1b-chat",
                                 estimated_tokens=[1000] * 4, now=NOON, settings=TEST_SETTINGS)
    assert not too_many.allowed and too_many.reason == "quota_exceeded"
    wrong_model = admission.preview(pg_session, account_id=free, model="gemma-2-2b-it",
                                    estimated_tokens=[1000], settings=TEST_SETTINGS)
    assert not wrong_model.allowed and wrong_model.reason == "model_not_available_on_plan"
    pro = make_account("pro", credit_micros=1_000_000)
    fits = admission.preview(pg_session, account_id=pro, model="mistral-7b-v0.3",
                             estimated_tokens=[2_000_000], settings=TEST_SETTINGS)
    assert fits.allowed and fits.terms.hold_micros == 1_000_000
    short = admission.preview(pg_session, account_id=pro, model="mistral-7b-v0.3",
                              estimated_tokens=[2_000_001], settings=TEST_SETTINGS)
    assert not short.allowed and short.reason == "insufficient_credit"
    capped = admission.preview(pg_session, account_id=pro, model="mistral-7b-v0.3",
                               estimated_tokens=[9_000_000], max_cost_micros=500_000,
                               settings=TEST_SETTINGS)
    assert capped.allowed and capped.terms.token_budget == 1_000_000
    assert pg_session.get(Account, pro, populate_existing=True).credit_held_micros == 0
