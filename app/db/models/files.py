"""Uploaded training data."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, JSONType, UTCDateTime, utcnow


class File(Base):
    """A JSONL upload. `status` is `processed` only when every line validated; a file in
    `error` can never start a job."""

    __tablename__ = "files"
    __table_args__ = (
        CheckConstraint("status IN ('uploaded', 'processed', 'error')", name="status"),
        Index("ix_files_account_created", "account_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(40))
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(20), default="uploaded")
    format: Mapped[str | None] = mapped_column(String(40), nullable=True)
    example_count: Mapped[int] = mapped_column(Integer, default=0)
    # {"llama": 12345, "mistral": ..., "gemma2": ...}: tokens per model family.
    token_counts: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # How each family's count was made: "tokenizer:<model>", "tokenizer_sample:<model>" or
    # "heuristic:<n>_bytes_per_token" (app/services/tokens.py).
    token_estimate_method: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    # Per installed model, the exact row lengths of the rendered training sequences as
    # histograms (app/services/tokens.py): a job's trained tokens at its max_seq_len.
    token_lengths: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    # First errors only ([{"line", "field", "code", "message"}]); error_count has the total.
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    storage_key: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
