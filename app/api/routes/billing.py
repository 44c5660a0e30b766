"""Usage and billing: GET /v1/usage, /v1/billing/balance, /v1/billing/ledger."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BeforeValidator

from app.api.deps import PrincipalDep, SessionDep, SettingsDep
from app.domain.errors import InvalidRequest
from app.domain.pricing import format_usd
from app.schemas.billing import (
    BalancePublic,
    FreeRunsPublic,
    InferenceUsageBucketPublic,
    LedgerEntryPublic,
    LedgerList,
    LedgerTransactionPublic,
    UsageBucketPublic,
    UsageList,
)
from app.schemas.common import AfterParam, LimitParam, error_responses
from app.services import billing, inference_metering, quotas

router = APIRouter(tags=["billing"])


def _iso_date(value: object) -> object:
    # pydantic would read "0" or "1700000000" as a Unix timestamp: the schema says YYYY-MM-DD.
    if isinstance(value, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("must be a date in YYYY-MM-DD form")
    return value


IsoDate = Annotated[date, BeforeValidator(_iso_date)]

DEFAULT_USAGE_DAYS = 30
MAX_USAGE_DAYS = 366


@router.get("/v1/billing/balance", response_model=BalancePublic, responses=error_responses(401))
def get_balance(
    principal: PrincipalDep, session: SessionDep, settings: SettingsDep
) -> BalancePublic:
    """Credit available for new jobs and credit held for queued/running ones."""
    current = billing.balance(session, account_id=principal.account_id)
    quota = quotas.snapshot(session, account_id=principal.account_id,
                            runs_per_day=settings.free_runs_per_day)
    return BalancePublic(
        account_id=current.account_id, plan=current.plan,
        available=format_usd(current.available_micros), available_micros=current.available_micros,
        held=format_usd(current.held_micros), held_micros=current.held_micros,
        free_runs=free_runs_public(quota),
    )


@router.get("/v1/billing/ledger", response_model=LedgerList, responses=error_responses(400, 401))
def list_ledger(
    principal: PrincipalDep, session: SessionDep, after: AfterParam = None, limit: LimitParam = 20
) -> LedgerList:
    """Ledger transactions (credit, hold, capture, release), newest first, with their entries."""
    rows, has_more = billing.list_transactions(
        session, account_id=principal.account_id, after=after, limit=limit
    )
    data = [
        LedgerTransactionPublic(
            id=tx.id, created_at=unix(tx.created_at), kind=tx.kind,
            source_id=tx.source_id, memo=tx.memo,
            entries=[
                LedgerEntryPublic(
                    account="self" if e.account_id == principal.account_id else "platform",
                    bucket=e.bucket, amount=format_usd(e.amount_micros),
                    amount_micros=e.amount_micros,
                )
                for e in entries
            ],
        )
        for tx, entries in rows
    ]
    return LedgerList(data=data, has_more=has_more)


@router.get("/v1/usage", response_model=UsageList, responses=error_responses(400, 401))
def get_usage(
    principal: PrincipalDep,
    session: SessionDep,
    start_date: Annotated[IsoDate | None, Query(description=(
        f"First UTC day (YYYY-MM-DD); default 29 days before end_date. A request covers at "
        f"most {MAX_USAGE_DAYS} days: a start_date more than {MAX_USAGE_DAYS - 1} days before "
        f"end_date is a 400."))] = None,
    end_date: Annotated[IsoDate | None, Query(description="Last UTC day, inclusive; "
                                           "default today.")] = None,
) -> UsageList:
    """Training (trained tokens and cost per UTC day and model: jobs and continual-run stages,
    counted on the day they finished) and inference (requests, prompt and completion tokens
    and cost per UTC day and base model). At most 366 days per request (400 `invalid_request_error`
    naming `start_date` beyond that, or when start_date is after end_date)."""
    end = end_date or datetime.now(UTC).date()
    # Near date.min the default window would start before year 1 (OverflowError, a 500).
    start = start_date or end - timedelta(days=min(DEFAULT_USAGE_DAYS - 1, (end - date.min).days))
    if start > end:
        raise InvalidRequest("start_date must not be after end_date.", param="start_date")
    if (end - start).days >= MAX_USAGE_DAYS:
        raise InvalidRequest(f"start_date to end_date spans {(end - start).days + 1} days; at "
                             f"most {MAX_USAGE_DAYS} per request.", param="start_date")
    rows = billing.usage(session, account_id=principal.account_id, start=start, end=end)
    calls = inference_metering.usage(session, account_id=principal.account_id, start=start,
                                     end=end)
    training_cost = sum(r.cost_micros for r in rows)
    inference_cost = sum(r.cost_micros for r in calls)
    return UsageList(
        data=[
            UsageBucketPublic(date=r.day.isoformat(), model=r.model, jobs=r.jobs,
                              trained_tokens=r.trained_tokens, cost=format_usd(r.cost_micros),
                              cost_micros=r.cost_micros)
            for r in rows
        ],
        inference=[
            InferenceUsageBucketPublic(
                date=r.day.isoformat(), model=r.model, requests=r.requests,
                prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens,
                cost=format_usd(r.cost_micros), cost_micros=r.cost_micros)
            for r in calls
        ],
        start_date=start.isoformat(), end_date=end.isoformat(),
        total_trained_tokens=sum(r.trained_tokens for r in rows),
        total_training_cost=format_usd(training_cost),
        total_training_cost_micros=training_cost,
        total_inference_tokens=sum(r.prompt_tokens + r.completion_tokens for r in calls),
        total_inference_cost=format_usd(inference_cost),
        total_inference_cost_micros=inference_cost,
        total_cost=format_usd(training_cost + inference_cost),
        total_cost_micros=training_cost + inference_cost,
    )


def unix(value: datetime) -> int:
    # SQLite hands back naive datetimes; they are UTC.
    return int((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp())


def free_runs_public(quota: quotas.QuotaSnapshot | None) -> FreeRunsPublic | None:
    if quota is None:
        return None
    return FreeRunsPublic(limit=quota.limit, remaining=quota.remaining,
                          reset_at=int(quota.reset_at.timestamp()))
