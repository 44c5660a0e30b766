"""files.token_lengths (exact per-model row lengths of an upload) and model_installs (the
install state of each base model, for GET /v1/models and the jobs that wait for it)

Revision ID: 0007
Revises: 0006
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("token_lengths", _JSON, nullable=True))
    op.create_table(
        "model_installs",
        sa.Column("model_id", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("error", sa.String(length=1000), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('installing', 'installed', 'failed')",
                           name=op.f("ck_model_installs_status")),
        sa.PrimaryKeyConstraint("model_id", name=op.f("pk_model_installs")),
    )


def downgrade() -> None:
    op.drop_table("model_installs")
    with op.batch_alter_table("files") as batch:
        batch.drop_column("token_lengths")
