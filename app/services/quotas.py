"""Free-tier run quota: N runs per UTC day per account (each continual-run stage is a run).

The counter lives on the account row (`runs_day`, `runs_used`). Reserving a run is ONE
conditional UPDATE that also rolls the day over, so concurrent creates can never both see
"2 of 3 used" and both succeed: PostgreSQL re-checks the WHERE clause on the row version
left by the transaction it waited for. The same statement works on SQLite, where writers
are serialised anyway."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import Date, Integer, Update, and_, bindparam, case, or_, select, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Account
from app.domain.errors import NotFound, QuotaExceeded

# The free plan runs at most this many of its jobs at once; the others wait in the queue.
# The worker's claim enforces it (see running_limit).
FREE_RUNNING_LIMIT = 1


def _reserve_statement() -> Update:
    """Built once (it runs on every free-plan job creation). SET sees the old row: the
    same day adds, a new day starts over."""
    accounts = Account.__table__
    today, runs = bindparam("b_today", type_=Date()), bindparam("b_runs", type_=Integer())
    same_day = accounts.c.runs_day == today
    return (
        update(accounts)
        .where(
            accounts.c.id == bindparam("b_account_id"),
            accounts.c.plan == "free",
            or_(
                accounts.c.runs_day.is_(None),
                accounts.c.runs_day != today,
                and_(same_day, accounts.c.runs_used + runs <= bindparam("b_limit")),
            ),
        )
        .values(runs_used=case((same_day, accounts.c.runs_used + runs), else_=runs),
                runs_day=today)
        .returning(accounts.c.runs_used)
    )


_RESERVE = _reserve_statement()


@dataclass(frozen=True)
class QuotaSnapshot:
    limit: int
    remaining: int
    reset_at: datetime  # next UTC midnight


def running_limit(plan: str) -> int | None:
    """How many jobs of an account on `plan` may run at the same time (None: no limit)."""
    return FREE_RUNNING_LIMIT if plan == "free" else None


def next_reset(now: datetime) -> datetime:
    return datetime.combine(now.astimezone(UTC).date() + timedelta(days=1), time(), tzinfo=UTC)


def retry_after_s(now: datetime) -> int:
    return max(1, int(-(-(next_reset(now) - now).total_seconds() // 1)))


def quota_headers(snapshot: QuotaSnapshot | None) -> dict[str, str]:
    """`x-quota-runs-*` headers for a job-creating response (empty for paid plans).
    `x-quota-runs-reset` is the reset instant as Unix seconds (UTC midnight)."""
    if snapshot is None:
        return {}
    return {
        "x-quota-runs-limit": str(snapshot.limit),
        "x-quota-runs-remaining": str(snapshot.remaining),
        "x-quota-runs-reset": str(int(snapshot.reset_at.timestamp())),
    }


def snapshot(
    session: Session, *, account_id: str, runs_per_day: int, now: datetime | None = None
) -> QuotaSnapshot | None:
    """The account's free-run quota right now (None for a paid plan). Reads only."""
    now = now or utcnow()
    row = session.execute(
        select(Account.plan, Account.runs_day, Account.runs_used).where(Account.id == account_id)
    ).one_or_none()
    if row is None:
        raise NotFound(f"No account {account_id!r}")
    if row.plan != "free":
        return None
    limit = runs_per_day
    used = row.runs_used if row.runs_day == now.astimezone(UTC).date() else 0
    return QuotaSnapshot(limit=limit, remaining=max(0, limit - used), reset_at=next_reset(now))


def refund_run(session: Session, *, account_id: str, day: date) -> None:
    """Give back one free run taken on `day` (UTC). Only that day's counter can be lowered:
    once the day has passed, the quota has reset anyway. A paid account is left alone."""
    session.execute(
        update(Account)
        .where(Account.id == account_id, Account.plan == "free", Account.runs_day == day,
               Account.runs_used > 0)
        .values(runs_used=Account.runs_used - 1)
        .execution_options(synchronize_session=False)
    )


def reserve_runs(
    session: Session, *, account_id: str, runs_per_day: int, runs: int = 1,
    now: datetime | None = None,
) -> QuotaSnapshot:
    """Take `runs` free runs from today's quota atomically, or raise QuotaExceeded (429 with
    Retry-After to the next UTC midnight and the quota headers). Holds the account row lock
    until the caller's transaction ends; rolling back gives the runs back."""
    now = now or utcnow()
    today: date = now.astimezone(UTC).date()
    limit = runs_per_day
    if 1 <= runs <= limit:
        used = session.execute(
            _RESERVE, {"b_account_id": account_id, "b_today": today, "b_runs": runs,
                       "b_limit": limit},
        ).scalar_one_or_none()
        if used is not None:
            return QuotaSnapshot(limit=limit, remaining=limit - used, reset_at=next_reset(now))
    current = snapshot(session, account_id=account_id, now=now, runs_per_day=runs_per_day)
    remaining = current.remaining if current else 0
    exhausted = QuotaSnapshot(limit=limit, remaining=remaining, reset_at=next_reset(now))
    wait = retry_after_s(now)
    raise QuotaExceeded(
        f"The free plan allows {limit} runs per UTC day (a continual-run stage counts as a "
        f"run); this request needs {runs} and {remaining} remain. The quota resets at "
        f"{exhausted.reset_at.isoformat()}.",
        retry_after_s=wait,
        headers={"Retry-After": str(wait), **quota_headers(exhausted)},
    )

