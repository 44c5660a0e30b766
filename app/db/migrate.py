"""Run Alembic programmatically (used by `crma dev`, the admin CLI and tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

# The repository root (editable install, tests); an installed copy (Dockerfile.gpu) runs from
# its working directory, which holds alembic.ini and migrations/.
ROOT = Path(__file__).resolve().parents[2]
if not (ROOT / "migrations").is_dir():
    ROOT = Path.cwd()


def alembic_config(database_url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    # ConfigParser interpolation would choke on '%' in passwords.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)
