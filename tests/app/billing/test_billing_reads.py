"""Usage aggregation and estimates at the service level (PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, date, datetime

from app.domain.pricing import expected_duration_s
from app.services import admission, billing
from tests.factories import TEST_SETTINGS, THROUGHPUT


def test_usage_per_utc_day_and_model(pg_session, make_account, make_job) -> None:
    account_id = make_account("pro")
    other = make_account("pro")
    finished = [
        (datetime(2031, 1, 1, 23, 59, tzinfo=UTC), "mistral-7b-v0.3", 1000, 500, "succeeded"),
        (datetime(2031, 1, 1, 1, 0, tzinfo=UTC), "mistral-7b-v0.3", 2000, 1000, "cancelled"),
        (datetime(2031, 1, 1, 2, 0, tzinfo=UTC), "gemma-2-2b-it", 10, 4, "failed"),
        (datetime(2031, 1, 2, 0, 0, tzinfo=UTC), "mistral-7b-v0.3", 7, 3, "succeeded"),
        (datetime(2031, 1, 3, 0, 0, tzinfo=UTC), "mistral-7b-v0.3", 99, 99, "succeeded"),
    ]
    for when, model, tokens, cost, status in finished:
        make_job(pg_session, account_id=account_id, model=model, status=status,
                 finished_at=when, trained_tokens=tokens, cost_micros=cost)
    make_job(pg_session, account_id=account_id, status="running", trained_tokens=5,
             finished_at=None)
    make_job(pg_session, account_id=other, status="succeeded", trained_tokens=5,
             finished_at=datetime(2031, 1, 1, 12, tzinfo=UTC))
    rows = billing.usage(pg_session, account_id=account_id, start=date(2031, 1, 1),
                         end=date(2031, 1, 2))
    assert [(r.day.isoformat(), r.model, r.jobs, r.trained_tokens, r.cost_micros) for r in rows] == [
        ("2031-01-01", "gemma-2-2b-it", 1, 10, 4),
        ("2031-01-01", "mistral-7b-v0.3", 2, 3000, 1500),
        ("2031-01-02", "mistral-7b-v0.3", 1, 7, 3),
    ]


def test_estimate_caps_trained_tokens_by_the_budget(pg_session, make_account) -> None:
    free = make_account("free")
    est = admission.estimate(pg_session, account_id=free, model="tinyllama-1.1b-chat",
                             stages=[("a", 3, 1_500_000), ("b", 3, 2_500_000)],
                             settings=TEST_SETTINGS)
    assert est.preview.allowed and est.price_micros == 0
    assert [s.trained_tokens for s in est.stages] == [1_500_000, 2_000_000]
    assert est.list_price_micros == 800_000  # $0.20 per 1M on 4M tokens
    assert est.expected_duration_s == (
        expected_duration_s("tinyllama-1.1b-chat", 1_500_000, throughput=THROUGHPUT)
        + expected_duration_s("tinyllama-1.1b-chat", 2_000_000, throughput=THROUGHPUT))
    four = admission.estimate(pg_session, account_id=free, model="tinyllama-1.1b-chat",
                              stages=[(str(i), 3, 10) for i in range(4)], settings=TEST_SETTINGS)
    assert not four.preview.allowed and four.preview.reason == "quota_exceeded"

    pro = make_account("pro", credit_micros=600_000)
    capped = admission.estimate(pg_session, account_id=pro, model="mistral-7b-v0.3",
                                stages=[(None, 3, 4_000_000)], max_cost_micros=500_000,
                                settings=TEST_SETTINGS)
    assert capped.preview.allowed and capped.price_micros == 500_000
    assert capped.stages[0].trained_tokens == capped.stages[0].token_budget == 1_000_000
    full = admission.estimate(pg_session, account_id=pro, model="mistral-7b-v0.3",
                              stages=[(None, 3, 4_000_000)], settings=TEST_SETTINGS)
    assert not full.preview.allowed and full.preview.reason == "insufficient_credit"
    assert full.price_micros == 2_000_000
    assert billing.balance(pg_session, account_id=pro).held_micros == 0
