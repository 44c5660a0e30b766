"""Concurrent creates and idempotency keys over real HTTP: a uvicorn server in its own process
on the test PostgreSQL, hit by many client threads released together. Counts come from the
responses and the database."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import func, select

from app.db.models import Job, LedgerTransaction
from app.services import billing
from race_helpers import balances, make_account

CHAT = {"messages": [{"role": "user", "content": "Summarise the meeting notes."},
                     {"role": "assistant", "content": "The team agreed to ship on Friday."}]}


def fire(n: int, request: Callable[[httpx.Client, int], httpx.Response]) -> list[httpx.Response]:
    """n concurrent requests (one thread and one connection each), released by a barrier."""
    barrier = threading.Barrier(n)
    responses: list[httpx.Response | BaseException] = [None] * n  # type: ignore[list-item]
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=n + 4)) as client:
        def target(i: int) -> None:
            barrier.wait()
            try:
                responses[i] = request(client, i)
            except BaseException as error:  # noqa: BLE001 - reported below
                responses[i] = error

        threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    errors = [r for r in responses if not isinstance(r, httpx.Response)]
    assert not errors, errors
    return responses  # type: ignore[return-value]


def account_with_file(live_api: str, factory, plan: str) -> tuple[str, dict[str, str], str]:
    from app.services import accounts

    with factory() as session:
        account, key = accounts.create_account(session, name=f"http {plan}", plan=plan, pepper="")
        session.commit()
    headers = {"Authorization": f"Bearer {key}"}
    body = "\n".join(json.dumps(CHAT) for _ in range(30)).encode()
    uploaded = httpx.post(f"{live_api}/v1/files", headers=headers, data={"purpose": "fine-tune"},
                          files={"file": ("train.jsonl", body, "application/jsonl")}, timeout=30)
    assert uploaded.status_code == 201, uploaded.text
    return account.id, headers, uploaded.json()["id"]


def count(factory, model, *where) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where))


@pytest.mark.integration
def test_twenty_concurrent_free_creates(live_api: str, threads_factory) -> None:
    account_id, headers, file_id = account_with_file(live_api, threads_factory, "free")
    body = {"model": "tinyllama-1.1b-chat", "training_file": file_id}
    responses = fire(20, lambda c, i: c.post(f"{live_api}/v1/fine_tuning/jobs",
                                             headers=headers, json=body))
    assert Counter(r.status_code for r in responses) == {201: 3, 429: 17}, \
        [r.text for r in responses if r.status_code not in (201, 429)]
    accepted = [r for r in responses if r.status_code == 201]
    assert sorted(r.headers["x-quota-runs-remaining"] for r in accepted) == ["0", "1", "2"]
    for refused in (r for r in responses if r.status_code == 429):
        assert refused.json()["error"]["code"] == "quota_exceeded"
        assert int(refused.headers["retry-after"]) >= 1
    assert count(threads_factory, Job, Job.account_id == account_id) == 3


@pytest.mark.integration
def test_fifty_concurrent_pro_creates_fit_the_credit(live_api: str, threads_factory) -> None:
    account_id, headers, file_id = account_with_file(live_api, threads_factory, "pro")
    body = {"model": "mistral-7b-v0.3", "training_file": file_id,
            "hyperparameters": {"n_epochs": 3}}
    estimate = httpx.post(f"{live_api}/v1/fine_tuning/jobs/estimate", headers=headers,
                          json=body, timeout=30).json()
    price = estimate["price_micros"]
    credit = 10 * price
    assert price > 0 and not estimate["allowed_to_proceed"]
    with threads_factory() as session:
        billing.add_credit(session, account_id=account_id, amount_micros=credit, memo="exactly 10")
        session.commit()

    samples: list[tuple[int, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(balances(threads_factory, account_id))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        responses = fire(50, lambda c, i: c.post(f"{live_api}/v1/fine_tuning/jobs",
                                                 headers=headers, json=body))
    finally:
        done.set()
        sampler.join(10)
    assert Counter(r.status_code for r in responses) == {201: 10, 402: 40}, \
        [r.text for r in responses if r.status_code not in (201, 402)]
    assert all(r.json()["error"]["code"] == "insufficient_credit"
               for r in responses if r.status_code == 402)
    assert len(samples) > 5
    assert all(a >= 0 and 0 <= h <= credit and a + h == credit for a, h in samples)
    assert balances(threads_factory, account_id) == (0, credit)
    with threads_factory() as session:
        assert billing.reconcile(session, account_id).ok
    # No job exists without its hold.
    jobs = count(threads_factory, Job, Job.account_id == account_id)
    held = count(threads_factory, Job, Job.account_id == account_id, Job.hold_micros == price)
    holds = count(threads_factory, LedgerTransaction, LedgerTransaction.account_id == account_id,
                  LedgerTransaction.kind == "hold")
    assert jobs == held == holds == 10


@pytest.mark.integration
def test_same_idempotency_key_twenty_times(live_api: str, threads_factory) -> None:
    account_id, headers, file_id = account_with_file(live_api, threads_factory, "pro")
    with threads_factory() as session:
        billing.add_credit(session, account_id=account_id, amount_micros=100_000_000)
        session.commit()
    body = {"model": "mistral-7b-v0.3", "training_file": file_id}
    keyed = {**headers, "Idempotency-Key": "7f9c2d4e-retry"}
    url = f"{live_api}/v1/fine_tuning/jobs"
    responses = fire(20, lambda c, i: c.post(url, headers=keyed, json=body))
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {201, 409} and statuses[201] >= 1, statuses
    created = [r for r in responses if r.status_code == 201]
    assert len({r.content for r in created}) == 1  # replays are byte-identical
    assert sum("idempotent-replayed" not in r.headers for r in created) == 1
    for busy in (r for r in responses if r.status_code == 409):
        assert busy.json()["error"]["code"] == "idempotency_key_in_use"
        assert busy.headers["retry-after"] == "1"
    again = httpx.post(url, headers=keyed, json=body, timeout=30)
    assert again.status_code == 201 and again.content == created[0].content
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == created[0].headers["location"]
    other = httpx.post(url, headers=keyed, json={**body, "suffix": "different"}, timeout=30)
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    job_id = created[0].json()["id"]
    assert count(threads_factory, Job, Job.account_id == account_id) == 1
    assert count(threads_factory, LedgerTransaction, LedgerTransaction.source_id == job_id,
                 LedgerTransaction.kind == "hold") == 1
    with threads_factory() as session:
        assert billing.reconcile(session, account_id).ok
