"""The install state of each base model (app/services/model_installs.py writes it)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime, utcnow


class ModelInstall(Base):
    """One row per model an installer has started on: `installing` (updated_at is its
    heartbeat), `installed` or `failed` (with the error). No row: nobody is installing it."""

    __tablename__ = "model_installs"
    __table_args__ = (
        CheckConstraint("status IN ('installing', 'installed', 'failed')", name="status"),
    )

    model_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    status: Mapped[str] = mapped_column(String(20))
    error: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
