"""Job status, the job list and job events through the async Reader (app/db/reader.py): the
reads a client polls. Same answers as the ORM reads (`jobs.get_job`, `pagination.page`,
`events.list_events`; tests/app/test_job_reads.py compares them); every statement is built
once, here."""

from __future__ import annotations

from sqlalchemy import bindparam, select, tuple_

from app.db.models import Job, JobEvent
from app.db.reader import Reader, Record, columns
from app.domain.id_format import is_id
from app.services.jobs import job_not_found
from app.services.pagination import invalid_cursor

_jobs = Job.__table__
_events = JobEvent.__table__
# What the presenters read (app/api/presenters.py job_public, event_public): not the lease,
# nor all of `result`, which can be large: only its `metrics` (a dozen figures).
_JOB_FIELDS = [*columns(
    Job, "id", "account_id", "model", "status", "created_at", "started_at", "finished_at",
    "fine_tuned_model", "suffix", "training_file_id", "validation_file_id", "settings",
    "seed", "user_metadata", "error", "estimated_tokens", "token_budget",
    "trained_tokens", "hold_micros", "cost_micros", "max_cost_micros", "attempt",
    "cancel_requested_at", "continual_run_id", "stage_index"),
    _jobs.c.result["metrics"].label("result_metrics")]
_EVENT_FIELDS = columns(JobEvent, "seq", "id", "created_at", "level", "type", "message", "data")

_OWN_JOB = select(*_JOB_FIELDS).where(_jobs.c.id == bindparam("job_id"),
                                      _jobs.c.account_id == bindparam("account_id"))

# Fine-tuning jobs only (continual-run stages are listed with their run), newest first.
_OWN_FINE_TUNES = (_jobs.c.account_id == bindparam("account_id"), _jobs.c.kind == "fine_tune")
_JOB_CURSOR = select(_jobs.c.created_at, _jobs.c.id).where(
    *_OWN_FINE_TUNES, _jobs.c.id == bindparam("after"))
_JOB_PAGE = (select(*_JOB_FIELDS).where(*_OWN_FINE_TUNES)
             .order_by(_jobs.c.created_at.desc(), _jobs.c.id.desc())
             .limit(bindparam("limit")))
_JOB_PAGE_AFTER = _JOB_PAGE.where(
    tuple_(_jobs.c.created_at, _jobs.c.id)
    < tuple_(bindparam("cursor_created_at", type_=_jobs.c.created_at.type),
             bindparam("cursor_id", type_=_jobs.c.id.type)))

_EVENT_SEQ = select(_events.c.seq).where(_events.c.job_id == bindparam("job_id"),
                                         _events.c.id == bindparam("event_id"))
_EVENTS = (select(*_EVENT_FIELDS).where(_events.c.job_id == bindparam("job_id"))
           .order_by(_events.c.seq.desc()).limit(bindparam("limit")))
_EVENTS_BEFORE = _EVENTS.where(_events.c.seq < bindparam("before_seq"))


async def get_job(reader: Reader, *, account_id: str, job_id: str) -> Record:
    """The account's job, or 404 (also for a malformed id, which never reaches the database)."""
    row = await reader.fetch_one(_OWN_JOB, {"job_id": job_id, "account_id": account_id}) \
        if is_id(job_id) else None
    if row is None:
        raise job_not_found(job_id)
    return Record(**row)


async def list_jobs(reader: Reader, *, account_id: str, after: str | None,
                    limit: int) -> tuple[list[Record], bool]:
    """(a page of fine-tuning jobs, has_more); `after` must be one of the account's jobs."""
    params = {"account_id": account_id, "limit": limit + 1}
    statement = _JOB_PAGE
    if after is not None:
        cursor = await reader.fetch_one(_JOB_CURSOR, {**params, "after": after}) \
            if is_id(after) else None
        if cursor is None:
            raise invalid_cursor(after)
        params.update(cursor_created_at=cursor["created_at"], cursor_id=cursor["id"])
        statement = _JOB_PAGE_AFTER
    rows = await reader.fetch(statement, params)
    return [Record(**row) for row in rows[:limit]], len(rows) > limit


async def event_seq(reader: Reader, *, job_id: str, event_id: str) -> int:
    """The sequence number of an event of this job (an `after` cursor), or 400."""
    row = await reader.fetch_one(_EVENT_SEQ, {"job_id": job_id, "event_id": event_id}) \
        if is_id(event_id) else None
    if row is None:
        raise invalid_cursor(event_id)
    return row["seq"]


async def list_events(reader: Reader, *, job_id: str, before_seq: int | None,
                      limit: int) -> tuple[list[Record], bool]:
    """(a page of the job's events, newest first, has_more); the caller checked ownership."""
    params = {"job_id": job_id, "limit": limit + 1}
    statement = _EVENTS
    if before_seq is not None:
        params["before_seq"] = before_seq
        statement = _EVENTS_BEFORE
    rows = await reader.fetch(statement, params)
    return [Record(**row) for row in rows[:limit]], len(rows) > limit
