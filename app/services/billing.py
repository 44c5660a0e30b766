"""Prepaid credit as a double-entry ledger (docs/reliability.md, "Money").

Buckets: each account's `available` and `held`; the platform's `funding` (where credit comes
from) and `revenue` (where captures go), with account_id NULL. Every transaction's entries
sum to zero, entries are append-only, and `accounts.credit_available_micros` /
`credit_held_micros` are caches updated in the same database transaction as the entries
(with CHECK >= 0 as the backstop). `reconcile` rebuilds them from the log.

Postings of a job (source_id = job id), each unique by (source_id, kind), so a replayed
settlement inserts nothing and moves no money:
  hold     available -> held      at admission (estimate price, or max_cost if lower)
  capture  held -> revenue        at the end: price of the trained tokens (the job's token
                                  budget is what the hold buys, so it fits in the hold; if
                                  it ever did not, the hold is captured and the job's events
                                  and the log say so); 0 when the job failed through our fault
  release  held -> available      the rest of the hold
Services never commit: the caller's transaction makes a hold or a settlement atomic with
the job's own state change."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time

from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Account, Job, LedgerEntry, LedgerTransaction
from app.domain.errors import InsufficientCredit, NotFound
from app.domain.ids import new_id
from app.domain.job_state import PLATFORM_FAULT_CODES, TERMINAL, is_terminal
from app.domain.pricing import format_usd, price_micros
from app.services import events, quotas

log = logging.getLogger(__name__)

AVAILABLE, HELD, REVENUE, FUNDING = "available", "held", "revenue", "funding"
CREDIT, HOLD, CAPTURE, RELEASE = "credit", "hold", "capture", "release"
# A zero-amount transaction: its unique (source_id, kind) makes a free run's refund happen once.
RUN_REFUND = "run_refund"

# (account_id or None for the platform, bucket, signed amount)
Leg = tuple[str | None, str, int]

# The statements of a job's creation (hold, ledger posting) are built once, here: Core on the
# tables with bind parameters, so an execution reuses the compiled form instead of building
# and cache-keying an expression each time (most of a create's CPU was that).
_accounts = Account.__table__
_transactions = LedgerTransaction.__table__
_amount = bindparam("b_amount")
# The balance check is the WHERE clause, so concurrent holds cannot overdraw (place_hold).
_HOLD = (
    update(_accounts)
    .where(_accounts.c.id == bindparam("b_account_id"),
           _accounts.c.credit_available_micros >= _amount)
    .values(credit_available_micros=_accounts.c.credit_available_micros - _amount,
            credit_held_micros=_accounts.c.credit_held_micros + _amount)
)
_MOVE = (
    update(_accounts)
    .where(_accounts.c.id == bindparam("b_account_id"))
    .values(credit_available_micros=_accounts.c.credit_available_micros + bindparam("b_available"),
            credit_held_micros=_accounts.c.credit_held_micros + bindparam("b_held"))
)
_POST_PG, _POST_SQLITE = (
    insert(_transactions)
    .on_conflict_do_nothing(index_elements=["source_id", "kind"])
    .returning(_transactions.c.id)
    for insert in (pg_insert, sqlite_insert)
)
_ENTRY = LedgerEntry.__table__.insert()
# place_hold on PostgreSQL: the balance move and its ledger posting (the transaction and
# its two legs, available -> held) in one statement, one round trip instead of three. Each
# step reads the previous one's RETURNING, so nothing is posted unless the balance moved,
# and the legs are inserted only with a new transaction; `posted` is NULL when
# (source_id, kind) already existed. The caller's rollback undoes a move without posting.
_HOLD_AND_POST_PG = text("""
    WITH moved AS (
        UPDATE accounts
        SET credit_available_micros = credit_available_micros - :amount,
            credit_held_micros = credit_held_micros + :amount
        WHERE id = :account_id AND credit_available_micros >= :amount
        RETURNING id
    ), posted AS (
        INSERT INTO ledger_transactions (id, account_id, kind, source_id, memo, created_at)
        SELECT :tx_id, id, :kind, :source_id, :memo, :created_at FROM moved
        ON CONFLICT (source_id, kind) DO NOTHING
        RETURNING id
    ), legs AS (
        INSERT INTO ledger_entries (transaction_id, account_id, bucket, amount_micros)
        SELECT posted.id, :account_id, leg.bucket, leg.amount
        FROM posted, (VALUES (:available, -:amount), (:held, :amount)) AS leg (bucket, amount)
    )
    SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM posted) = 1
""")


# settle_request_hold on PostgreSQL: both legs of a request's settlement (capture -> revenue,
# release -> available), their entries and the cached balances, in one statement instead of
# six. Each posting is inserted once per (source_id, kind); the balances move by what was
# posted now, so a replay moves nothing (as _settle_leg twice would).
_CAPTURE_AND_RELEASE_PG = text("""
    WITH posted AS (
        INSERT INTO ledger_transactions (id, account_id, kind, source_id, memo, created_at)
        VALUES (:capture_id, :account_id, :capture, :source_id, :capture_memo, :created_at),
               (:release_id, :account_id, :release, :source_id, :release_memo, :created_at)
        ON CONFLICT (source_id, kind) DO NOTHING
        RETURNING id, kind
    ), legs AS (
        INSERT INTO ledger_entries (transaction_id, account_id, bucket, amount_micros)
        SELECT posted.id, leg.account_id, leg.bucket, leg.amount
        FROM posted JOIN (VALUES
            (CAST(:capture AS VARCHAR), CAST(:account_id AS VARCHAR), CAST(:held AS VARCHAR),
             -CAST(:captured AS BIGINT)),
            (:capture, NULL, :revenue, CAST(:captured AS BIGINT)),
            (:release, :account_id, :held, -CAST(:released AS BIGINT)),
            (:release, :account_id, :available, CAST(:released AS BIGINT))
        ) AS leg (kind, account_id, bucket, amount) ON leg.kind = posted.kind
    ), moved AS (
        UPDATE accounts
        SET credit_held_micros = credit_held_micros - (
                SELECT COALESCE(SUM(CASE WHEN kind = :capture THEN CAST(:captured AS BIGINT)
                                    ELSE CAST(:released AS BIGINT) END), 0) FROM posted),
            credit_available_micros = credit_available_micros + (
                SELECT COALESCE(SUM(CAST(:released AS BIGINT)), 0) FROM posted
                WHERE kind = :release)
        WHERE id = :account_id AND EXISTS (SELECT 1 FROM posted)
    )
    SELECT count(*) FROM posted
""")


def settle_request_hold(session: Session, *, source_id: str, account_id: str, hold_micros: int,
                        capture_micros: int) -> None:
    """Capture `capture_micros` of a hold placed for `source_id` (at most the hold) and
    release the rest: a completion's settlement, whose caller knows the hold (it is on the
    request's row). Idempotent per leg, like `_settle_leg` (which SQLite uses)."""
    captured = min(capture_micros, hold_micros)
    if session.get_bind().dialect.name != "postgresql":
        _settle_leg(session, source_id, account_id, CAPTURE, captured, REVENUE)
        _settle_leg(session, source_id, account_id, RELEASE, hold_micros - captured, AVAILABLE)
        return
    session.execute(_CAPTURE_AND_RELEASE_PG, {
        "capture_id": new_id("ledger_transaction"), "release_id": new_id("ledger_transaction"),
        "account_id": account_id, "source_id": source_id, "created_at": utcnow(),
        "capture": CAPTURE, "release": RELEASE, "capture_memo": _memo(f"{CAPTURE} {source_id}"),
        "release_memo": _memo(f"{RELEASE} {source_id}"), "held": HELD, "revenue": REVENUE,
        "available": AVAILABLE, "captured": captured, "released": hold_micros - captured,
    })


def add_credit(
    session: Session,
    *,
    account_id: str,
    amount_micros: int,
    memo: str | None = None,
    source_id: str | None = None,
) -> LedgerTransaction:
    """Add prepaid credit (funding -> available). `source_id` (e.g. a payment reference)
    makes the grant idempotent: a second call with it returns the first transaction and
    adds nothing. Raises NotFound for an unknown account, ValueError for amount <= 0."""
    if amount_micros <= 0:
        raise ValueError("amount_micros must be positive")
    if session.get(Account, account_id) is None:
        raise NotFound(f"No account {account_id!r}", param="account_id")
    tx_id = new_id("ledger_transaction")
    source = source_id or tx_id
    posted = _post(
        session, tx_id=tx_id, account_id=account_id, kind=CREDIT, source_id=source, memo=memo,
        legs=[(None, FUNDING, -amount_micros), (account_id, AVAILABLE, amount_micros)],
    )
    if posted:
        _move_cached(session, account_id=account_id, available=amount_micros, held=0)
    return session.execute(
        select(LedgerTransaction).where(
            LedgerTransaction.source_id == source, LedgerTransaction.kind == CREDIT
        )
    ).scalar_one()


def place_hold(
    session: Session,
    *,
    account_id: str,
    source_id: str,
    amount_micros: int,
    memo: str | None = None,
) -> None:
    """Move `amount_micros` from available to held for `source_id`, or raise
    InsufficientCredit (402). The balance check is the conditional UPDATE itself, so
    concurrent holds can never together exceed the available balance."""
    if amount_micros < 0:
        raise ValueError("amount_micros must be >= 0")
    tx_id, memo = new_id("ledger_transaction"), _memo(memo)
    posted: bool | None = None
    if session.get_bind().dialect.name == "postgresql":
        moved, posted = session.execute(_HOLD_AND_POST_PG, {
            "account_id": account_id, "amount": amount_micros, "tx_id": tx_id, "kind": HOLD,
            "source_id": source_id, "memo": memo, "created_at": utcnow(),
            "available": AVAILABLE, "held": HELD,
        }).one()
    else:
        moved = session.execute(
            _HOLD, {"b_account_id": account_id, "b_amount": amount_micros}
        ).rowcount
    if moved != 1:
        available = session.execute(
            select(Account.credit_available_micros).where(Account.id == account_id)
        ).scalar_one_or_none()
        if available is None:
            raise NotFound(f"No account {account_id!r}", param="account_id")
        raise InsufficientCredit(
            f"This job needs a hold of ${format_usd(amount_micros)} but only "
            f"${format_usd(available)} of credit is available. Add credit, lower the "
            "epochs, or set max_cost.",
        )
    if posted is None:
        posted = _post(
            session, tx_id=tx_id, account_id=account_id, kind=HOLD, source_id=source_id,
            memo=memo, legs=[(account_id, AVAILABLE, -amount_micros),
                             (account_id, HELD, amount_micros)],
        )
    if not posted:
        # The cached move above must not stand without its ledger entry.
        raise ValueError(f"a hold for {source_id!r} already exists")


def settle_job(session: Session, *, job_id: str, prices: Mapping[str, int]) -> None:
    """Capture what a terminal job owes and release the rest of its hold; write
    `job.cost_micros`. Idempotent and safe to replay concurrently: each posting is an
    INSERT ... ON CONFLICT DO NOTHING on (source_id, kind), and only an inserted posting
    moves the cached balances. A job without a hold (free plan) only gets cost 0."""
    job = session.execute(
        select(
            Job.account_id, Job.model, Job.status, Job.error, Job.trained_tokens, Job.created_at,
            Job.started_at, Account.plan,
        ).join(Account, Account.id == Job.account_id).where(Job.id == job_id)
    ).one_or_none()
    if job is None:
        raise NotFound(f"No job {job_id!r}")
    if not is_terminal(job.status):
        raise ValueError(f"job {job_id} is {job.status}; only terminal jobs are settled")
    hold = _held_amount(session, source_id=job_id, kind=HOLD)
    captured = 0
    if hold is not None:
        captured = _held_amount(session, source_id=job_id, kind=CAPTURE)
        if captured is None:
            owed = _owed(job, prices)
            captured = min(owed, hold)
            if owed > hold:
                _record_short_hold(session, job_id=job_id, owed=owed, hold=hold)
            _settle_leg(session, job_id, job.account_id, CAPTURE, captured, REVENUE)
            # A concurrent settlement may have won the insert; its amount is the truth.
            captured = _held_amount(session, source_id=job_id, kind=CAPTURE) or 0
        if _held_amount(session, source_id=job_id, kind=RELEASE) is None:
            _settle_leg(session, job_id, job.account_id, RELEASE, hold - captured, AVAILABLE)
    session.execute(
        update(Job).where(Job.id == job_id).values(cost_micros=captured)
        .execution_options(synchronize_session=False)
    )
    if _refunds_free_run(job) and _post(
        session, tx_id=new_id("ledger_transaction"), account_id=job.account_id, kind=RUN_REFUND,
        source_id=job_id, memo=f"free run given back: {job_id}", legs=[],
    ):
        quotas.refund_run(session, account_id=job.account_id,
                          day=job.created_at.astimezone(UTC).date())


def settle_hold(session: Session, *, account_id: str, source_id: str,
                capture_micros: int) -> int:
    """Capture up to `capture_micros` of the hold placed for `source_id` (not a job: an
    export's fee) and release the rest; idempotent like `settle_job`. Returns what was
    captured (0 without a hold)."""
    hold = _held_amount(session, source_id=source_id, kind=HOLD)
    if hold is None:
        return 0
    captured = _held_amount(session, source_id=source_id, kind=CAPTURE)
    if captured is None:
        _settle_leg(session, source_id, account_id, CAPTURE, min(capture_micros, hold), REVENUE)
        captured = _held_amount(session, source_id=source_id, kind=CAPTURE) or 0
    if _held_amount(session, source_id=source_id, kind=RELEASE) is None:
        _settle_leg(session, source_id, account_id, RELEASE, hold - captured, AVAILABLE)
    return captured


def _record_short_hold(session: Session, *, job_id: str, owed: int, hold: int) -> None:
    """A capture cut to the hold: never silent (it would mean a job trained past the budget
    its hold bought, a bug)."""
    log.error("job %s owes %d micros but holds %d: capturing the hold", job_id, owed, hold)
    events.record_event(
        session, job_id=job_id, level="warn", dedupe_key="capture_capped",
        data={"owed_micros": owed, "hold_micros": hold},
        message=f"The trained tokens cost ${format_usd(owed)}, more than the ${format_usd(hold)} "
                f"held for this job: ${format_usd(hold)} was charged.")


def _refunds_free_run(job) -> bool:  # noqa: ANN001 - a Row of settle_job's select
    """A free run is given back when the job failed through our fault, or was cancelled
    before it ever started (nothing was trained)."""
    if job.plan != "free":
        return False
    if job.status == "cancelled":
        return job.started_at is None
    return job.status == "failed" and _error_code(job) in PLATFORM_FAULT_CODES


def _error_code(job) -> str | None:  # noqa: ANN001 - a Row of settle_job's select
    return (job.error or {}).get("code") if isinstance(job.error, dict) else None


def _owed(job, prices: Mapping[str, int]) -> int:  # noqa: ANN001 - a Row of settle_job
    if job.status == "failed" and _error_code(job) in PLATFORM_FAULT_CODES:
        return 0
    return price_micros(job.model, int(job.trained_tokens or 0), prices=prices)


def _settle_leg(
    session: Session, job_id: str, account_id: str, kind: str, amount: int, to_bucket: str
) -> None:
    to_account = account_id if to_bucket == AVAILABLE else None
    posted = _post(
        session, tx_id=new_id("ledger_transaction"), account_id=account_id, kind=kind,
        source_id=job_id, memo=f"{kind} {job_id}",
        legs=[(account_id, HELD, -amount), (to_account, to_bucket, amount)],
    )
    if posted:
        _move_cached(
            session, account_id=account_id, held=-amount,
            available=amount if to_bucket == AVAILABLE else 0,
        )


def _post(
    session: Session,
    *,
    tx_id: str,
    account_id: str,
    kind: str,
    source_id: str,
    memo: str | None,
    legs: Sequence[Leg],
) -> bool:
    """Insert a balanced transaction unless (source_id, kind) exists; True if inserted. A
    concurrent duplicate blocks on the unique index until the first commits, then no-ops."""
    if sum(amount for _, _, amount in legs) != 0:
        raise ValueError(f"unbalanced ledger transaction {kind} {source_id}: {legs}")
    postgres = session.get_bind().dialect.name == "postgresql"
    inserted = session.execute(_POST_PG if postgres else _POST_SQLITE, {
        "id": tx_id, "account_id": account_id, "kind": kind, "source_id": source_id,
        "memo": _memo(memo), "created_at": utcnow(),
    }).scalar_one_or_none()
    if inserted is None:
        return False
    if legs:
        session.execute(_ENTRY, [
            {"transaction_id": tx_id, "account_id": acct, "bucket": bucket, "amount_micros": amount}
            for acct, bucket, amount in legs
        ])
    return True


def _memo(memo: str | None) -> str | None:
    return (memo or None) and memo[:300]


def _move_cached(session: Session, *, account_id: str, available: int, held: int) -> None:
    session.execute(_MOVE, {"b_account_id": account_id, "b_available": available, "b_held": held})


def _held_amount(session: Session, *, source_id: str, kind: str) -> int | None:
    """|amount| of the `held` leg of the (source_id, kind) posting; None if not posted."""
    row = session.execute(
        select(LedgerTransaction.id, func.coalesce(func.sum(LedgerEntry.amount_micros), 0))
        .outerjoin(
            LedgerEntry,
            (LedgerEntry.transaction_id == LedgerTransaction.id) & (LedgerEntry.bucket == HELD),
        )
        .where(LedgerTransaction.source_id == source_id, LedgerTransaction.kind == kind)
        .group_by(LedgerTransaction.id)
    ).one_or_none()
    return None if row is None else abs(int(row[1]))


@dataclass(frozen=True)
class Reconciliation:
    """Cached balances versus what the ledger says (all micro-dollars)."""

    account_id: str
    cached_available: int
    ledger_available: int
    cached_held: int
    ledger_held: int
    open_holds: int  # holds of sources not yet released (unsettled jobs)
    unbalanced_transactions: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return (
            self.cached_available == self.ledger_available >= 0
            and self.cached_held == self.ledger_held == self.open_holds >= 0
            and not self.unbalanced_transactions
        )


def reconcile(session: Session, account_id: str) -> Reconciliation:
    """Rebuild an account's balances from its ledger and compare them with the caches."""
    account = session.execute(
        select(Account.credit_available_micros, Account.credit_held_micros).where(
            Account.id == account_id
        )
    ).one_or_none()
    if account is None:
        raise NotFound(f"No account {account_id!r}")
    sums = dict(
        session.execute(
            select(LedgerEntry.bucket, func.sum(LedgerEntry.amount_micros))
            .where(LedgerEntry.account_id == account_id)
            .group_by(LedgerEntry.bucket)
        ).all()
    )
    released = (
        select(LedgerTransaction.source_id)
        .where(LedgerTransaction.account_id == account_id, LedgerTransaction.kind == RELEASE)
    )
    open_holds = session.execute(
        select(func.coalesce(func.sum(LedgerEntry.amount_micros), 0))
        .join(LedgerTransaction, LedgerEntry.transaction_id == LedgerTransaction.id)
        .where(
            LedgerTransaction.account_id == account_id,
            LedgerTransaction.kind == HOLD,
            LedgerEntry.bucket == HELD,
            LedgerTransaction.source_id.not_in(released),
        )
    ).scalar_one()
    unbalanced = session.scalars(
        select(LedgerTransaction.id)
        .outerjoin(LedgerEntry, LedgerEntry.transaction_id == LedgerTransaction.id)
        .where(LedgerTransaction.account_id == account_id)
        .group_by(LedgerTransaction.id)
        .having(func.coalesce(func.sum(LedgerEntry.amount_micros), 0) != 0)
    ).all()
    return Reconciliation(
        account_id=account_id,
        cached_available=int(account.credit_available_micros),
        ledger_available=int(sums.get(AVAILABLE) or 0),
        cached_held=int(account.credit_held_micros),
        ledger_held=int(sums.get(HELD) or 0),
        open_holds=int(open_holds),
        unbalanced_transactions=tuple(unbalanced),
    )


# -- Reads for the billing endpoints ---------------------------------------------------------


@dataclass(frozen=True)
class Balance:
    account_id: str
    plan: str
    available_micros: int
    held_micros: int


def balance(session: Session, *, account_id: str) -> Balance:
    row = session.execute(
        select(Account.plan, Account.credit_available_micros, Account.credit_held_micros)
        .where(Account.id == account_id)
    ).one_or_none()
    if row is None:
        raise NotFound(f"No account {account_id!r}")
    return Balance(account_id, row.plan, int(row.credit_available_micros),
                   int(row.credit_held_micros))


def list_transactions(
    session: Session, *, account_id: str, after: str | None, limit: int
) -> tuple[list[tuple[LedgerTransaction, list[LedgerEntry]]], bool]:
    """The account's ledger transactions, newest first, each with all of its entries (the
    platform legs included, so each listed transaction visibly sums to zero)."""
    from app.services.pagination import page

    statement = select(LedgerTransaction).where(LedgerTransaction.account_id == account_id)
    transactions, has_more = page(session, statement, LedgerTransaction, after=after, limit=limit)
    entries: dict[str, list[LedgerEntry]] = {t.id: [] for t in transactions}
    if entries:
        for entry in session.scalars(
            select(LedgerEntry)
            .where(LedgerEntry.transaction_id.in_(entries))
            .order_by(LedgerEntry.id)
        ):
            entries[entry.transaction_id].append(entry)
    return [(t, entries[t.id]) for t in transactions], has_more


@dataclass(frozen=True)
class UsageRow:
    day: date
    model: str
    jobs: int
    trained_tokens: int
    cost_micros: int


def usage(session: Session, *, account_id: str, start: date, end: date) -> list[UsageRow]:
    """Trained tokens and cost of the account's finished jobs (continual stages included) per
    UTC day of `finished_at` and model, for start <= day <= end. Aggregated here rather than
    in SQL because day truncation differs between PostgreSQL and SQLite."""
    lower = datetime.combine(start, time(), tzinfo=UTC)
    # end == date.max has no next day (OverflowError): bound by its last instant instead.
    upper = datetime.combine(end, time.max, tzinfo=UTC)
    rows = session.execute(
        select(Job.finished_at, Job.model, Job.trained_tokens, Job.cost_micros).where(
            Job.account_id == account_id,
            Job.status.in_([s.value for s in TERMINAL]),
            Job.finished_at >= lower,
            Job.finished_at <= upper,
        )
    ).all()
    buckets: dict[tuple[date, str], list[int]] = {}
    for finished_at, model, tokens, cost in rows:
        day = (finished_at if finished_at.tzinfo else finished_at.replace(tzinfo=UTC))
        bucket = buckets.setdefault((day.astimezone(UTC).date(), model), [0, 0, 0])
        bucket[0] += 1
        bucket[1] += int(tokens or 0)
        bucket[2] += int(cost or 0)
    return [
        UsageRow(day=day, model=model, jobs=n, trained_tokens=tokens, cost_micros=cost)
        for (day, model), (n, tokens, cost) in sorted(buckets.items())
    ]
