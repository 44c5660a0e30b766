"""Tenants and their API keys."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, CheckConstraint, Date, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime, utcnow


class Account(Base):
    """A tenant. Cached balances are kept in step with the ledger inside the same transaction;
    the CHECKs are the backstop that makes a concurrent over-hold fail instead of going negative."""

    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint("plan IN ('free', 'pro')", name="plan"),
        CheckConstraint("credit_available_micros >= 0", name="available_nonneg"),
        CheckConstraint("credit_held_micros >= 0", name="held_nonneg"),
        CheckConstraint("runs_used >= 0", name="runs_nonneg"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    plan: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    credit_available_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    credit_held_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    # Free-tier daily run counter: reset by the same conditional UPDATE that reserves a run.
    runs_day: Mapped[date | None] = mapped_column(Date, nullable=True)
    runs_used: Mapped[int] = mapped_column(Integer, default=0)


class ApiKey(Base):
    """Only a digest of the key is stored; the prefix is shown in listings."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="default")
    prefix: Mapped[str] = mapped_column(String(20))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
