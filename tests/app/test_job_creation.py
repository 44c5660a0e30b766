"""Job creation writes (PostgreSQL, where the job, its event and outbox row are one statement,
and SQLite, where they are three): the rows, the returned transient Job, the hold's posting."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, inspect, select, text

from app.db.models import Account, Job, JobEvent, LedgerEntry, LedgerTransaction, OutboxMessage
from app.db.session import session_scope
from app.domain.id_format import is_id
from app.domain.ids import PREFIXES, new_id
from app.services import accounts, billing, job_creation, tokens
from tests.factories import TEST_SETTINGS, insert_file

MODEL = "tinyllama-1.1b-chat"


def pro_account(db_url: str, credit_micros: int = 10_000_000) -> str:
    with session_scope(db_url) as session:
        account, _ = accounts.create_account(session, name="creator", plan="pro", pepper="")
        billing.add_credit(session, account_id=account.id, amount_micros=credit_micros)
    return account.id


def create(db_url: str, account_id: str, *, enqueue: bool = True,
           metadata: dict[str, str] | None = None) -> Job:
    with session_scope(db_url) as session:
        file_id = insert_file(session, account_id=account_id,
                              token_counts={"llama": 5000}, example_count=10).id
        draft = job_creation.draft_job(session, account_id=account_id, model=MODEL,
                               training_file=file_id, validation_file=None,
                               hyperparameters={"n_epochs": 2}, adapter=None, seed=5)
        job, admitted = job_creation.insert_job(session, account_id=account_id, draft=draft,
                                        suffix="s", metadata=metadata, enqueue=enqueue,
                                        settings=TEST_SETTINGS)
        assert inspect(job).transient  # presented, never part of the unit of work
        assert (job.hold_micros, job.token_budget) == (admitted.hold_micros,
                                                       admitted.token_budget)
    return job


@pytest.mark.parametrize("metadata", [None, {"k": "v"}])
def test_returned_job_is_the_inserted_row(db_url: str, metadata: dict | None) -> None:
    account_id = pro_account(db_url)
    job = create(db_url, account_id, metadata=metadata)
    with session_scope(db_url) as session:
        row = session.get(Job, job.id)
        for attribute in Job.__mapper__.column_attrs:
            stored, returned = getattr(row, attribute.key), getattr(job, attribute.key)
            if isinstance(stored, datetime) and stored.tzinfo is None:  # SQLite: naive UTC
                stored = stored.replace(tzinfo=UTC)
            assert stored == returned, attribute.key
        # A heuristic count (no token_lengths): 2 epochs x 5000, with the heuristic's margin.
        assert row.estimated_tokens == 2 * 5000 * tokens.HEURISTIC_MARGIN and row.hold_micros > 0
        # As with an ORM flush: a None metadata is JSON null, unset JSON columns SQL NULL.
        nulls = session.execute(text(
            "SELECT metadata IS NULL, error IS NULL, result IS NULL FROM jobs WHERE id = :id"
        ), {"id": job.id}).one()
        assert tuple(nulls) == (False, True, True)


@pytest.mark.parametrize("enqueue", [True, False])
def test_created_event_outbox_row_and_hold(db_url: str, enqueue: bool) -> None:
    account_id = pro_account(db_url)
    job = create(db_url, account_id, enqueue=enqueue)
    with session_scope(db_url) as session:
        event = session.scalars(select(JobEvent).where(JobEvent.job_id == job.id)).one()
        assert (event.message, event.dedupe_key, event.level, event.type, event.attempt) == (
            f"Created fine-tuning job: {job.id}", "created", "info", "message", 0)
        assert is_id(event.id) and event.id.startswith("ftevent-")
        messages = session.scalars(
            select(OutboxMessage).where(OutboxMessage.payload["job_id"].as_string() == job.id)
        ).all()
        assert [(m.task, m.queue, m.attempts, m.published_at) for m in messages] == (
            [("crma.run_job", job.queue, 0, None)] if enqueue else [])
        assert all(m.available_at >= m.created_at for m in messages)
        hold = session.scalars(select(LedgerTransaction).where(
            LedgerTransaction.source_id == job.id)).one()
        legs = session.execute(select(LedgerEntry.bucket, LedgerEntry.amount_micros)
                               .where(LedgerEntry.transaction_id == hold.id)
                               .order_by(LedgerEntry.id)).all()
        assert hold.kind == "hold" and hold.account_id == account_id
        assert [tuple(leg) for leg in legs] == [("available", -job.hold_micros),
                                                ("held", job.hold_micros)]
        account = session.get(Account, account_id)
        assert (account.credit_available_micros, account.credit_held_micros) == (
            10_000_000 - job.hold_micros, job.hold_micros)
        assert billing.reconcile(session, account_id).ok


def test_a_second_hold_for_one_source_moves_nothing(db_url: str) -> None:
    account_id = pro_account(db_url, credit_micros=1_000)
    with session_scope(db_url) as session:
        billing.place_hold(session, account_id=account_id, source_id="src-1", amount_micros=300)
        with pytest.raises(ValueError, match="already exists"), session.begin_nested():
            billing.place_hold(session, account_id=account_id, source_id="src-1",
                               amount_micros=200)
        account = session.get(Account, account_id, populate_existing=True)
        assert (account.credit_available_micros, account.credit_held_micros) == (700, 300)
        assert session.scalar(select(func.count()).select_from(LedgerTransaction).where(
            LedgerTransaction.source_id == "src-1")) == 1
        assert billing.reconcile(session, account_id).ok


def test_new_ids_keep_their_shape_and_do_not_repeat() -> None:
    for kind, prefix in PREFIXES.items():
        value = new_id(kind)
        assert is_id(value) and value.startswith(prefix + "-") and len(value) == len(prefix) + 25
    ids = {new_id("job")[6:] for _ in range(20_000)}
    assert len(ids) == 20_000
    # Every one of the 62 characters turns up (bytes map onto all of them, not a subset).
    assert len(set("".join(ids))) == 62
