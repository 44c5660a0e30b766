"""Quota, credit and idempotency races at the service level: many threads, each with its
own PostgreSQL connection and transaction, released together by a barrier."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import Job, LedgerTransaction
from app.domain.errors import Conflict, DomainError
from app.services import billing
from app.services.idempotency import StoredResponse, run_idempotent
from tests.billing_support import admit
from race_helpers import balances, make_account, make_file, make_job
from tests.factories import TTL_S


def race(n: int, work: Callable[[int], Any]) -> list[Any]:
    """Run work(i) on n threads at once; each result is a value or the raised exception."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def target(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as error:  # noqa: BLE001 - the test inspects it
            results[i] = error

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def create_and_admit(factory, account_id: str, model: str, file_id: str, tokens: int) -> str:
    with factory() as session:
        job = make_job(session, account_id=account_id, model=model, file_id=file_id)
        admit(session, account_id=account_id, model=model, estimated_tokens=tokens,
              source_id=job.id)
        session.commit()
        return job.id


def outcome(result: Any) -> str:
    return result.code if isinstance(result, DomainError) else type(result).__name__


def test_twenty_concurrent_free_creates_admit_exactly_three(threads_factory) -> None:
    account_id = make_account(threads_factory, plan="free")
    with threads_factory() as session:
        file_id = make_file(session, account_id=account_id).id
        session.commit()
    results = race(20, lambda i: create_and_admit(
        threads_factory, account_id, "tinyllama-1.1b-chat", file_id, 1000))
    assert Counter(outcome(r) for r in results) == {"str": 3, "quota_exceeded": 17}
    with threads_factory() as session:
        jobs = session.scalar(select(func.count()).select_from(Job).where(Job.account_id == account_id))
    assert jobs == 3


def test_fifty_concurrent_pro_creates_fit_the_credit(threads_factory) -> None:
    model, tokens = "mistral-7b-v0.3", 2_000_000  # $1.00 each
    account_id = make_account(threads_factory, plan="pro", credit_micros=10_000_000)
    with threads_factory() as session:
        file_id = make_file(session, account_id=account_id).id
        session.commit()
    samples: list[tuple[int, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(balances(threads_factory, account_id))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        results = race(50, lambda i: create_and_admit(threads_factory, account_id, model,
                                                      file_id, tokens))
    finally:
        done.set()
        sampler.join(10)
    assert Counter(outcome(r) for r in results) == {"str": 10, "insufficient_credit": 40}
    assert samples and all(a >= 0 and 0 <= h <= 10_000_000 and a + h == 10_000_000
                           for a, h in samples)
    assert balances(threads_factory, account_id) == (0, 10_000_000)
    with threads_factory() as session:
        report = billing.reconcile(session, account_id)
        holds = session.scalar(select(func.count()).select_from(LedgerTransaction).where(
            LedgerTransaction.account_id == account_id, LedgerTransaction.kind == "hold"))
        unheld = session.scalar(select(func.count()).select_from(Job).where(
            Job.account_id == account_id, Job.hold_micros != 1_000_000))
    assert report.ok and report.open_holds == 10_000_000
    assert holds == 10 and unheld == 0


def test_same_idempotency_key_twenty_times_makes_one_job(threads_factory) -> None:
    model = "mistral-7b-v0.3"
    account_id = make_account(threads_factory, plan="pro", credit_micros=50_000_000)
    with threads_factory() as session:
        file_id = make_file(session, account_id=account_id).id
        session.commit()

    def handler(session: Session) -> StoredResponse:
        job = make_job(session, account_id=account_id, model=model, file_id=file_id)
        admit(session, account_id=account_id, model=model, estimated_tokens=2_000_000,
              source_id=job.id)
        return StoredResponse(201, {"id": job.id, "object": "fine_tuning.job"}, {})

    def attempt(_: int) -> StoredResponse:
        return run_idempotent(session_factory=threads_factory, account_id=account_id,
                              key="retry-me", fingerprint="same-body", handler=handler, ttl_s=TTL_S)

    results = race(20, attempt)
    responses = [r for r in results if isinstance(r, StoredResponse)]
    conflicts = [r for r in results if isinstance(r, Conflict)]
    assert len(responses) + len(conflicts) == 20, results
    assert {r.code for r in conflicts} <= {"idempotency_key_in_use"}
    assert len({r.body["id"] for r in responses}) == 1
    assert sum(not r.replayed for r in responses) == 1
    # ...and once more after completion: a replay of the same body.
    after = attempt(0)
    assert after.replayed and after.body == responses[0].body
    with threads_factory() as session:
        jobs = session.scalars(select(Job.id).where(Job.account_id == account_id)).all()
        holds = session.scalar(select(func.count()).select_from(LedgerTransaction).where(
            LedgerTransaction.account_id == account_id, LedgerTransaction.kind == "hold"))
        assert billing.reconcile(session, account_id).ok
    assert jobs == [after.body["id"]] and holds == 1
    assert balances(threads_factory, account_id) == (49_000_000, 1_000_000)
