"""Idempotency-Key semantics of run_idempotent, against PostgreSQL and SQLite."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import IdempotencyRecord, Job
from app.db.session import get_sessionmaker
from app.domain.errors import Conflict, InvalidRequest, NotFound, Unprocessable
from app.services import accounts
from app.services.idempotency import StoredResponse, fingerprint, purge_expired, run_idempotent
from tests.factories import TTL_S


def job_creator(make_job, account_id: str, calls: list[str]):
    def handler(session: Session) -> StoredResponse:
        job = make_job(session, account_id=account_id)
        calls.append(job.id)
        return StoredResponse(201, {"id": job.id, "object": "fine_tuning.job"},
                              {"Location": f"/v1/fine_tuning/jobs/{job.id}",
                               "x-quota-runs-remaining": "2"})
    return handler


def count_jobs(factory, account_id: str) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(Job).where(Job.account_id == account_id))


def check_semantics(factory, account_id: str, make_job) -> None:
    calls: list[str] = []
    fp = fingerprint(method="POST", path="/v1/fine_tuning/jobs", body={"model": "m", "n": 1})
    run = lambda key, fp=fp, handler=None: run_idempotent(  # noqa: E731
        session_factory=factory, account_id=account_id, key=key, fingerprint=fp,
        handler=handler or job_creator(make_job, account_id, calls), ttl_s=TTL_S)
    first = run("key-1")
    assert first.status_code == 201 and not first.replayed
    assert first.headers["location"] == f"/v1/fine_tuning/jobs/{calls[0]}"
    replay = run("key-1")
    assert replay.replayed and replay.body == first.body and replay.status_code == 201
    assert {k: v for k, v in replay.headers.items() if k != "idempotent-replayed"} == first.headers
    assert len(calls) == 1 and count_jobs(factory, account_id) == 1
    other = fingerprint(method="POST", path="/v1/fine_tuning/jobs", body={"model": "m", "n": 2})
    with pytest.raises(Unprocessable) as info:
        run("key-1", fp=other)
    assert info.value.code == "idempotency_key_reused" and info.value.status_code == 422
    # A failing request stores nothing and rolls its work back: the corrected retry runs.
    def failing(session: Session) -> StoredResponse:
        make_job(session, account_id=account_id)
        raise NotFound("No file 'file-x'")
    with pytest.raises(NotFound):
        run("key-2", handler=failing)
    assert count_jobs(factory, account_id) == 1
    second = run("key-2", fp=other)
    assert second.status_code == 201 and not second.replayed and len(calls) == 2
    # Keys are scoped per account (make a second account and reuse key-1).
    with factory() as session:
        stranger, _ = accounts.create_account(session, name="b", plan="free", pepper="")
        session.commit()
    theirs = run_idempotent(session_factory=factory, account_id=stranger.id, key="key-1",
                            fingerprint=fp, handler=job_creator(make_job, stranger.id, calls),
                            ttl_s=TTL_S)
    assert not theirs.replayed and theirs.body["id"] != first.body["id"]
    with pytest.raises(InvalidRequest):
        run("x" * 256)
    with pytest.raises(InvalidRequest):
        run("")
    with factory() as session:
        record = session.get(IdempotencyRecord, (account_id, "key-1"))
        assert record.resource_id == first.body["id"]
        ttl = record.expires_at - record.created_at
        assert ttl >= timedelta(hours=24)


def test_semantics_postgres(pg_factory, make_account, make_job) -> None:
    check_semantics(pg_factory, make_account("pro"), make_job)


def test_semantics_sqlite(sqlite_url, make_job) -> None:
    factory = get_sessionmaker(sqlite_url)
    with factory() as session:
        account, _ = accounts.create_account(session, name="dev", plan="pro", pepper="")
        session.commit()
    check_semantics(factory, account.id, make_job)


def test_expired_key_runs_again(pg_factory, make_account, make_job) -> None:
    account_id = make_account("pro")
    calls: list[str] = []
    handler = job_creator(make_job, account_id, calls)
    old = utcnow() - timedelta(days=3)
    run_idempotent(session_factory=pg_factory, account_id=account_id, key="k", fingerprint="a",
                   handler=handler, now=old, ttl_s=TTL_S)
    fresh = run_idempotent(session_factory=pg_factory, account_id=account_id, key="k",
                           fingerprint="b", handler=handler, ttl_s=TTL_S)
    assert not fresh.replayed and len(calls) == 2
    with pg_factory() as session:
        run_idempotent(session_factory=pg_factory, account_id=account_id, key="gone",
                       fingerprint="a", handler=handler, now=old, ttl_s=TTL_S)
        assert purge_expired(session) >= 1
        session.commit()
        assert session.get(IdempotencyRecord, (account_id, "gone")) is None


def test_in_flight_duplicate_gets_409(pg_factory, make_account, make_job) -> None:
    account_id = make_account("pro")
    inside, release = threading.Event(), threading.Event()
    calls: list[str] = []
    create = job_creator(make_job, account_id, calls)

    def slow(session: Session) -> StoredResponse:
        response = create(session)
        inside.set()
        assert release.wait(10)
        return response

    results: dict[str, StoredResponse] = {}
    worker = threading.Thread(target=lambda: results.update(first=run_idempotent(
        session_factory=pg_factory, account_id=account_id, key="same", fingerprint="f",
        handler=slow, ttl_s=TTL_S)))
    worker.start()
    assert inside.wait(10)
    with pytest.raises(Conflict) as info:
        run_idempotent(session_factory=pg_factory, account_id=account_id, key="same",
                       fingerprint="f", handler=create, ttl_s=TTL_S)
    assert info.value.code == "idempotency_key_in_use" and info.value.headers["Retry-After"] == "1"
    release.set()
    worker.join(10)
    replay = run_idempotent(session_factory=pg_factory, account_id=account_id, key="same",
                            fingerprint="f", handler=create, ttl_s=TTL_S)
    assert replay.replayed and replay.body == results["first"].body and len(calls) == 1
