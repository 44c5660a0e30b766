"""Sequential continual-learning runs. Each stage is executed as a `Job` of kind
`continual_stage`, so leases, checkpoints, events and billing are shared with fine-tuning."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import BigIntPK, Base, JSONType, UTCDateTime, utcnow


class ContinualRun(Base):
    __tablename__ = "continual_runs"
    __table_args__ = (
        CheckConstraint("mode IN ('modular', 'frozen', 'naive')", name="mode"),
        Index("ix_continual_runs_account_created", "account_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    model: Mapped[str] = mapped_column(String(100))
    mode: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    seed: Mapped[int] = mapped_column(Integer, default=0)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    adapter: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    user_metadata: Mapped[dict[str, Any] | None] = mapped_column(
        "metadata", JSONType, nullable=True
    )
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    # Loss matrix L[t][i], drift per domain, advantage... written after each stage.
    report: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ContinualStage(Base):
    __tablename__ = "continual_stages"
    __table_args__ = (UniqueConstraint("run_id", "index"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("continual_runs.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    training_file_id: Mapped[str] = mapped_column(ForeignKey("files.id"))
    validation_file_id: Mapped[str] = mapped_column(ForeignKey("files.id"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
