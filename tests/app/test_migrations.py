"""Migrations: upgrade, downgrade and upgrade again on a populated database (PostgreSQL and
SQLite), and the models match the migrated schema exactly (autogenerate finds no diff)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, inspect, select

import app.db.models  # noqa: F401 - registers every table
from app.db.base import Base, utcnow
from app.db.migrate import alembic_config, downgrade, upgrade
from app.db.models import (
    Account,
    Artifact,
    Checkpoint,
    ContinualRun,
    ContinualStage,
    File,
    Job,
    JobEvent,
    LedgerTransaction,
)
from app.db.session import normalize_url, session_scope
from app.domain.ids import new_id
from app.services import accounts, billing, events
from tests.factories import insert_file, insert_job

pytestmark = pytest.mark.integration

COUNTED = (Account, File, Job, JobEvent, ContinualRun, ContinualStage, Artifact, Checkpoint,
           LedgerTransaction)


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("fresh_pg_url")
    return f"sqlite:///{tmp_path / 'migrate.sqlite'}"


def _populate(url: str) -> None:
    with session_scope(url) as session:
        account, _ = accounts.create_account(session, name="populated", plan="pro", pepper="")
        billing.add_credit(session, account_id=account.id, amount_micros=5_000_000, memo="seed")
        file = insert_file(session, account_id=account.id,
                           token_counts={"llama": 10}, token_estimate_method={"llama": "x"})
        job = insert_job(session, account_id=account.id, training_file_id=file.id,
                         status="succeeded", trained_tokens=42)
        events.record_event(session, job_id=job.id, message="hello", dedupe_key="k")
        session.add(Checkpoint(id=new_id("checkpoint"), job_id=job.id, step=10, attempt=1,
                               storage_prefix="p/", metrics={"loss": 1.0}, created_at=utcnow()))
        run = ContinualRun(id=new_id("continual_run"), account_id=account.id, model="m",
                           mode="modular", status="queued", seed=0, hyperparameters={},
                           adapter={}, created_at=utcnow())
        session.add(run)
        session.flush()
        stage_job = insert_job(session, account_id=account.id, training_file_id=file.id,
                               kind="continual_stage", continual_run_id=run.id, stage_index=0)
        session.add(ContinualStage(run_id=run.id, index=0, name="a", training_file_id=file.id,
                                   validation_file_id=file.id, job_id=stage_job.id))
        session.add(Artifact(owner_id=job.id, account_id=account.id, name="lora/a.json",
                             bytes=2, sha256="0" * 64, storage_key="k", created_at=utcnow()))


def _counts(url: str) -> dict[str, int]:
    with session_scope(url) as session:
        return {m.__tablename__: session.scalar(select(func.count()).select_from(m))
                for m in COUNTED}


def _revisions() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def test_upgrade_downgrade_upgrade_on_a_populated_database(empty_url: str) -> None:
    revisions = _revisions()
    assert revisions[0] == "0001" and len(set(revisions)) == len(revisions)
    upgrade(empty_url)
    _populate(empty_url)
    populated = _counts(empty_url)
    assert all(populated.values())
    # Step down one revision at a time to the initial schema: the data stays.
    for target in reversed(revisions[:-1]):
        downgrade(empty_url, target)
        assert _counts(empty_url) == populated
    inspector = inspect(create_engine(normalize_url(empty_url)))
    columns = {c["name"] for c in inspector.get_columns("files")}
    assert "token_estimate_method" not in columns
    upgrade(empty_url)
    assert _counts(empty_url) == populated
    _populate(empty_url)  # the upgraded schema takes new rows
    # All the way down (every table dropped, data and all) and up again.
    downgrade(empty_url, "base")
    assert set(inspect(create_engine(normalize_url(empty_url))).get_table_names()) <= {
        "alembic_version"}
    upgrade(empty_url)
    assert sum(_counts(empty_url).values()) == 0


def test_models_match_the_migrations(empty_url: str) -> None:
    upgrade(empty_url)
    engine = create_engine(normalize_url(empty_url))
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []


def test_one_head() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1


def test_job_settings_survive_a_downgrade_and_upgrade_as_version_1(empty_url: str) -> None:
    """0004 folds `hyperparameters` + `adapter` into `settings`: rows written before it load
    as version 1, and a downgrade gives the two columns back."""
    from sqlalchemy import text

    from app.domain.job_settings import (
        AdapterSettings,
        Hyperparameters,
        JobSettings,
        load_job_settings,
    )

    upgrade(empty_url)
    chosen = JobSettings(hyperparameters=Hyperparameters(n_epochs=2, batch_size=8),
                         adapter=AdapterSettings(crma=False, lora_r=4))
    with session_scope(empty_url) as session:
        account, _ = accounts.create_account(session, name="settings", plan="pro", pepper="")
        job_id = insert_job(session, account_id=account.id, job_settings=chosen).id
    downgrade(empty_url, "0003")
    engine = create_engine(normalize_url(empty_url))
    with engine.connect() as connection:
        row = connection.execute(text("SELECT hyperparameters, adapter FROM jobs WHERE id = :id"),
                                 {"id": job_id}).one()
    engine.dispose()
    stored = [value if isinstance(value, dict) else json.loads(value) for value in row]
    assert stored == [chosen.hyperparameters.model_dump(), chosen.adapter.model_dump()]
    upgrade(empty_url)
    with session_scope(empty_url) as session:
        settings = session.get(Job, job_id).settings
    assert settings["version"] == 1 and load_job_settings(settings) == chosen
