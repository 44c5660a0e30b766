"""Job leases with a fencing number (docs/reliability.md, "Leases and fencing").

A worker owns a job only through its lease: `claim_job` is one conditional UPDATE that moves
the job to `running`, bumps `attempt` and returns it. Every later write by that worker carries
`AND attempt = :attempt AND status = 'running'`, so a stale worker (its lease expired and the
reaper handed the job to a new attempt) has every write rejected, and its next heartbeat tells
it to stop. Status changes go through `job_status.transition_job`; this module writes the
lease columns. Services never commit: the caller owns the transaction.

Clock: lease arithmetic uses `app.db.base.db_now` (the database's clock on PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from app.db.base import db_now
from app.db.models import Account, Job
from app.domain.job_state import JobStatus
from app.services import outbox
from app.services.job_status import transition_job

RUNNING = JobStatus.RUNNING.value
QUEUED = JobStatus.QUEUED.value


def stage_ready():
    """A continual-run stage may run only after every earlier stage of its run succeeded."""
    earlier = aliased(Job)
    return or_(
        Job.kind != "continual_stage",
        ~exists().where(
            earlier.continual_run_id == Job.continual_run_id,
            earlier.stage_index < Job.stage_index,
            earlier.status != JobStatus.SUCCEEDED.value,
        ),
    )


@dataclass(frozen=True)
class Claim:
    """`claimed` (attempt is the fencing number), `busy` (a free account already has a job
    running; the caller re-offers it later) or `skipped` (nothing to claim: a duplicate or
    late delivery; the caller exits without writing)."""

    outcome: Literal["claimed", "busy", "skipped"]
    attempt: int | None = None


def claim_job(
    session: Session, *, job_id: str, owner: str, lease_ttl_s: float, max_attempts: int
) -> Claim:
    """Take the lease on a queued job, or on a running one whose lease expired.

    A free account runs one job at a time: its claims are serialised on the account row
    (`FOR UPDATE`), so two workers cannot both see "nothing running" and start two jobs.
    The caller commits at once (that releases the account lock)."""
    row = session.execute(
        select(Job.status, Job.account_id, Account.plan)
        .join(Account, Account.id == Job.account_id)
        .where(Job.id == job_id)
    ).one_or_none()
    if row is None or row.status not in (QUEUED, RUNNING):
        return Claim("skipped")
    if row.plan == "free" and row.status == QUEUED:
        session.execute(select(Account.id).where(Account.id == row.account_id).with_for_update())
        other = session.scalar(
            select(Job.id).where(
                Job.account_id == row.account_id, Job.status == RUNNING, Job.id != job_id
            ).limit(1)
        )
        if other is not None:
            return Claim("busy")
    now = db_now(session)
    # queued -> running, or running -> running when a new attempt takes over an expired lease.
    claimed = transition_job(
        session, job_id=job_id, to=JobStatus.RUNNING,
        expected=(JobStatus.QUEUED, JobStatus.RUNNING),
        conditions=(
            or_(Job.status == QUEUED, Job.lease_expires_at < now),
            Job.attempt < max_attempts,
            stage_ready(),
        ),
        values={
            "attempt": Job.attempt + 1, "lease_owner": owner,
            "lease_expires_at": now + timedelta(seconds=lease_ttl_s), "heartbeat_at": now,
            "started_at": func.coalesce(Job.started_at, now),
        },
    )
    attempt = claimed.attempt
    return Claim("skipped") if attempt is None else Claim("claimed", attempt)


@dataclass(frozen=True)
class Beat:
    cancel_requested: bool
    token_budget: int | None


def heartbeat(
    session: Session, *, job_id: str, attempt: int, lease_ttl_s: float,
    trained_tokens: int | None = None,
) -> Beat | None:
    """Extend the lease and read the cancel flag; None means this attempt was fenced out."""
    now = db_now(session)
    values: dict[str, Any] = {
        "lease_expires_at": now + timedelta(seconds=lease_ttl_s), "heartbeat_at": now,
    }
    if trained_tokens is not None:
        values["trained_tokens"] = trained_tokens
    row = session.execute(
        _fenced(job_id, attempt)
        .values(**values)
        .returning(Job.cancel_requested_at, Job.token_budget)
    ).one_or_none()
    if row is None:
        return None
    return Beat(cancel_requested=row.cancel_requested_at is not None, token_budget=row.token_budget)


def fenced_update(session: Session, *, job_id: str, attempt: int, values: dict[str, Any]) -> bool:
    """Write `values` only while this attempt still holds the running job."""
    return session.execute(_fenced(job_id, attempt).values(**values)).rowcount == 1


def record_checkpoint_step(session: Session, *, job_id: str, attempt: int, step: int,
                           trained_tokens: int) -> bool:
    """Move the resume pointer forward (never back), fenced."""
    statement = _fenced(job_id, attempt).where(
        or_(Job.last_checkpoint_step.is_(None), Job.last_checkpoint_step < step)
    )
    return session.execute(
        statement.values(last_checkpoint_step=step, trained_tokens=trained_tokens)
    ).rowcount == 1


def holds_lease(session: Session, *, job_id: str, attempt: int) -> bool:
    """Whether `attempt` still owns the running job; on PostgreSQL the row is share-locked
    until the caller commits, so the reaper cannot requeue it in between (a fenced event
    write: check, then insert, in one transaction)."""
    statement = select(Job.id).where(Job.id == job_id, Job.attempt == attempt,
                                     Job.status == RUNNING)
    if session.get_bind().dialect.name == "postgresql":
        statement = statement.with_for_update(read=True)
    return session.scalar(statement) is not None


def _fenced(job_id: str, attempt: int):
    return (
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.status == RUNNING)
        .execution_options(synchronize_session=False)
    )


def offer_job(
    session: Session, *, job_id: str, queue: str, delay_s: float = 0.0,
    only_if_offered_before: datetime | None = None,
) -> bool:
    """Write an outbox row that hands a queued job to the broker `delay_s` from now, and set
    `offered_at` to that moment (when the offer becomes deliverable).

    With `only_if_offered_before`, only if the job's latest offer became deliverable before
    that instant. The conditional UPDATE lets one caller win when several reapers re-offer a
    stale job (cutoff = now - stale_queued_s), and collapses duplicate deliveries of a busy
    free-tier job into one pending re-offer (cutoff = now: no offer is still pending)."""
    now = db_now(session)
    available = now + timedelta(seconds=delay_s)
    statement = update(Job).where(Job.id == job_id, Job.status == QUEUED)
    if only_if_offered_before is not None:
        statement = statement.where(_offered_at() < only_if_offered_before)
    won = session.execute(
        statement.values(offered_at=available).execution_options(synchronize_session=False)
    ).rowcount == 1
    if won:
        outbox.enqueue(session, task=outbox.RUN_JOB_TASK, queue=queue,
                       payload={"job_id": job_id}, delay_s=delay_s, now=now)
    return won


def requeue_job(session: Session, *, job_id: str, attempt: int, queue: str) -> bool:
    """Hand a running attempt's job back to the queue (expired lease, or a worker that
    checkpointed on shutdown / soft time limit) and offer it again. The next claim bumps
    `attempt` and resumes from `last_checkpoint_step`."""
    now = db_now(session)
    moved = transition_job(
        session, job_id=job_id, to=JobStatus.QUEUED, expected=[JobStatus.RUNNING],
        attempt=attempt,
        values={"lease_owner": None, "lease_expires_at": None, "queued_at": now},
    )
    if moved:
        offer_job(session, job_id=job_id, queue=queue)
    return moved


def _offered_at():
    return func.coalesce(Job.offered_at, Job.queued_at, Job.created_at)


@dataclass(frozen=True)
class LeasedJob:
    id: str
    attempt: int
    queue: str


def expired_leases(session: Session, *, limit: int = 100) -> list[LeasedJob]:
    """Running jobs whose lease ran out, locked for this transaction. On PostgreSQL a
    heartbeat in flight holds the row and is skipped (SKIP LOCKED); one that commits after
    the reaper finds `status` changed and is fenced out."""
    statement = (
        select(Job.id, Job.attempt, Job.queue)
        .where(Job.status == RUNNING, Job.lease_expires_at < db_now(session))
        .order_by(Job.lease_expires_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        statement = statement.with_for_update(skip_locked=True)
    return [LeasedJob(r.id, r.attempt, r.queue) for r in session.execute(statement)]


def stale_queued(session: Session, *, cutoff: datetime, limit: int = 100) -> list[LeasedJob]:
    """Queued jobs not offered to the broker since `cutoff` (a lost message, a flushed
    Redis), excluding continual stages still waiting for an earlier stage. Re-offer each with
    `offer_job(..., only_if_offered_before=cutoff)`."""
    rows = session.execute(
        select(Job.id, Job.attempt, Job.queue)
        .where(Job.status == QUEUED, _offered_at() < cutoff, stage_ready())
        .order_by(_offered_at())
        .limit(limit)
    )
    return [LeasedJob(r.id, r.attempt, r.queue) for r in rows]


def running_without_owner(session: Session, *, grace_s: float) -> list[str]:
    """The "stuck in running" audit: running jobs whose last heartbeat is older than
    `grace_s` (docs/reliability.md)."""
    cutoff = db_now(session) - timedelta(seconds=grace_s)
    return list(session.scalars(
        select(Job.id).where(Job.status == RUNNING, Job.heartbeat_at < cutoff)
    ))
