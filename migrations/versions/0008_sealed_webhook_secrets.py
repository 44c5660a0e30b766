"""webhook_endpoints.secret sealed at rest (wider: a Fernet token) and secret_hint kept apart

Revision ID: 0008
Revises: 0007
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ENDPOINTS = sa.table("webhook_endpoints", sa.column("id", sa.String),
                      sa.column("secret", sa.String), sa.column("secret_hint", sa.String))


def upgrade() -> None:
    with op.batch_alter_table("webhook_endpoints") as batch:
        batch.alter_column("secret", existing_type=sa.String(length=100),
                           type_=sa.String(length=300), existing_nullable=False)
        batch.add_column(sa.Column("secret_hint", sa.String(length=20), nullable=True))
    # Every secret stored so far is unsealed: its hint is its own last characters (the
    # format of app/domain/webhooks.py's secret_hint). `crma admin reseal-webhook-secrets`
    # seals them once CRMA_WEBHOOK_SECRET_KEYS is set.
    connection = op.get_bind()
    for row in connection.execute(sa.select(_ENDPOINTS.c.id, _ENDPOINTS.c.secret)).all():
        connection.execute(_ENDPOINTS.update().where(_ENDPOINTS.c.id == row.id)
                           .values(secret_hint="whsec_…" + row.secret[-4:]))
    with op.batch_alter_table("webhook_endpoints") as batch:
        batch.alter_column("secret_hint", existing_type=sa.String(length=20), nullable=False)


def downgrade() -> None:
    sealed = op.get_bind().execute(sa.select(sa.func.count()).select_from(_ENDPOINTS).where(
        _ENDPOINTS.c.secret.like("fernet:%"))).scalar_one()
    if sealed:
        # 0007's code would sign with the sealed token, and its column is too narrow for it.
        raise RuntimeError(f"{sealed} webhook secret(s) are sealed; revision 0007 cannot read "
                           "them. Delete those endpoints (or upgrade again) first.")
    with op.batch_alter_table("webhook_endpoints") as batch:
        batch.drop_column("secret_hint")
        batch.alter_column("secret", existing_type=sa.String(length=300),
                           type_=sa.String(length=100), existing_nullable=False)
