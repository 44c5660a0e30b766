"""The async hot reads (app/services/job_reads.py through app/db/reader.py) give the same
answers as the ORM reads they replace, on PostgreSQL (asyncpg) and SQLite (engine in a
thread); a database that cannot be reached is a 503 with Retry-After, not a 500."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sqlalchemy import select

from app.domain.job_settings import AdapterSettings, Hyperparameters, JobSettings
from app.api.presenters import event_public, job_public
from app.db.base import utcnow
from app.db.models import Job, JobEvent
from app.db.reader import AsyncpgReader, DatabaseUnavailable, open_reader
from app.db.session import session_scope
from app.domain.errors import InvalidRequest, NotFound
from app.services import events, job_reads, jobs
from app.services.pagination import page, scoped_select
from tests.app.helpers import create_tenant, make_settings
from tests.factories import insert_job
from tests.conftest import free_port


def seed(url: str) -> tuple[str, list[str], list[str]]:
    """An account with 5 fine-tunes (distinct and equal created_at), one continual stage,
    a finished job with JSON fields set, and 7 events on the first job."""
    tenant = create_tenant(url, plan="pro")
    base = utcnow() - timedelta(hours=1)
    with session_scope(url) as session:
        ids = [insert_job(session, account_id=tenant.account_id,
                          created_at=base + timedelta(seconds=i // 2)).id for i in range(5)]
        insert_job(session, account_id=tenant.account_id, kind="continual_stage",
                   created_at=base + timedelta(seconds=10))
        ids.append(insert_job(
            session, account_id=tenant.account_id, status="succeeded", trained_tokens=1234,
            job_settings=JobSettings(
                hyperparameters=Hyperparameters(n_epochs=2, batch_size=4,
                                                learning_rate_multiplier=0.5),
                adapter=AdapterSettings(rank=8)),
            user_metadata={"team": "a"}, suffix="x",
            error=None, started_at=base, finished_at=base + timedelta(minutes=3),
            created_at=base + timedelta(seconds=20)).id)
        event_ids = []
        for i in range(7):
            events.record_event(session, job_id=ids[0], message=f"step {i}",
                                data={"step": i} if i % 2 else None)
        event_ids = [e.id for e in events.list_events(session, job_id=ids[0], limit=100)]
    return tenant.account_id, ids, event_ids


def run(coroutine):  # noqa: ANN001, ANN201 - test helper
    return asyncio.run(coroutine)


def test_async_reads_answer_like_the_orm_reads(db_url: str) -> None:
    account_id, job_ids, event_ids = seed(db_url)
    reader = open_reader(db_url)

    async def read_all():  # noqa: ANN202
        try:
            one = [await job_reads.get_job(reader, account_id=account_id, job_id=j)
                   for j in job_ids]
            pages, after = [], None
            while True:
                rows, more = await job_reads.list_jobs(reader, account_id=account_id,
                                                       after=after, limit=2)
                pages.append(([r.id for r in rows], more))
                if not more:
                    break
                after = rows[-1].id
            seq = await job_reads.event_seq(reader, job_id=job_ids[0], event_id=event_ids[2])
            newest, more_events = await job_reads.list_events(
                reader, job_id=job_ids[0], before_seq=None, limit=3)
            older, _ = await job_reads.list_events(reader, job_id=job_ids[0], before_seq=seq,
                                                   limit=10)
            return one, pages, newest, more_events, older
        finally:
            await reader.close()

    one, pages, newest, more_events, older = run(read_all())
    throughput = {"tinyllama-1.1b-chat": 1000}
    with session_scope(db_url) as session:
        for record, job_id in zip(one, job_ids, strict=True):
            orm = jobs.get_job(session, account_id=account_id, job_id=job_id)
            assert job_public(record, throughput=throughput) == job_public(orm,
                                                                           throughput=throughput)
        fine_tunes = scoped_select(Job, account_id).where(Job.kind == "fine_tune")
        expected_pages, after = [], None
        while True:
            rows, more = page(session, fine_tunes, Job, after=after, limit=2)
            expected_pages.append(([r.id for r in rows], more))
            if not more:
                break
            after = rows[-1].id
        orm_events = events.list_events(session, job_id=job_ids[0], limit=100)
        seq = session.scalar(select(JobEvent.seq).where(JobEvent.id == event_ids[2]))
        expected_older = events.list_events(session, job_id=job_ids[0], after_seq=seq, limit=10)
        assert [event_public(e) for e in newest] == [event_public(e) for e in orm_events[:3]]
        assert [event_public(e) for e in older] == [event_public(e) for e in expected_older]
    assert pages == expected_pages
    assert sum(len(ids) for ids, _ in pages) == 6  # the continual stage is not listed
    assert more_events is True
    assert one[-1].user_metadata == {"team": "a"}
    assert one[-1].settings["hyperparameters"]["n_epochs"] == 2


def test_async_reads_refuse_what_the_orm_reads_refuse(db_url: str) -> None:
    account_id, job_ids, _ = seed(db_url)
    other = create_tenant(db_url, plan="pro")
    reader = open_reader(db_url)

    async def attempts():  # noqa: ANN202
        outcomes = []
        try:
            for call in (
                job_reads.get_job(reader, account_id=other.account_id, job_id=job_ids[0]),
                job_reads.get_job(reader, account_id=account_id, job_id="ftjob-\x00" + "x" * 9000),
                job_reads.list_jobs(reader, account_id=other.account_id, after=job_ids[0],
                                    limit=5),
                job_reads.list_jobs(reader, account_id=account_id, after="junk", limit=5),
                job_reads.event_seq(reader, job_id=job_ids[1], event_id="event-nope"),
            ):
                try:
                    await call
                    outcomes.append(None)
                except (NotFound, InvalidRequest) as error:
                    outcomes.append((type(error).__name__, error.code))
        finally:
            await reader.close()
        return outcomes

    assert run(attempts()) == [
        ("NotFound", "not_found"), ("NotFound", "not_found"),
        ("InvalidRequest", "invalid_cursor"), ("InvalidRequest", "invalid_cursor"),
        ("InvalidRequest", "invalid_cursor"),
    ]


def test_each_event_loop_gets_its_own_pool_and_a_closed_loop_is_forgotten(pg_url: str) -> None:
    account_id, job_ids, _ = seed(pg_url)
    reader = AsyncpgReader(pg_url, 2.0)

    async def read() -> str:
        return (await job_reads.get_job(reader, account_id=account_id, job_id=job_ids[0])).id

    # Three loops in turn (as test clients without lifespan do); none is closed explicitly.
    assert [asyncio.run(read()) for _ in range(3)] == [job_ids[0]] * 3
    asyncio.run(read())
    assert len(reader._pools) == 1  # the pools of the three closed loops were dropped


def test_an_unreachable_database_is_a_503_with_retry_after(
    tmp_path: Path, pg_url: str
) -> None:
    from app.main import create_app

    tenant = create_tenant(pg_url, plan="pro")
    with session_scope(pg_url) as session:
        job_id = insert_job(session, account_id=tenant.account_id).id
    app = create_app(make_settings(tmp_path, pg_url))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get(f"/v1/fine_tuning/jobs/{job_id}",
                          headers=tenant.headers).status_code == 200
        # The reads now go to a port nobody listens on (authentication stays cached).
        app.state.reader = AsyncpgReader(
            f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere", 1.0)
        for path in (f"/v1/fine_tuning/jobs/{job_id}", "/v1/fine_tuning/jobs",
                     f"/v1/fine_tuning/jobs/{job_id}/events"):
            response = client.get(path, headers=tenant.headers)
            assert response.status_code == 503, (path, response.text)
            assert response.headers["retry-after"] == "2"
            assert response.json()["error"]["code"] == "database_unavailable"

    async def direct() -> None:
        reader = AsyncpgReader(f"postgresql://postgres@127.0.0.1:{free_port()}/x", 1.0)
        await job_reads.get_job(reader, account_id="acct", job_id=job_id)

    with pytest.raises(DatabaseUnavailable):
        run(direct())
