"""Calls of a model through the API (chat and text completions): one row per request, and
the free plan's daily token allowance."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, CheckConstraint, Date, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime, utcnow

INFERENCE_STATUSES = ("running", "completed", "failed", "cancelled", "expired")


class InferenceRequest(Base):
    """One completion request: admitted (`running`: a hold or an allowance reservation of
    `reserved_tokens`), then settled once with the tokens the engine reported. The id is the
    completion's id (`chatcmpl-...`, `cmpl-...`) and the ledger postings' source id, so a
    replayed settlement moves nothing."""

    __tablename__ = "inference_requests"
    __table_args__ = (
        CheckConstraint(
            "status IN ('running', 'completed', 'failed', 'cancelled', 'expired')",
            name="status"),
        CheckConstraint("prompt_tokens >= 0 AND completion_tokens >= 0", name="tokens_nonneg"),
        Index("ix_inference_requests_account_created", "account_id", "created_at"),
        Index("ix_inference_requests_status_created", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    # The name the request used (ft:..., a base model id) and the base model that priced it.
    model: Mapped[str] = mapped_column(String(300))
    base_model: Mapped[str] = mapped_column(String(100))
    plan: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(20), default="running")
    reserved_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    hold_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    # The UTC day whose free allowance the reservation was taken from (free plan).
    allowance_day: Mapped[date | None] = mapped_column(Date, nullable=True)
    domain: Mapped[str | None] = mapped_column(String(100), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class InferenceAllowance(Base):
    """Tokens a free account used (or holds reserved) on one UTC day. A reservation is one
    INSERT ... ON CONFLICT DO UPDATE ... WHERE used + n <= limit, so concurrent requests can
    never together pass the limit."""

    __tablename__ = "inference_allowances"
    __table_args__ = (CheckConstraint("tokens_used >= 0", name="used_nonneg"),)

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    tokens_used: Mapped[int] = mapped_column(BigInteger, default=0)
