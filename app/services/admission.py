"""Admission: may this account start a run of `estimated_tokens` on `model`, and on what
terms. `reserve` reserves (a free run, or a credit hold) for the job about to be inserted
with those terms (app/services/job_creation.py insert_job); `preview` answers the same question
for the estimate endpoints without reserving anything.

Plans:
- free: free-tier models only; one run of today's quota per job (a continual-run stage is a
  job); no money moves (hold 0); the job's token_budget is `free_max_tokens_per_run`.
- pro: any priced model; a hold of min(price of the estimate, max_cost), and a token_budget
  of what the hold buys: training stops at the budget (and delivers the adapter trained so
  far), so the capture at the end, the price of the trained tokens, never exceeds the hold.
  An exact estimate (app/services/tokens.py) is never cut by its own budget; max_cost below
  the estimate's price caps the job (`capped_by`, and an event at creation)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Account
from app.domain.errors import InvalidRequest, NotFound
from app.domain.pricing import format_usd, price_micros, price_per_mtok, tokens_for_budget
from app.services import billing, events, quotas
from app.services.quotas import QuotaSnapshot
from app.settings import Settings


# Built once (Core on the table): runs on every job creation without a plan already read.
_PLAN = select(Account.__table__.c.plan).where(Account.__table__.c.id == bindparam("b_id"))


@dataclass(frozen=True)
class Admission:
    hold_micros: int
    token_budget: int | None
    quota: QuotaSnapshot | None  # free plan: the quota after this reservation


@dataclass(frozen=True)
class Terms:
    """What admission would decide, computed without reserving anything."""

    plan: str
    hold_micros: int
    token_budget: int | None
    price_micros: int  # list price of the estimate (what a pro account would pay in full)


def reserve(
    session: Session,
    *,
    account_id: str,
    model: str,
    estimated_tokens: int,
    source_id: str,
    settings: Settings,
    max_cost_micros: int | None = None,
    now: datetime | None = None,
    plan: str | None = None,
) -> Admission:
    """Reserve what a new job needs, inside the caller's creating transaction, which then
    inserts the job (source_id = its id) with the returned terms; the caller's rollback
    undoes everything on an error.

    Raises InvalidRequest(`model_not_available_on_plan` / `model_not_found` /
    `max_cost_too_low`), NotFound (no such account), QuotaExceeded (429, Retry-After to the
    next UTC midnight, quota headers) or InsufficientCredit (402). `plan`: the account's
    plan if the caller has just read it (else it is looked up)."""
    plan = plan or _plan(session, account_id)
    terms = quote(plan=plan, model=model, estimated_tokens=estimated_tokens,
                  max_cost_micros=max_cost_micros, settings=settings)
    quota = None
    if plan == "free":
        quota = quotas.reserve_runs(session, account_id=account_id, runs=1, now=now,
                                    runs_per_day=settings.free_runs_per_day)
    elif terms.hold_micros > 0:
        billing.place_hold(
            session, account_id=account_id, source_id=source_id, amount_micros=terms.hold_micros,
            memo=f"hold {source_id} ({model}, {estimated_tokens} tokens)",
        )
    return Admission(hold_micros=terms.hold_micros, token_budget=terms.token_budget, quota=quota)


def quote(
    *, plan: str, model: str, estimated_tokens: int, settings: Settings,
    max_cost_micros: int | None = None,
) -> Terms:
    """The terms of a run on `plan` (pure: no database). Raises InvalidRequest when the plan
    cannot run the model at all or max_cost buys no tokens."""
    from crma_core.catalog import CATALOG

    if estimated_tokens < 0:
        raise ValueError("estimated_tokens must be >= 0")
    entry = CATALOG.get(model)
    if entry is None:
        raise InvalidRequest(
            f"The model {model!r} does not exist.", code="model_not_found", param="model"
        )
    prices = settings.prices_micros_per_mtok
    price = price_micros(model, estimated_tokens, prices=prices)
    if plan == "free":
        if not entry.free_tier:
            raise InvalidRequest(
                f"The model {model!r} is not available on the free plan.",
                code="model_not_available_on_plan",
                param="model",
            )
        return Terms(plan=plan, hold_micros=0, token_budget=settings.free_max_tokens_per_run,
                     price_micros=price)
    token_budget = None
    hold = price
    if max_cost_micros is not None:
        if max_cost_micros < 0:
            raise InvalidRequest("max_cost must not be negative.", param="max_cost")
        hold = min(price, max_cost_micros)
    if price_per_mtok(model, prices=prices) > 0:
        token_budget = tokens_for_budget(model, hold, prices=prices)
        if token_budget < 1 and max_cost_micros is not None:
            raise InvalidRequest(
                f"max_cost ${format_usd(max_cost_micros)} does not buy a single token of "
                f"{model}.",
                code="max_cost_too_low",
                param="max_cost",
            )
    return Terms(plan=plan, hold_micros=hold, token_budget=token_budget, price_micros=price)


def cap_reason(*, estimated_tokens: int, token_budget: int | None,
               max_cost_micros: int | None) -> str | None:
    """What stops a job before its estimate, if anything: "max_cost" or "free_plan" (the
    free plan's tokens per run)."""
    if token_budget is None or token_budget >= estimated_tokens:
        return None
    return "max_cost" if max_cost_micros is not None else "free_plan"


def record_cap(session: Session, *, job_id: str, estimated_tokens: int,
               token_budget: int | None, max_cost_micros: int | None) -> str | None:
    """The event that tells a new job's owner it will stop before its estimate (when it
    will); returns the cap's reason."""
    reason = cap_reason(estimated_tokens=estimated_tokens, token_budget=token_budget,
                        max_cost_micros=max_cost_micros)
    if reason is None:
        return None
    why = (f"max_cost ${format_usd(max_cost_micros or 0)} buys {token_budget:,}"
           if reason == "max_cost" else
           f"The free plan trains at most {token_budget:,} tokens per run")
    events.record_event(
        session, job_id=job_id, type="message", level="warn", dedupe_key="token_cap",
        data={"capped_by": reason, "token_budget": token_budget,
              "estimated_tokens": estimated_tokens},
        message=f"{why} of the {estimated_tokens:,} trained tokens this job is estimated to "
                "need: training stops there and the adapter trained so far is published.")
    return reason


@dataclass(frozen=True)
class Preview:
    plan: str
    allowed: bool
    reason: str | None  # error code when not allowed
    message: str | None
    terms: Terms | None
    quota: QuotaSnapshot | None  # free plan: the quota now (nothing reserved)
    available_micros: int


def preview(
    session: Session,
    *,
    account_id: str,
    model: str,
    estimated_tokens: list[int],
    settings: Settings,
    max_cost_micros: int | None = None,
    now: datetime | None = None,
) -> Preview:
    """Would `reserve` accept one job per entry of `estimated_tokens` (a continual run has one
    per stage) right now? Reads only; a concurrent create may still change the answer."""
    now = now or utcnow()
    account = session.execute(
        select(Account.plan, Account.credit_available_micros).where(Account.id == account_id)
    ).one_or_none()
    if account is None:
        raise NotFound(f"No account {account_id!r}")
    quota = quotas.snapshot(session, account_id=account_id, now=now,
                            runs_per_day=settings.free_runs_per_day)

    def answer(allowed: bool, reason: str | None, message: str | None,
               terms: Terms | None) -> Preview:
        return Preview(plan=account.plan, allowed=allowed, reason=reason, message=message,
                       terms=terms, quota=quota, available_micros=account.credit_available_micros)

    try:
        stage_terms = [
            quote(plan=account.plan, model=model, estimated_tokens=tokens,
                  max_cost_micros=max_cost_micros, settings=settings)
            for tokens in estimated_tokens
        ]
    except InvalidRequest as error:
        if error.code != "model_not_available_on_plan":
            raise
        return answer(False, error.code, error.message, None)
    terms = Terms(
        plan=account.plan,
        hold_micros=sum(t.hold_micros for t in stage_terms),
        token_budget=stage_terms[0].token_budget if stage_terms else None,
        price_micros=sum(t.price_micros for t in stage_terms),
    )
    runs = len(estimated_tokens)
    if quota is not None and quota.remaining < runs:
        return answer(False, "quota_exceeded", (
            f"The free plan allows {quota.limit} runs per UTC day; this needs {runs} and "
            f"{quota.remaining} remain."), terms)
    if account.plan != "free" and terms.hold_micros > account.credit_available_micros:
        return answer(False, "insufficient_credit", (
            f"This needs a hold of ${format_usd(terms.hold_micros)} but only "
            f"${format_usd(account.credit_available_micros)} is available."), terms)
    return answer(True, None, None, terms)


def _plan(session: Session, account_id: str) -> str:
    plan = session.execute(_PLAN, {"b_id": account_id}).scalar_one_or_none()
    if plan is None:
        raise NotFound(f"No account {account_id!r}")
    return plan


@dataclass(frozen=True)
class StageEstimate:
    name: str | None
    n_epochs: int
    estimated_tokens: int
    trained_tokens: int  # capped by the token budget
    token_budget: int | None
    expected_duration_s: int


@dataclass(frozen=True)
class Estimate:
    model: str
    stages: list[StageEstimate]
    preview: Preview
    price_micros: int  # held and at most charged (0 on the free plan)
    list_price_micros: int

    @property
    def estimated_tokens(self) -> int:
        return sum(s.estimated_tokens for s in self.stages)

    @property
    def trained_tokens(self) -> int:
        return sum(s.trained_tokens for s in self.stages)

    @property
    def expected_duration_s(self) -> int:
        return sum(s.expected_duration_s for s in self.stages)


def estimate(
    session: Session,
    *,
    account_id: str,
    model: str,
    stages: list[tuple[str | None, int, int]] | list[tuple[str | None, int, int, float]],
    settings: Settings,
    max_cost_micros: int | None = None,
    now: datetime | None = None,
) -> Estimate:
    """What a job (one stage) or a continual run (one stage per domain) would train, cost
    and take, and whether it would be admitted now. `stages` holds (name, n_epochs,
    estimated_tokens[, duration_factor]): the duration is the trained tokens at the model's
    throughput, times the factor (packing: app/services/training_work.py). Reserves
    nothing."""
    from app.domain.pricing import expected_duration_s

    seen = preview(session, account_id=account_id, model=model,
                   estimated_tokens=[stage[2] for stage in stages],
                   max_cost_micros=max_cost_micros, now=now, settings=settings)
    budget = seen.terms.token_budget if seen.terms else None
    if seen.terms is None and seen.quota is not None:  # model not on the free plan
        budget = settings.free_max_tokens_per_run
    rows = []
    for name, epochs, tokens, *factor in stages:
        trained = tokens if budget is None else min(tokens, budget)
        work = math.ceil(trained * factor[0]) if factor else trained
        rows.append(StageEstimate(name, epochs, tokens, trained, budget,
                                  expected_duration_s(
                                      model, work, throughput=settings.throughput_tokens_per_s)))
    list_price = price_micros(model, sum(stage[2] for stage in stages),
                              prices=settings.prices_micros_per_mtok)
    held = seen.terms.hold_micros if seen.terms else 0
    return Estimate(model=model, stages=rows, preview=seen, price_micros=held,
                    list_price_micros=list_price)
