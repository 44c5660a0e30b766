"""inference requests (chat and text completions) and the free plan's daily token allowance

Revision ID: 0006
Revises: 0005
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inference_requests",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("model", sa.String(length=300), nullable=False),
        sa.Column("base_model", sa.String(length=100), nullable=False),
        sa.Column("plan", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("reserved_tokens", sa.BigInteger(), nullable=False),
        sa.Column("hold_micros", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_micros", sa.BigInteger(), nullable=False),
        sa.Column("allowance_day", sa.Date(), nullable=True),
        sa.Column("domain", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'completed', 'failed', 'cancelled', 'expired')",
            name=op.f("ck_inference_requests_status")),
        sa.CheckConstraint("prompt_tokens >= 0 AND completion_tokens >= 0",
                           name=op.f("ck_inference_requests_tokens_nonneg")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"],
                                name=op.f("fk_inference_requests_account_id_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inference_requests")),
    )
    op.create_index("ix_inference_requests_account_created", "inference_requests",
                    ["account_id", "created_at"], unique=False)
    op.create_index("ix_inference_requests_status_created", "inference_requests",
                    ["status", "created_at"], unique=False)
    op.create_table(
        "inference_allowances",
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("tokens_used", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("tokens_used >= 0", name=op.f("ck_inference_allowances_used_nonneg")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"],
                                name=op.f("fk_inference_allowances_account_id_accounts")),
        sa.PrimaryKeyConstraint("account_id", "day", name=op.f("pk_inference_allowances")),
    )


def downgrade() -> None:
    op.drop_table("inference_allowances")
    op.drop_index("ix_inference_requests_status_created", table_name="inference_requests")
    op.drop_index("ix_inference_requests_account_created", table_name="inference_requests")
    op.drop_table("inference_requests")
