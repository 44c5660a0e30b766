"""Write transactions for async routes (app/db/transactions.py): on PostgreSQL the sync
service code runs in a greenlet on the event loop's asyncpg engine, on SQLite in a thread;
either way the work's session commits or rolls back as one transaction. A database that
cannot be reached makes job creation a 503 with Retry-After, not a 500."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select

from app.db.models import Job, JobEvent
from app.db.reader import DatabaseUnavailable
from app.db.session import session_scope
from app.db.transactions import AsyncpgTransactions, ThreadTransactions, open_transactions
from app.schemas.jobs import JobCreate
from app.services import job_creation
from tests.app.helpers import create_tenant, make_settings
from tests.factories import TEST_SETTINGS, insert_file
from tests.conftest import free_port


def create_job_work(account_id: str, file_id: str, *, fail_after: bool = False):  # noqa: ANN201
    """A job creation in the work's own transaction (as the idempotency wrapper runs it),
    recording which thread ran it; `fail_after` raises once the rows are written."""
    def work(open_session):  # noqa: ANN001, ANN202
        session = open_session()
        try:
            job, _ = job_creation.create_job(session, account_id=account_id, spec=JobCreate(
                model="smollm2-135m-instruct", training_file=file_id), settings=TEST_SETTINGS)
            if fail_after:
                raise RuntimeError("after the inserts")
            session.commit()
            return job.id, threading.current_thread()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
    return work


def count_jobs(url: str, account_id: str) -> tuple[int, int]:
    with session_scope(url) as session:
        job_count = session.scalar(select(func.count()).select_from(Job)
                                   .where(Job.account_id == account_id))
        event_count = session.scalar(select(func.count()).select_from(JobEvent)
                                     .join(Job, Job.id == JobEvent.job_id)
                                     .where(Job.account_id == account_id))
    return job_count, event_count


def test_the_work_commits_or_rolls_back_as_one_transaction(db_url: str) -> None:
    tenant = create_tenant(db_url, plan="pro", credit_micros=50_000_000)
    with session_scope(db_url) as session:
        file_id = insert_file(session, account_id=tenant.account_id).id
    transactions = open_transactions(db_url)
    expected_type = ThreadTransactions if "sqlite" in db_url else AsyncpgTransactions
    assert isinstance(transactions, expected_type)

    async def both() -> tuple[str, threading.Thread]:
        try:
            with pytest.raises(RuntimeError):
                await transactions.run(create_job_work(tenant.account_id, file_id,
                                                       fail_after=True))
            return await transactions.run(create_job_work(tenant.account_id, file_id))
        finally:
            await transactions.close()

    job_id, thread = asyncio.run(both())
    # Only the second job exists, with its created event: the first rolled back entirely.
    assert count_jobs(db_url, tenant.account_id) == (1, 1)
    with session_scope(db_url) as session:
        assert session.get(Job, job_id).status == "queued"
    # PostgreSQL: on the event loop's own thread (a greenlet); SQLite: a worker thread.
    assert (thread is threading.main_thread()) == ("sqlite" not in db_url)


def test_each_event_loop_gets_its_own_engine_and_a_closed_loop_is_forgotten(
    pg_url: str,
) -> None:
    tenant = create_tenant(pg_url, plan="pro", credit_micros=50_000_000)
    with session_scope(pg_url) as session:
        file_id = insert_file(session, account_id=tenant.account_id).id
    transactions = AsyncpgTransactions(pg_url, 2.0)

    async def create() -> str:
        return (await transactions.run(create_job_work(tenant.account_id, file_id)))[0]

    # Loops in turn, none closed explicitly (as test clients without lifespan do).
    assert len({asyncio.run(create()) for _ in range(4)}) == 4
    assert len(transactions._engines) == 1  # the engines of the three closed loops went
    assert count_jobs(pg_url, tenant.account_id) == (4, 4)


def test_idle_connections_are_pinged_on_the_event_loop_too(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.db import session as sessions

    tenant = create_tenant(pg_url, plan="pro", credit_micros=50_000_000)
    with session_scope(pg_url) as session:
        file_id = insert_file(session, account_id=tenant.account_id).id
    monkeypatch.setattr(sessions, "PING_IDLE_AFTER_S", 0.0)  # every reuse pings first
    transactions = AsyncpgTransactions(pg_url, 2.0)
    connects: list[int] = []

    async def create_twice() -> None:
        event.listen(transactions._engine().sync_engine, "connect",
                     lambda *_: connects.append(1))
        try:
            for _ in range(2):
                await transactions.run(create_job_work(tenant.account_id, file_id))
        finally:
            await transactions.close()

    asyncio.run(create_twice())
    # A failed ping would have discarded the connection and opened another one.
    assert connects == [1] and count_jobs(pg_url, tenant.account_id) == (2, 2)


def test_an_unreachable_database_makes_creation_a_503_with_retry_after(
    tmp_path: Path, pg_url: str
) -> None:
    from app.main import create_app

    tenant = create_tenant(pg_url, plan="pro", credit_micros=50_000_000)
    with session_scope(pg_url) as session:
        file_id = insert_file(session, account_id=tenant.account_id).id
    app = create_app(make_settings(tmp_path, pg_url))
    body = {"model": "smollm2-135m-instruct", "training_file": file_id}
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/v1/fine_tuning/jobs", json=body,
                           headers=tenant.headers).status_code == 201
        # Writes now go to a port nobody listens on (authentication stays cached).
        app.state.transactions = AsyncpgTransactions(
            f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere", 1.0)
        response = client.post("/v1/fine_tuning/jobs", json=body,
                               headers={**tenant.headers, "Idempotency-Key": "k1"})
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "2"
        assert response.json()["error"]["code"] == "database_unavailable"

    async def direct() -> None:
        await app.state.transactions.run(create_job_work(tenant.account_id, file_id))

    with pytest.raises(DatabaseUnavailable):
        asyncio.run(direct())
    assert count_jobs(pg_url, tenant.account_id) == (1, 1)


def test_admissions_commit_without_waiting_for_the_wal_flush(pg_url: str) -> None:
    """`durable=False` (the API's admissions) sets synchronous_commit off on its own
    connections; the default transactions (job creation) stay durable."""
    from sqlalchemy import text

    def setting(open_session):  # noqa: ANN001, ANN202
        session = open_session()
        try:
            return session.scalar(text("SHOW synchronous_commit"))
        finally:
            session.rollback()
            session.close()

    async def both() -> tuple[str, str]:
        durable, admissions = open_transactions(pg_url), open_transactions(pg_url, durable=False)
        try:
            return await durable.run(setting), await admissions.run(setting)
        finally:
            await durable.close()
            await admissions.close()

    assert asyncio.run(both()) == ("on", "off")
