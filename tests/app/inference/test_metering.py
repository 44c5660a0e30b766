"""Metering of completions (app/services/inference_metering.py) on PostgreSQL and SQLite: the
free plan's daily allowance under concurrency, a hold settled to what was used, a replayed
settlement, and requests whose API process died."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import event, func, select

from app.db.base import utcnow
from app.db.models import Account, InferenceRequest, LedgerTransaction
from app.db.session import get_sessionmaker
from app.domain.errors import InsufficientCredit, InvalidRequest, QuotaExceeded
from app.domain.ids import random_chars
from app.services import billing, inference_metering
from app.settings import DEFAULT_INFERENCE_PRICES_MICROS_PER_MTOK as PRICES
from crma_core.catalog import CATALOG
from tests.factories import committed_account

pytestmark = pytest.mark.integration

SMALL, LARGE = CATALOG["smollm2-135m-instruct"], CATALOG["mistral-7b-v0.3"]


def request_id() -> str:
    return f"chatcmpl-{random_chars(24)}"


def admit(session, account_id, tokens, *, base=SMALL, limit=1000, rid=None):  # noqa: ANN001, ANN201
    return inference_metering.admit(
        session, account_id=account_id, request_id=rid or request_id(), model=base.id,
        base=base, reserved_tokens=tokens, prices=PRICES, free_tokens_per_day=limit)


def test_reservation_bounds_prompt_and_completion() -> None:
    bound = inference_metering.reservation(prompt_bytes=100, messages=2, max_new_tokens=50)
    assert bound >= 100 + 50 + 2 * inference_metering.TEMPLATE_TOKENS_PER_MESSAGE


def test_free_allowance_is_exact_under_concurrency(pg_url: str) -> None:
    factory = get_sessionmaker(pg_url)
    account = committed_account(factory, plan="free")
    n, barrier, outcomes = 12, threading.Barrier(12), []

    def reserve() -> None:
        session = factory()
        try:
            barrier.wait()
            admit(session, account, 300, limit=1000)
            session.commit()
            outcomes.append("ok")
        except QuotaExceeded as error:
            session.rollback()
            outcomes.append(error.headers["x-quota-tokens-remaining"])
        finally:
            session.close()

    threads = [threading.Thread(target=reserve) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("ok") == 3  # 3 x 300 <= 1000 < 4 x 300
    assert set(outcomes) - {"ok"} == {"100"}


def test_a_plan_the_caller_knows_spares_the_query_and_is_what_the_row_records(
        pg_url: str) -> None:
    """The API passes its principal's plan; the admission then reads no account row, and
    the request is admitted (and later settled) under that plan."""
    factory = get_sessionmaker(pg_url)
    account = committed_account(factory, plan="pro", credit_micros=1_000_000)
    with factory() as session:
        statements: list[str] = []
        listen = session.connection()
        event.listen(listen, "before_cursor_execute",
                     lambda *args: statements.append(args[2]))
        admitted = inference_metering.admit(
            session, account_id=account, plan="pro", request_id=request_id(), model=SMALL.id,
            base=SMALL, reserved_tokens=100, prices=PRICES, free_tokens_per_day=1000)
        assert admitted.plan == "pro" and admitted.hold_micros > 0
        assert not any(s.lstrip().upper().startswith("SELECT") and "accounts" in s
                       for s in statements), statements
        assert session.get(InferenceRequest, admitted.request_id).plan == "pro"
        session.rollback()


def test_free_settlement_gives_back_the_unused_reservation(db_url: str) -> None:
    factory = get_sessionmaker(db_url)
    account = committed_account(factory, plan="free")
    with factory() as session:
        first = admit(session, account, 600)
        assert first.allowance.remaining == 400 and first.hold_micros == 0
        with pytest.raises(QuotaExceeded) as spent:
            admit(session, account, 500)
        assert spent.value.retry_after_s >= 1
        inference_metering.settle(session, request_id=first.request_id, prompt_tokens=30,
                                  completion_tokens=20, status="completed", prices=PRICES)
        assert admit(session, account, 500).allowance.remaining == 1000 - 50 - 500
        with pytest.raises(InvalidRequest) as plan:
            admit(session, account, 10, base=LARGE)
        assert plan.value.code == "model_not_available_on_plan"
        session.rollback()


def test_pro_hold_settles_to_the_tokens_used_once(db_url: str) -> None:
    factory = get_sessionmaker(db_url)
    account = committed_account(factory, plan="pro", credit_micros=1_000_000)
    with factory() as session:
        admitted = admit(session, account, 10_000, base=LARGE)
        price = PRICES[LARGE.id]
        assert admitted.hold_micros == -(-10_000 * price // 1_000_000)
        used = inference_metering.settle(session, request_id=admitted.request_id,
                                         prompt_tokens=700, completion_tokens=300,
                                         status="completed", prices=PRICES)
        assert used.cost_micros == -(-1_000 * price // 1_000_000)
        again = inference_metering.settle(session, request_id=admitted.request_id,
                                          prompt_tokens=9_000, completion_tokens=0,
                                          status="completed", prices=PRICES)
        assert again is None
        session.commit()
        row = session.get(Account, account)
        assert row.credit_available_micros == 1_000_000 - used.cost_micros
        assert row.credit_held_micros == 0
        assert billing.reconcile(session, account).ok
        postings = session.scalar(select(func.count()).select_from(LedgerTransaction).where(
            LedgerTransaction.source_id == admitted.request_id))
        assert postings == 3  # hold, capture, release: nothing twice


def test_a_request_holds_settlement_posts_each_leg_once(db_url: str) -> None:
    """billing.settle_request_hold (one statement on PostgreSQL): capture and release posted
    once each with the balances moved by them; replayed, or with one leg posted already,
    only what is missing is posted and moved."""
    factory = get_sessionmaker(db_url)
    account = committed_account(factory, plan="pro", credit_micros=1_000_000)
    with factory() as session:
        source = request_id()
        billing.place_hold(session, account_id=account, source_id=source, amount_micros=900)
        billing.settle_request_hold(session, source_id=source, account_id=account,
                                    hold_micros=900, capture_micros=5_000)  # capped at the hold
        billing.settle_request_hold(session, source_id=source, account_id=account,
                                    hold_micros=900, capture_micros=100)  # a replay
        session.commit()
        row = session.get(Account, account)
        assert (row.credit_available_micros, row.credit_held_micros) == (1_000_000 - 900, 0)
        assert billing.reconcile(session, account).ok

        other = request_id()
        billing.place_hold(session, account_id=account, source_id=other, amount_micros=500)
        billing._settle_leg(session, other, account, billing.CAPTURE, 200, billing.REVENUE)
        billing.settle_request_hold(session, source_id=other, account_id=account,
                                    hold_micros=500, capture_micros=200)
        session.commit()
        session.refresh(row)
        assert (row.credit_available_micros, row.credit_held_micros) == (1_000_000 - 1_100, 0)
        assert billing.reconcile(session, account).ok
        postings = session.scalars(select(LedgerTransaction.kind).where(
            LedgerTransaction.source_id.in_([source, other]))).all()
        assert sorted(postings) == sorted(["hold", "capture", "release"] * 2)


def test_pro_without_enough_credit_holds_nothing(db_url: str) -> None:
    factory = get_sessionmaker(db_url)
    account = committed_account(factory, plan="pro", credit_micros=1)
    with factory() as session:
        with pytest.raises(InsufficientCredit) as refused:
            admit(session, account, 1_000_000, base=LARGE)
        assert "max_tokens" in refused.value.message
        session.rollback()
        assert session.get(Account, account).credit_held_micros == 0


def test_requests_left_running_expire_free_of_charge(db_url: str) -> None:
    factory = get_sessionmaker(db_url)
    account = committed_account(factory, plan="pro", credit_micros=1_000_000)
    with factory() as session:
        old = admit(session, account, 5_000, base=LARGE)
        fresh = admit(session, account, 5_000, base=LARGE)
        session.get(InferenceRequest, old.request_id).created_at = utcnow() - timedelta(hours=2)
        session.commit()
        assert inference_metering.expire_stale(session, older_than_s=3600, prices=PRICES) == 1
        session.commit()
        assert session.get(InferenceRequest, old.request_id).status == "expired"
        assert session.get(InferenceRequest, fresh.request_id).status == "running"
        account_row = session.get(Account, account)
        session.refresh(account_row)
        assert account_row.credit_held_micros == fresh.hold_micros
        assert account_row.credit_available_micros == 1_000_000 - fresh.hold_micros
