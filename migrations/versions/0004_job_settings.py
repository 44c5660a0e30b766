"""jobs.settings: one versioned JSON object instead of `hyperparameters` + `adapter`

Existing rows become version 1 (`{"version": 1, "hyperparameters": ..., "adapter": ...}`),
which app/domain/job_settings.py reads; new rows are written as the current version. The
downgrade gives back the two columns (projected from either version).

Revision ID: 0004
Revises: 0003
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _jobs(*names: str) -> sa.TableClause:
    return sa.table("jobs", sa.column("id", sa.String()),
                    *(sa.column(name, _JSON) for name in names))


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("settings", _JSON, nullable=True))
    jobs = _jobs("hyperparameters", "adapter", "settings")
    connection = op.get_bind()
    for row in connection.execute(sa.select(jobs.c.id, jobs.c.hyperparameters, jobs.c.adapter)):
        connection.execute(jobs.update().where(jobs.c.id == row.id).values(settings={
            "version": 1, "hyperparameters": row.hyperparameters or {},
            "adapter": row.adapter or {}}))
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("settings", existing_type=_JSON, nullable=False)
        batch.drop_column("hyperparameters")
        batch.drop_column("adapter")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("hyperparameters", _JSON, nullable=True))
        batch.add_column(sa.Column("adapter", _JSON, nullable=True))
    jobs = _jobs("hyperparameters", "adapter", "settings")
    connection = op.get_bind()
    for row in connection.execute(sa.select(jobs.c.id, jobs.c.settings)):
        stored = dict(row.settings or {})
        connection.execute(jobs.update().where(jobs.c.id == row.id).values(
            hyperparameters=stored.get("hyperparameters") or {},
            adapter=stored.get("adapter") or {}))
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("hyperparameters", existing_type=_JSON, nullable=False)
        batch.alter_column("adapter", existing_type=_JSON, nullable=False)
        batch.drop_column("settings")
