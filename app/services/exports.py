"""Merged-weights exports of a fine-tuning job (POST /v1/fine_tuning/jobs/{id}/exports).

Creating one checks the job (the caller's, succeeded), the format against the job's CRMA
setting (CRMA cannot be folded into standard weights: `merged` of a CRMA job is a 409;
`merged_crma` keeps it as custom code, docs/user-guide.md), the plan's limit (free: a few a
day) or the fee's hold (pro), and writes the export row and an outbox row for the worker
task `crma.export_job`, in one transaction. The same job, format and dtype again returns the
export already made or under way (idempotent; a failed one may be retried). The worker
(worker/exports.py) claims it, builds the folder with crma_core.export, publishes its files
as artifacts owned by the export and settles the fee: captured on success, released on
failure."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.db.base import db_now, utcnow
from app.db.models import Account, Artifact, Job, ModelExport
from app.db.session import session_scope
from app.domain.errors import (
    Conflict,
    InsufficientCredit,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
)
from app.domain.ids import new_id
from app.domain.job_settings import load_job_settings
from app.domain.pricing import format_usd
from app.services import billing, outbox
from app.services.job_inputs import resolve_model_dir
from app.services.job_sources import download_adapter
from app.services.pagination import find_owned, page, scoped_select
from app.services.publishing import StoredFile, insert_artifacts, upload_bundle
from app.services.quotas import retry_after_s
from app.settings import Settings
from app.storage.factory import open_store

log = logging.getLogger(__name__)

EXPORT_TASK = "crma.export_job"
# An export running this long lost its worker (a 7B merge takes minutes): the reaper offers
# it again, or fails it after `max_attempts`.
STALE_RUNNING = timedelta(hours=2)


def export_price(settings: Settings, model: str) -> int:
    return int(settings.export_prices_micros.get(model, 0))


def create_export(session: Session, *, account_id: str, job_id: str, format: str, dtype: str,
                  settings: Settings) -> tuple[ModelExport, bool]:
    """(export, created). An export of this job, format and dtype that has not failed is
    returned as it is (created False)."""
    job = find_owned(session, Job, account_id, job_id)
    if job is None or job.kind != "fine_tune":
        raise NotFound(f"No fine-tuning job {job_id!r}.", param="job_id")
    if job.status != "succeeded":
        raise Conflict(f"Job {job.id} is {job.status}; only a succeeded job has weights to "
                       "export.", code="job_not_succeeded")
    crma = load_job_settings(job.settings).adapter.crma
    if format == "merged" and crma:
        raise Conflict(
            "This job trained CRMA next to LoRA, and CRMA cannot be merged into standard "
            "weights exactly (it is a linear map of the whole residual stream after every "
            "decoder layer; no weight of a standard layer computes it), so a plain merged "
            "folder would be a different model. Use format 'merged_crma' (the same merged "
            "weights plus CRMA as custom code: load with trust_remote_code=True), or train "
            "the job with adapter.crma=false.", param="format", code="crma_not_foldable")
    if format == "merged_crma" and not crma:
        raise InvalidRequest("This job trained no CRMA: use format 'merged'.", param="format",
                             code="invalid_format")
    # Serialises this account's exports: the daily count and the hold see each other.
    plan = session.scalar(select(Account.plan).where(Account.id == account_id)
                          .with_for_update())
    existing = session.scalars(select(ModelExport).where(
        ModelExport.job_id == job.id, ModelExport.format == format, ModelExport.dtype == dtype,
        ModelExport.status != "failed")).first()
    if existing is not None:
        return existing, False
    export_id, price = new_id("export"), 0
    if plan == "free":
        _check_daily_limit(session, account_id=account_id, limit=settings.free_exports_per_day)
    else:
        price = export_price(settings, job.model)
        if price:
            try:
                billing.place_hold(session, account_id=account_id, source_id=export_id,
                                   amount_micros=price, memo=f"export {export_id} of {job.id}")
            except InsufficientCredit:
                raise InsufficientCredit(
                    f"An export of {job.model} costs ${format_usd(price)}, more than this "
                    "account's available credit. Add credit and try again.") from None
    export = ModelExport(id=export_id, account_id=account_id, job_id=job.id, format=format,
                         dtype=dtype, status="queued", price_micros=price, cost_micros=0,
                         attempts=0, created_at=utcnow())
    session.add(export)
    session.flush()
    outbox.enqueue(session, task=EXPORT_TASK, queue=job.queue, payload={"export_id": export_id})
    return export, True


def _check_daily_limit(session: Session, *, account_id: str, limit: int) -> None:
    now = utcnow()
    midnight = datetime.combine(now.date(), time(), tzinfo=UTC)
    made = session.scalar(select(func.count()).select_from(ModelExport).where(
        ModelExport.account_id == account_id, ModelExport.created_at >= midnight,
        ModelExport.status != "failed"))
    if made >= limit:
        raise QuotaExceeded(
            f"The free plan includes {limit} exports per UTC day; this account has made "
            f"{made} today. Try again after midnight UTC, or upgrade to pro.",
            code="export_quota_exceeded", retry_after_s=retry_after_s(now))


def get_export(session: Session, *, account_id: str, job_id: str,
               export_id: str) -> ModelExport:
    export = find_owned(session, ModelExport, account_id, export_id, ModelExport.job_id == job_id)
    if export is None:
        raise NotFound(f"No export {export_id!r} of job {job_id!r}.", param="export_id")
    return export


def list_exports(session: Session, *, account_id: str, job_id: str, after: str | None,
                 limit: int) -> tuple[list[ModelExport], bool]:
    job = find_owned(session, Job, account_id, job_id)
    if job is None:
        raise NotFound(f"No fine-tuning job {job_id!r}.", param="job_id")
    statement = scoped_select(ModelExport, account_id).where(ModelExport.job_id == job.id)
    return page(session, statement, ModelExport, after=after, limit=limit)


def export_files(session: Session, *, account_id: str, export_id: str) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(
        Artifact.account_id == account_id, Artifact.owner_id == export_id)
        .order_by(Artifact.name)))


# -- the worker's side -----------------------------------------------------------------------

@dataclass(frozen=True)
class ExportWork:
    """What a worker needs to build an export."""

    id: str
    account_id: str
    job_id: str
    model: str
    format: str
    dtype: str
    attempt: int


def claim_export(settings: Settings, *, export_id: str) -> ExportWork | None:
    """queued -> running; None when another delivery has it or it is finished."""
    with session_scope(settings.resolved_database_url) as session:
        now = db_now(session)
        claimed = session.execute(
            update(ModelExport).where(ModelExport.id == export_id,
                                      ModelExport.status == "queued")
            .values(status="running", started_at=now, attempts=ModelExport.attempts + 1)
            .returning(ModelExport.attempts)
        ).scalar_one_or_none()
        if claimed is None:
            return None
        row = session.execute(
            select(ModelExport.account_id, ModelExport.job_id, ModelExport.format,
                   ModelExport.dtype, Job.model)
            .join(Job, Job.id == ModelExport.job_id).where(ModelExport.id == export_id)).one()
    return ExportWork(id=export_id, account_id=row.account_id, job_id=row.job_id,
                      model=row.model, format=row.format, dtype=row.dtype, attempt=claimed)


def model_dir_for(settings: Settings, work: ExportWork) -> Path:
    """The base model's directory on this worker (fetched once into its cache)."""
    return resolve_model_dir(settings=settings, store=open_store(settings), model_id=work.model)


def download_job_bundle(settings: Settings, work: ExportWork, target: Path) -> Path:
    """The job's adapter files (lora/ and the CRMA files) in `target`."""
    return download_adapter(open_store(settings), database_url=settings.resolved_database_url,
                            account_id=work.account_id, job_id=work.job_id, target=target)


def publish_export(settings: Settings, work: ExportWork, folder: Path) -> None:
    """Upload and verify the folder, then in one transaction: its artifact rows, succeeded,
    the fee captured."""
    files: list[StoredFile] = upload_bundle(
        store=open_store(settings), account_id=work.account_id, owner_id=work.id,
        bundle_dir=folder, attempt=work.attempt)
    with session_scope(settings.resolved_database_url) as session:
        if not _finish(session, work, status="succeeded",
                       values={"bytes": sum(f.bytes for f in files)}):
            return
        insert_artifacts(session, account_id=work.account_id, owner_id=work.id, files=files)
        price = session.scalar(select(ModelExport.price_micros)
                               .where(ModelExport.id == work.id))
        captured = billing.settle_hold(session, account_id=work.account_id,
                                       source_id=work.id, capture_micros=price)
        session.execute(update(ModelExport).where(ModelExport.id == work.id)
                        .values(cost_micros=captured))


def fail_export(settings: Settings, work: ExportWork, *, code: str, message: str) -> None:
    """Failed with a reason; the fee's hold is released (nothing is charged)."""
    with session_scope(settings.resolved_database_url) as session:
        if _finish(session, work, status="failed",
                   values={"error": {"code": code, "message": message[:1000], "param": None}}):
            billing.settle_hold(session, account_id=work.account_id, source_id=work.id,
                                capture_micros=0)


def recover_stale(settings: Settings) -> int:
    """The reaper's pass over exports whose worker vanished mid-build (running for
    STALE_RUNNING): queued and offered again, or failed with `worker_lost` (fee released)
    after `max_attempts`. Returns how many it touched."""
    with session_scope(settings.resolved_database_url) as session:
        now = db_now(session)
        query = (select(ModelExport.id, ModelExport.account_id, ModelExport.attempts, Job.queue)
                 .join(Job, Job.id == ModelExport.job_id)
                 .where(ModelExport.status == "running",
                        ModelExport.started_at < now - STALE_RUNNING))
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(of=ModelExport, skip_locked=True)
        stale = session.execute(query).all()
        for row in stale:
            if row.attempts >= settings.max_attempts:
                session.execute(update(ModelExport).where(ModelExport.id == row.id).values(
                    status="failed", finished_at=now, error={
                        "code": "worker_lost", "param": None,
                        "message": "The export's worker stopped responding on every attempt; "
                                   "nothing was charged."}))
                billing.settle_hold(session, account_id=row.account_id, source_id=row.id,
                                    capture_micros=0)
            else:
                session.execute(update(ModelExport).where(ModelExport.id == row.id)
                                .values(status="queued"))
                outbox.enqueue(session, task=EXPORT_TASK, queue=row.queue,
                               payload={"export_id": row.id})
    return len(stale)


def _finish(session: Session, work: ExportWork, *, status: str,
            values: dict[str, Any]) -> bool:
    """running -> status, fenced by the attempt (a newer claim wins)."""
    return bool(session.execute(
        update(ModelExport).where(ModelExport.id == work.id, ModelExport.status == "running",
                                  ModelExport.attempts == work.attempt)
        .values(status=status, finished_at=db_now(session), **values)
        .execution_options(synchronize_session=False)).rowcount)
