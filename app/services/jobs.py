"""Fine-tuning jobs: create (job + admission + created event + outbox row in the caller's
single transaction), read, list, cancel."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any

from sqlalchemy import Insert, Row, Table, bindparam, insert, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Job, JobEvent, OutboxMessage
from app.domain.errors import Conflict, InvalidRequest, NotFound
from app.domain.hyperparameters import trained_tokens
from app.domain.job_options import job_queue, resolve_adapter, resolve_hyperparameters
from app.domain.ids import new_id
from app.domain.job_state import TERMINAL, JobStatus
from app.domain.pricing import usd_to_micros
from app.schemas.jobs import JobCreate
from app.services import admission, billing, events, outbox
from app.services.admission import Admission
from app.services.files import require_usable_file
from app.services.job_status import transition_job
from app.services.pagination import find_owned
from crma_core.catalog import CATALOG, CatalogModel


@dataclass(frozen=True)
class JobDraft:
    """Everything a new job row needs, validated (shared by fine-tunes and continual stages)."""

    model: CatalogModel
    training_file: Row[Any]  # a row of files.require_usable_file (id, token_counts, ...)
    validation_file: Row[Any] | None
    hyperparameters: dict[str, Any]
    adapter: dict[str, Any]
    seed: int
    estimated_tokens: int
    account_plan: str | None = None  # read with the training file; admission needs it


def catalog_model(model_id: str) -> CatalogModel:
    entry = CATALOG.get(model_id)
    if entry is None:
        raise InvalidRequest(
            f"The model {model_id!r} does not exist; see GET /v1/models.",
            param="model", code="model_not_found",
        )
    return entry


def draft_job(
    session: Session, *, account_id: str, model: str, training_file: str,
    validation_file: str | None, hyperparameters: dict[str, Any] | None,
    adapter: dict[str, Any] | None, seed: int | None, param_prefix: str = "",
) -> JobDraft:
    entry = catalog_model(model)
    train = require_usable_file(session, account_id=account_id, file_id=training_file,
                                param=f"{param_prefix}training_file")
    valid = None
    if validation_file is not None:
        valid = require_usable_file(session, account_id=account_id, file_id=validation_file,
                                    param=f"{param_prefix}validation_file")
    resolved_adapter = resolve_adapter(adapter)
    if resolved_adapter["quantization"] and not entry.qlora:
        raise InvalidRequest(f"{model} does not offer QLoRA (quantization='nf4').",
                             param="adapter.quantization", code="qlora_not_supported")
    resolved = resolve_hyperparameters(hyperparameters, example_count=train.example_count)
    file_tokens = int((train.token_counts or {}).get(entry.family, 0))
    return JobDraft(
        model=entry, training_file=train, validation_file=valid, hyperparameters=resolved,
        adapter=resolved_adapter, seed=secrets.randbelow(2**31) if seed is None else seed,
        estimated_tokens=trained_tokens(file_tokens=file_tokens, n_epochs=resolved["n_epochs"]),
        account_plan=train.account_plan,
    )


_jobs, _events, _outbox = Job.__table__, JobEvent.__table__, OutboxMessage.__table__
# Built once: Core on the table, executed with a dict of the new row (see insert_job).
_INSERT_JOB = _jobs.insert()


def insert_job(
    session: Session, *, account_id: str, draft: JobDraft, kind: str = "fine_tune",
    suffix: str | None = None, metadata: dict[str, str] | None = None,
    max_cost_micros: int | None = None, continual_run_id: str | None = None,
    stage_index: int | None = None, enqueue: bool = True,
) -> tuple[Job, Admission]:
    """Admit a queued job (quota or credit hold), insert it with the admitted terms, record
    `created` and, when `enqueue`, the outbox row that hands it to the workers after commit.

    The returned Job is transient (never added to the session): it holds exactly the row
    just inserted, for the caller to present. The INSERT is Core, not a unit-of-work flush,
    and the terms go into it directly instead of a second UPDATE: most of a create's CPU was
    SQLAlchemy building and flushing statements."""
    job_id = new_id("job")
    admitted = admission.reserve(
        session, account_id=account_id, model=draft.model.id,
        estimated_tokens=draft.estimated_tokens, source_id=job_id,
        max_cost_micros=max_cost_micros, plan=draft.account_plan,
    )
    now = utcnow()
    values = dict(
        id=job_id, account_id=account_id, kind=kind, model=draft.model.id,
        training_file_id=draft.training_file.id,
        validation_file_id=draft.validation_file.id if draft.validation_file else None,
        hyperparameters=draft.hyperparameters, adapter=draft.adapter, suffix=suffix,
        seed=draft.seed, user_metadata=metadata, max_cost_micros=max_cost_micros,
        status=JobStatus.QUEUED.value, queue=job_queue(free_tier_model=draft.model.free_tier),
        estimated_tokens=draft.estimated_tokens, token_budget=admitted.token_budget,
        trained_tokens=0, hold_micros=admitted.hold_micros, cost_micros=0, attempt=0,
        continual_run_id=continual_run_id, stage_index=stage_index,
        created_at=now, queued_at=now, offered_at=now if enqueue else None,
    )
    job = Job(**values)
    # Columns left out (error, result, lease, ...) start as SQL NULL, as with a flush.
    row, created = _job_row(values), f"Created fine-tuning job: {job_id}"
    if session.get_bind().dialect.name == "postgresql":
        _insert_created_pg(session, row=row, created=created, enqueue=enqueue)
    else:
        session.execute(_INSERT_JOB, row)
        events.record_event(session, job_id=job_id, message=created, dedupe_key="created")
        if enqueue:
            enqueue_job(session, job=job)
    return job, admitted


def enqueue_job(session: Session, *, job: Job) -> None:
    """The outbox row that hands the job to the workers once this transaction commits
    (the caller sets `job.offered_at`)."""
    outbox.enqueue(session, task=outbox.RUN_JOB_TASK, queue=job.queue, payload={"job_id": job.id})


def _insert_created_pg(
    session: Session, *, row: dict[str, Any], created: str, enqueue: bool
) -> None:
    """PostgreSQL: the job row, its `created` event and, when `enqueue`, its outbox row, as
    one statement (what the SQLite branch of insert_job does in three round trips)."""
    event = events.event_row(job_id=row["id"], message=created, dedupe_key="created")
    message = outbox.message_row(task=outbox.RUN_JOB_TASK, queue=row["queue"],
                                 payload={"job_id": row["id"]}) if enqueue else {}
    parts = {"job_": row, "event_": event, "message_": message}
    statement = _created_statement(*(tuple(columns) for columns in parts.values()))
    session.execute(statement, {
        prefix + column: value
        for prefix, columns in parts.items() for column, value in columns.items()
    })


@cache
def _created_statement(
    job_columns: tuple[str, ...], event_columns: tuple[str, ...],
    message_columns: tuple[str, ...],
) -> Insert:
    """Data-modifying CTEs: INSERT job, INSERT event (ON CONFLICT DO NOTHING, as
    record_event), then INSERT outbox row (none without `message_columns`), each bound as
    its columns prefixed with job_ / event_ / message_. Built once per set of columns.
    The event's foreign key to the job holds: PostgreSQL checks it at the end of the
    statement, once every CTE has run."""
    def binds(table: Table, prefix: str, columns: tuple[str, ...]) -> dict[str, Any]:
        return {c: bindparam(prefix + c, type_=table.c[c].type) for c in columns}

    job = insert(_jobs).values(binds(_jobs, "job_", job_columns)).cte("new_job")
    event = pg_insert(_events).values(binds(_events, "event_", event_columns))
    event = event.on_conflict_do_nothing()
    if not message_columns:
        return event.add_cte(job)
    return (
        insert(_outbox)
        .values(binds(_outbox, "message_", message_columns))
        .values(outbox.clock_columns(timedelta(0)))
        .add_cte(job, event.cte("created_event"))
    )


def _job_row(values: dict[str, Any]) -> dict[str, Any]:
    """Job attributes as INSERT parameters (the `user_metadata` attribute is the `metadata`
    column: SQLAlchemy's declarative base reserves the name)."""
    row = dict(values)
    row["metadata"] = row.pop("user_metadata")
    return row


def create_job(session: Session, *, account_id: str, spec: JobCreate) -> tuple[Job, Admission]:
    draft = draft_job(
        session, account_id=account_id, model=spec.model, training_file=spec.training_file,
        validation_file=spec.validation_file,
        hyperparameters=spec.hyperparameters.model_dump() if spec.hyperparameters else None,
        adapter=spec.adapter.model_dump() if spec.adapter else None, seed=spec.seed,
    )
    max_cost = usd_to_micros(spec.max_cost) if spec.max_cost is not None else None
    return insert_job(session, account_id=account_id, draft=draft, suffix=spec.suffix,
                      metadata=spec.metadata, max_cost_micros=max_cost)


def get_job(session: Session, *, account_id: str, job_id: str) -> Job:
    job = find_owned(session, Job, account_id, job_id)
    if job is None:
        raise job_not_found(job_id)
    return job


def job_not_found(job_id: str) -> NotFound:
    return NotFound(f"No such fine-tuning job: {job_id!r}.", param="job_id")



def cancel_job(session: Session, *, account_id: str, job_id: str) -> Job:
    """Queued: cancelled now and settled in this transaction. Running: cancellation requested
    (the worker stops within a heartbeat). Finished: 409. A continual-run stage cancels its
    whole run (later stages would otherwise wait forever)."""
    job = get_job(session, account_id=account_id, job_id=job_id)
    require_cancellable(job)
    if job.continual_run_id is not None:
        from app.services.continual_runs import cancel_run

        cancel_run(session, account_id=account_id, run_id=job.continual_run_id)
    elif not cancel_one(session, job=job):
        # Lost a race: the worker finished it (or the reaper re-queued it) meanwhile.
        session.refresh(job)
        require_cancellable(job)
        cancel_one(session, job=job)
    session.refresh(job)
    return job


def cancel_one(session: Session, *, job: Job) -> bool:
    """Cancel or request cancellation of one job; False if it had already finished."""
    now = utcnow()
    pending = (JobStatus.QUEUED, JobStatus.VALIDATING_FILES)
    if transition_job(session, job_id=job.id, to=JobStatus.CANCELLED, expected=pending,
                      values={"cancel_requested_at": now}):
        billing.settle_job(session, job_id=job.id)
        events.record_event(session, job_id=job.id, message="Job cancelled before it started.",
                            type="status", data={"status": "cancelled"},
                            dedupe_key="status:cancelled")
        return True
    requested = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == JobStatus.RUNNING.value)
        .values(cancel_requested_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if requested:
        events.record_event(session, job_id=job.id, message="Cancellation requested.",
                            dedupe_key="cancel_requested")
        return True
    return False


def require_cancellable(job: Job) -> None:
    if JobStatus(job.status) in TERMINAL:
        raise Conflict(f"Job {job.id} is already {job.status}; it cannot be cancelled.",
                       code="job_not_cancellable", param="job_id")

