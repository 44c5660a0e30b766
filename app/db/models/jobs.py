"""Fine-tuning jobs (also the unit of work of a continual-run stage), their events,
checkpoints and published artifacts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import BigIntPK, Base, JSONType, UTCDateTime, utcnow

JOB_STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")


class Job(Base):
    """One training run. The worker owns it through a lease: `attempt` is the fencing token
    every worker write must match, so a stale worker cannot overwrite a newer attempt."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('validating_files', 'queued', 'running', 'succeeded', 'failed', "
            "'cancelled')",
            name="status",
        ),
        CheckConstraint("kind IN ('fine_tune', 'continual_stage')", name="kind"),
        CheckConstraint("trained_tokens >= 0", name="trained_nonneg"),
        Index("ix_jobs_account_kind_created", "account_id", "kind", "created_at"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        Index("ix_jobs_status_queued", "status", "queued_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    kind: Mapped[str] = mapped_column(String(20), default="fine_tune")
    model: Mapped[str] = mapped_column(String(100))
    training_file_id: Mapped[str] = mapped_column(ForeignKey("files.id"))
    validation_file_id: Mapped[str | None] = mapped_column(ForeignKey("files.id"), nullable=True)
    # The job's settings (app/domain/job_settings.py): versioned JSON, read with
    # `load_job_settings`.
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    # `metadata` is reserved by SQLAlchemy's declarative base; the attribute is `user_metadata`.
    user_metadata: Mapped[dict[str, Any] | None] = mapped_column(
        "metadata", JSONType, nullable=True
    )
    max_cost_micros: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    status: Mapped[str] = mapped_column(String(20), default="queued")
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    queue: Mapped[str] = mapped_column(String(40), default="small")

    # Billing: estimate at admission, hold placed for it, what was trained and captured.
    estimated_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    token_budget: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    trained_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    hold_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)

    # Lease (PostgreSQL is the source of truth; Celery only rings the doorbell).
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_checkpoint_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    stop_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)

    continual_run_id: Mapped[str | None] = mapped_column(
        ForeignKey("continual_runs.id"), nullable=True, index=True
    )
    stage_index: Mapped[int | None] = mapped_column(Integer, nullable=True)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # When the job's latest offer to the broker (outbox row) became or becomes deliverable.
    # The reaper re-offers a job queued and not offered for `stale_queued_s`; conditional
    # UPDATEs of this column let one reaper, or one duplicate delivery, write a re-offer.
    offered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class JobEvent(Base):
    """Ordered by the integer primary key. `dedupe_key` (e.g. `metrics:step:120`) makes a
    replayed write a no-op, so a resumed attempt never duplicates a step's event."""

    __tablename__ = "job_events"
    __table_args__ = (
        UniqueConstraint("job_id", "dedupe_key"),
        Index("ix_job_events_job_seq", "job_id", "seq"),
    )

    seq: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    level: Mapped[str] = mapped_column(String(10), default="info")
    type: Mapped[str] = mapped_column(String(20), default="message")
    message: Mapped[str] = mapped_column(String(2000))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    dedupe_key: Mapped[str | None] = mapped_column(String(200), nullable=True)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    storage_prefix: Mapped[str] = mapped_column(String(500))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Artifact(Base):
    """A verified object of a published adapter bundle (job or continual run)."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("owner_id", "name"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    owner_id: Mapped[str] = mapped_column(String(40), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    name: Mapped[str] = mapped_column(String(300))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(600))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
