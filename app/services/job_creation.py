"""Creating jobs: validate and resolve what a job trains (`draft_job`), then admit it (quota
or credit hold) and insert it with its `created` event and, when it is to start now, the
outbox row that hands it to the workers, all in the caller's one transaction
(`insert_job`). Fine-tuning jobs (`create_job`) and continual-run stages
(app/services/continual_runs.py) are created here."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any

from sqlalchemy import Insert, Row, Table, bindparam, insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Job, JobEvent, OutboxMessage
from app.domain.errors import InvalidRequest
from app.domain.ids import new_id
from app.domain.job_options import job_queue
from app.domain.job_limits import limit_problems
from app.domain.job_settings import (
    JobSettings,
    estimated_stage_tokens,
    recipe_configs,
    resolve_job_settings,
)
from app.domain.job_state import JobStatus
from app.domain.pricing import usd_to_micros
from app.schemas.jobs import JobCreate
from app.services import admission, events, job_sources, outbox, tokens, training_work
from app.services.admission import Admission
from app.services.files import require_usable_file
from app.settings import Settings
from crma_core.catalog import CATALOG, CatalogModel


@dataclass(frozen=True)
class JobDraft:
    """Everything a new job row needs, validated (shared by fine-tunes and continual stages)."""

    model: CatalogModel
    training_file: Row[Any]  # a row of files.require_usable_file (id, token_counts, ...)
    validation_file: Row[Any] | None
    job_settings: JobSettings
    seed: int
    estimated_tokens: int
    account_plan: str | None = None  # read with the training file; admission needs it
    baseline_tokens: int = 0  # of estimated_tokens: a continual run's baseline LoRA
    # Counted with the model's tokenizer at upload (app/services/tokens.py), else an upper
    # bound (a heuristic count, or max_steps).
    estimate_exact: bool = True
    # The share of the unpacked work per trained token (packing: app/services/training_work.py).
    duration_factor: float = 1.0


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
    continuable: bool = False, continual: dict[str, Any] | None = None,
) -> JobDraft:
    """Validate what a new job would train (model, files, settings) and resolve its
    settings and estimate; reads only (the estimate endpoints call it too). With
    `continuable`, `model` may also name one of the account's fine-tuned models or
    checkpoints (app/services/job_sources.py): the job continues from that adapter."""
    source = None
    if continuable and job_sources.names_a_fine_tuned_model(model):
        source = job_sources.resolve_source(session, account_id=account_id, model=model)
        adapter = job_sources.adapter_for(source, adapter)
    entry = catalog_model(source.base_model if source else model)
    train = require_usable_file(session, account_id=account_id, file_id=training_file,
                                param=f"{param_prefix}training_file")
    valid = None
    if validation_file is not None:
        valid = require_usable_file(session, account_id=account_id, file_id=validation_file,
                                    param=f"{param_prefix}validation_file")
    job_settings = resolve_job_settings(hyperparameters=hyperparameters, adapter=adapter,
                                        example_count=train.example_count,
                                        start_from=source.start if source else None,
                                        continual=continual, has_validation=valid is not None)
    if job_settings.adapter.quantization and not entry.qlora:
        raise InvalidRequest(f"{model} does not offer QLoRA (quantization='nf4').",
                             param="adapter.quantization", code="qlora_not_supported")
    check_settings(entry, job_settings, example_count=train.example_count,
                   has_validation=valid is not None)
    counted = tokens.job_tokens(train, model=entry, settings=job_settings)
    own, baseline = estimated_stage_tokens(job_settings, tokens=counted.tokens)
    return JobDraft(
        model=entry, training_file=train, validation_file=valid, job_settings=job_settings,
        seed=secrets.randbelow(2**31) if seed is None else seed,
        estimated_tokens=own + baseline, baseline_tokens=baseline,
        account_plan=train.account_plan, estimate_exact=counted.exact,
        duration_factor=training_work.duration_factor(train, model_id=entry.id,
                                                      settings=job_settings),
    )


# Knobs a continual stage's loop (crma_core.continual) does not have: refused there, not
# silently ignored.
_NOT_CONTINUAL = {"train_on_inputs": False, "n_checkpoints": None}


def check_settings(model: CatalogModel, settings: JobSettings, *, example_count: int,
                   has_validation: bool) -> None:
    """A 400 naming the first setting `model` does not allow (crma_core.limits' per-model
    bounds, app/domain/job_limits.py), or that the job cannot use. Settings are the run's in
    a continual run, so their params carry no `domains[i].` prefix."""
    hp = settings.hyperparameters
    if hp.n_evals and not has_validation:
        raise InvalidRequest("hyperparameters.n_evals needs a validation_file to evaluate.",
                             param="hyperparameters.n_evals",
                             code="invalid_hyperparameter")
    if settings.continual is not None:
        for name, default in _NOT_CONTINUAL.items():
            if getattr(hp, name) != default:
                raise InvalidRequest(
                    f"hyperparameters.{name} is not offered for continual runs (fine-tuning "
                    "jobs only).", param=f"hyperparameters.{name}",
                    code="invalid_hyperparameter")
    configs = recipe_configs(settings, seed=0, token_budget=None, example_count=example_count,
                             has_validation=has_validation, device="cpu",
                             checkpoint_every_steps=None, checkpoint_every_s=None)
    values = {f"{group}.{k}": v for group in ("hyperparameters", "adapter")
              for k, v in getattr(settings, group).model_dump().items()}
    problems = limit_problems(model, train=configs.train, lora=configs.lora, values=values)
    if problems:
        param, message = problems[0]
        raise InvalidRequest(message, param=param, code="hyperparameter_out_of_range")


_jobs, _events, _outbox = Job.__table__, JobEvent.__table__, OutboxMessage.__table__
# Built once: Core on the table, executed with a dict of the new row (see insert_job).
_INSERT_JOB = _jobs.insert()


def insert_job(
    session: Session, *, account_id: str, draft: JobDraft, settings: Settings,
    kind: str = "fine_tune",
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
        max_cost_micros=max_cost_micros, plan=draft.account_plan, settings=settings,
    )
    now = utcnow()
    values = dict(
        id=job_id, account_id=account_id, kind=kind, model=draft.model.id,
        training_file_id=draft.training_file.id,
        validation_file_id=draft.validation_file.id if draft.validation_file else None,
        settings=draft.job_settings.stored(), suffix=suffix,
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
    admission.record_cap(session, job_id=job_id, estimated_tokens=draft.estimated_tokens,
                         token_budget=admitted.token_budget, max_cost_micros=max_cost_micros)
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


def create_job(
    session: Session, *, account_id: str, spec: JobCreate, settings: Settings
) -> tuple[Job, Admission]:
    draft = draft_job(
        session, account_id=account_id, model=spec.model, training_file=spec.training_file,
        validation_file=spec.validation_file,
        hyperparameters=spec.hyperparameters.model_dump() if spec.hyperparameters else None,
        adapter=spec.adapter.model_dump(exclude_unset=True) if spec.adapter else None,
        seed=spec.seed, continuable=True,
    )
    max_cost = usd_to_micros(spec.max_cost) if spec.max_cost is not None else None
    return insert_job(session, account_id=account_id, draft=draft, settings=settings,
                      suffix=spec.suffix, metadata=spec.metadata, max_cost_micros=max_cost)
