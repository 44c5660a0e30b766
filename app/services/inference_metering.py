"""Metering of completions: admission before anything generated reaches the client (the API
starts the engine alongside it, app/api/inference.py), settlement after.

Tokens (prompt + completion) are priced per 1M from `Settings.inference_prices_micros_per_mtok`
by base model (a fine-tuned model costs what its base does).

- **pro: hold, then settle, per request.** Admission holds the price of an upper bound of
  the request's tokens (available -> held, the same conditional UPDATE as a job's hold, so
  concurrent requests never overdraw; 402 when the credit does not cover it). Settlement
  captures the price of the tokens the engine reported (held -> revenue, capped at the hold)
  and releases the rest. Postings are keyed by the request id (`chatcmpl-...`): a replayed
  settlement inserts nothing.
- **free: a daily token allowance** on the free-tier models, reserved like the run quota:
  one INSERT ... ON CONFLICT DO UPDATE ... WHERE used + n <= limit (atomic under
  concurrency), 429 with Retry-After to the next UTC midnight when it does not fit;
  settlement replaces the reservation by the tokens used.

The upper bound is the prompt's UTF-8 bytes (no tokenizer here: a byte-level or
byte-fallback tokenizer never makes more tokens than bytes) plus the chat template's tokens
per message, plus `max_tokens` (or the model's max_output_tokens). A request's actual usage
is at most its reservation, so a hold always covers it.

A request whose API process died stays `running`; `expire_stale` settles it with nothing
used (its hold released, its reservation given back). Services never commit.

On PostgreSQL the API commits admissions asynchronously (on connections of their own with
`synchronous_commit = off`, app/main.py's `admissions`): an admission is on every request's
path before the first token, and its WAL flush was most of the API's added latency (~2.6 ms
of ~7, bench/inference_api_hop.py). Nothing becomes inconsistent: PostgreSQL keeps commit
order, so a settlement that is durable implies its admission is; only a crash of the
database server itself can lose the admissions of its last moments (wal_writer_delay, 200 ms
by default), and such a request is then neither held nor billed (its settlement finds no
row). Settlements, which charge, commit durably."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import bindparam, func, insert, literal, select, text, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Account, InferenceAllowance, InferenceRequest
from app.domain.errors import InsufficientCredit, InvalidRequest, NotFound, QuotaExceeded
from app.domain.pricing import format_usd, price_micros
from app.services import billing, quotas
from crma_core.catalog import CatalogModel

# Tokens a chat template adds around one message (role markers, separators), and around the
# whole conversation (a default system prompt, the assistant header): generous on purpose.
TEMPLATE_TOKENS_PER_MESSAGE = 8
TEMPLATE_TOKENS_PER_REQUEST = 64


def reservation(*, prompt_bytes: int, messages: int, max_new_tokens: int) -> int:
    """Upper bound of a request's prompt + completion tokens (see the module docstring)."""
    return (prompt_bytes + TEMPLATE_TOKENS_PER_MESSAGE * messages + TEMPLATE_TOKENS_PER_REQUEST
            + max_new_tokens)


@dataclass(frozen=True)
class AllowanceSnapshot:
    limit: int
    remaining: int
    reset_at: datetime

    def headers(self) -> dict[str, str]:
        return {"x-quota-tokens-limit": str(self.limit),
                "x-quota-tokens-remaining": str(self.remaining),
                "x-quota-tokens-reset": str(int(self.reset_at.timestamp()))}


@dataclass(frozen=True)
class Admission:
    request_id: str
    plan: str
    reserved_tokens: int
    hold_micros: int
    allowance: AllowanceSnapshot | None


def _plan(session: Session, account_id: str) -> str:
    # Core on the session's connection: the ORM's execution path costs more CPU than the
    # query on every request (bench/inference_api_hop.py).
    plan = session.connection().execute(
        select(Account.plan).where(Account.id == account_id)).scalar_one_or_none()
    if plan is None:
        raise NotFound(f"No account {account_id!r}")
    return plan


def admit(session: Session, *, account_id: str, request_id: str, model: str,
          base: CatalogModel, reserved_tokens: int, prices: Mapping[str, int],
          free_tokens_per_day: int, plan: str | None = None,
          now: datetime | None = None) -> Admission:
    """Reserve what the request may use and record it as `running` (see the module
    docstring). `plan`: the account's plan as the caller knows it (the API: its
    authenticated principal's, cached for seconds), which spares a query; None reads it.
    Either is safe: each plan's reservation is atomic and the row records the plan it was
    admitted under, which its settlement follows, so a plan changed a moment ago only means
    this request still gets the old plan's terms. Raises InvalidRequest
    (model_not_available_on_plan), QuotaExceeded (429) or InsufficientCredit (402)."""
    now = now or utcnow()
    plan = plan or _plan(session, account_id)
    hold, allowance, day = 0, None, None
    if plan == "free":
        if not base.free_tier:
            raise InvalidRequest(f"The model {model!r} (base {base.id}) is not available on "
                                 "the free plan.", param="model",
                                 code="model_not_available_on_plan")
        day = now.astimezone(UTC).date()
        allowance = _reserve_allowance(session, account_id=account_id, day=day,
                                       tokens=reserved_tokens, limit=free_tokens_per_day,
                                       now=now)
    else:
        hold = price_micros(base.id, reserved_tokens, prices=prices)
        if hold > 0:
            try:
                billing.place_hold(session, account_id=account_id, source_id=request_id,
                                   amount_micros=hold, memo=f"inference {model}"[:300])
            except InsufficientCredit:
                available = billing.balance(session, account_id=account_id).available_micros
                raise InsufficientCredit(
                    f"This request may use up to {reserved_tokens} tokens (prompt + "
                    f"max_tokens), ${format_usd(hold)} at {base.id}'s price, and "
                    f"${format_usd(available)} of credit is available. Add credit or lower "
                    "max_tokens.") from None
    # A Core INSERT (no unit of work to flush): the row is all admission needs.
    session.connection().execute(insert(InferenceRequest.__table__).values(
        id=request_id, account_id=account_id, model=model[:300], base_model=base.id, plan=plan,
        status="running", reserved_tokens=reserved_tokens, hold_micros=hold,
        prompt_tokens=0, completion_tokens=0, cost_micros=0, allowance_day=day,
        created_at=now))
    return Admission(request_id=request_id, plan=plan, reserved_tokens=reserved_tokens,
                     hold_micros=hold, allowance=allowance)


def _upsert_reservation(session: Session):  # noqa: ANN202 - a TextClause
    # SET ... WHERE on the conflict: the existing row moves only while it stays in the
    # limit, so concurrent reservations serialise on the row and never pass the limit
    # together. Same text on PostgreSQL and SQLite (>= 3.35 for RETURNING); the casts let
    # asyncpg, which prepares the statement, type the parameters.
    return text(
        "INSERT INTO inference_allowances (account_id, day, tokens_used) "
        "SELECT :account_id, :day, CAST(:tokens AS BIGINT) "
        "WHERE CAST(:tokens AS BIGINT) <= CAST(:limit AS BIGINT) "
        "ON CONFLICT (account_id, day) DO UPDATE "
        "SET tokens_used = inference_allowances.tokens_used + excluded.tokens_used "
        "WHERE inference_allowances.tokens_used + excluded.tokens_used <= CAST(:limit AS BIGINT) "
        "RETURNING tokens_used"
    ).bindparams(bindparam("day", type_=InferenceAllowance.__table__.c.day.type))


def _reserve_allowance(session: Session, *, account_id: str, day: date, tokens: int,
                       limit: int, now: datetime) -> AllowanceSnapshot:
    used = session.execute(_upsert_reservation(session), {
        "account_id": account_id, "day": day, "tokens": tokens, "limit": limit,
    }).scalar_one_or_none()
    reset = quotas.next_reset(now)
    if used is not None:
        return AllowanceSnapshot(limit=limit, remaining=max(0, limit - used), reset_at=reset)
    current = allowance(session, account_id=account_id, limit=limit, now=now)
    remaining = current.remaining if current else 0
    wait = quotas.retry_after_s(now)
    exhausted = AllowanceSnapshot(limit=limit, remaining=remaining, reset_at=reset)
    raise QuotaExceeded(
        f"The free plan allows {limit} inference tokens (prompt + completion) per UTC day; "
        f"this request may use up to {tokens} (its prompt and max_tokens) and {remaining} "
        f"remain. The allowance resets at {reset.isoformat()}; a lower max_tokens may fit.",
        code="inference_quota_exceeded", retry_after_s=wait,
        headers={"Retry-After": str(wait), **exhausted.headers()})


def allowance(session: Session, *, account_id: str, limit: int,
              now: datetime | None = None) -> AllowanceSnapshot | None:
    """The free plan's token allowance today (None for a paid plan). Reads only."""
    now = now or utcnow()
    if _plan(session, account_id) != "free":
        return None
    used = session.scalar(select(InferenceAllowance.tokens_used).where(
        InferenceAllowance.account_id == account_id,
        InferenceAllowance.day == now.astimezone(UTC).date())) or 0
    return AllowanceSnapshot(limit=limit, remaining=max(0, limit - used),
                             reset_at=quotas.next_reset(now))


@dataclass(frozen=True)
class Settled:
    cost_micros: int
    status: str


def settle(session: Session, *, request_id: str, prompt_tokens: int, completion_tokens: int,
           status: str, prices: Mapping[str, int], domain: str | None = None,
           now: datetime | None = None) -> Settled | None:
    """Charge what the request used and give back the rest of its reservation, once: a
    request already settled returns None and moves nothing. `status`: completed, failed
    (nothing is charged unless tokens are given), cancelled (the client went away: what was
    generated is charged) or expired."""
    now = now or utcnow()
    requests = InferenceRequest.__table__
    # Core on the session's connection, as in admission: the ORM's bulk-update path cost
    # more CPU than the statement (settlements run on the API process).
    row = session.connection().execute(
        update(requests)
        .where(requests.c.id == request_id, requests.c.status == "running")
        .values(status=status, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                domain=domain, finished_at=now)
        .returning(requests.c.account_id, requests.c.plan, requests.c.base_model,
                   requests.c.reserved_tokens, requests.c.hold_micros, requests.c.allowance_day)
    ).one_or_none()
    if row is None:
        return None
    used = prompt_tokens + completion_tokens
    cost = 0
    if row.plan == "free":
        if row.allowance_day is not None and used != row.reserved_tokens:
            table = InferenceAllowance.__table__
            # Never below 0 (an expired request's day may have been reset by then).
            larger = func.max if session.get_bind().dialect.name == "sqlite" else func.greatest
            session.execute(
                update(table)
                .where(table.c.account_id == row.account_id, table.c.day == row.allowance_day)
                .values(tokens_used=larger(literal(0),
                                           table.c.tokens_used + (used - row.reserved_tokens))))
    elif row.hold_micros > 0:
        cost = min(price_micros(row.base_model, used, prices=prices), row.hold_micros)
        billing.settle_request_hold(session, source_id=request_id, account_id=row.account_id,
                                    hold_micros=row.hold_micros, capture_micros=cost)
    session.connection().execute(update(requests).where(requests.c.id == request_id)
                                 .values(cost_micros=cost))
    return Settled(cost_micros=cost, status=status)


def expire_stale(session: Session, *, older_than_s: float, prices: Mapping[str, int],
                 now: datetime | None = None, limit: int = 100) -> int:
    """Settle requests left `running` for `older_than_s` (their API process died) as
    `expired`, charging nothing; how many."""
    now = now or utcnow()
    stale = session.scalars(
        select(InferenceRequest.id)
        .where(InferenceRequest.status == "running",
               InferenceRequest.created_at < now - timedelta(seconds=older_than_s))
        .limit(limit)).all()
    count = 0
    for request_id in stale:
        if settle(session, request_id=request_id, prompt_tokens=0, completion_tokens=0,
                  status="expired", prices=prices, now=now):
            count += 1
    return count


@dataclass(frozen=True)
class InferenceUsageRow:
    day: date
    model: str  # the base model (what prices the tokens)
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int


def usage(session: Session, *, account_id: str, start: date, end: date) -> list[InferenceUsageRow]:
    """Settled requests' tokens and cost per UTC day (of their start) and base model."""
    lower = datetime.combine(start, time(), tzinfo=UTC)
    upper = datetime.combine(end, time.max, tzinfo=UTC)
    rows = session.execute(
        select(InferenceRequest.created_at, InferenceRequest.base_model,
               InferenceRequest.prompt_tokens, InferenceRequest.completion_tokens,
               InferenceRequest.cost_micros)
        .where(InferenceRequest.account_id == account_id,
               InferenceRequest.status != "running",
               InferenceRequest.created_at >= lower, InferenceRequest.created_at <= upper)
    ).all()
    buckets: dict[tuple[date, str], list[int]] = {}
    for created_at, model, prompt, completion, cost in rows:
        moment = created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC)
        bucket = buckets.setdefault((moment.astimezone(UTC).date(), model), [0, 0, 0, 0])
        bucket[0] += 1
        bucket[1] += int(prompt)
        bucket[2] += int(completion)
        bucket[3] += int(cost)
    return [InferenceUsageRow(day=day, model=model, requests=n, prompt_tokens=p,
                              completion_tokens=c, cost_micros=cost)
            for (day, model), (n, p, c, cost) in sorted(buckets.items())]
