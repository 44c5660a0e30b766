"""The outbox relay and the reaper against real PostgreSQL and Redis: what they publish, and
that running several of them at once neither loses nor duplicates work."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
import redis
from sqlalchemy import func, select, update

from app.db.base import utcnow
from app.db.models import Job, JobEvent, LedgerTransaction, OutboxMessage
from app.services import leases, outbox
from app.settings import Settings
from tests.factories import (
    account_row, expire_lease, job_row, make_account, insert_continual_run, insert_job,
)
from worker.celery_app import create_app
from worker.reaper import reap_once
from worker.relay import relay_once

pytestmark = pytest.mark.integration


@pytest.fixture
def broker_settings(settings: Settings, redis_url: str, redis_namespace: str) -> Settings:
    return settings.model_copy(update={"broker_url": redis_url,
                                       "broker_key_prefix": redis_namespace})


def _messages(redis_url: str, prefix: str, queue: str) -> list[dict]:
    client = redis.Redis.from_url(redis_url)
    return [json.loads(raw) for raw in client.lrange(prefix + queue, 0, -1)]


def _job_ids(messages: list[dict]) -> list[str]:
    out = []
    for message in messages:
        body = json.loads(__import__("base64").b64decode(message["body"]))
        out.append(body[1]["job_id"])
    return out


def _pending(tx) -> None:
    # Rows of earlier tests in this session's database must not leak into these counts.
    with tx() as s:
        s.execute(update(OutboxMessage).where(OutboxMessage.published_at.is_(None))
                  .values(published_at=utcnow()))


def test_relay_publishes_each_row_to_its_queue_with_limits(tx, broker_settings, redis_url,
                                                           redis_namespace) -> None:
    _pending(tx)
    with tx() as s:
        account = make_account(s)
        small = insert_job(s, account_id=account, queue="small", offer=True).id
        large = insert_job(s, account_id=account, queue="large", offer=True).id
        later = insert_job(s, account_id=account, queue="small").id
        outbox.enqueue(s, task=outbox.RUN_JOB_TASK, queue="small", payload={"job_id": later},
                       delay_s=60)
    celery = create_app(broker_settings)
    assert relay_once(settings=broker_settings, celery=celery) == 2
    small_messages = _messages(redis_url, redis_namespace, "small")
    assert _job_ids(small_messages) == [small]
    assert _job_ids(_messages(redis_url, redis_namespace, "large")) == [large]
    headers = small_messages[0]["headers"]
    assert headers["task"] == "crma.run_job"
    assert headers["timelimit"] == [broker_settings.worker_time_limit_s["small"],
                                    broker_settings.worker_time_limit_s["small"]
                                    - broker_settings.worker_soft_time_margin_s]
    assert small_messages[0]["content-type"] == "application/json"
    with tx() as s:
        published = s.scalars(select(OutboxMessage.payload).where(
            OutboxMessage.published_at.is_not(None))).all()
        assert {"job_id": small} in published and {"job_id": later} not in published
    # Nothing is published twice by a later pass.
    assert relay_once(settings=broker_settings, celery=celery) == 0


def test_concurrent_relays_publish_every_row_exactly_once(tx, broker_settings, redis_url,
                                                          redis_namespace) -> None:
    _pending(tx)
    with tx() as s:
        account = make_account(s)
        jobs = [insert_job(s, account_id=account, offer=True).id for _ in range(60)]
    settings = broker_settings.model_copy(update={"relay_batch_size": 7})
    barrier = threading.Barrier(4)
    counts: list[int] = []

    def relay() -> None:
        celery = create_app(settings)
        barrier.wait()
        counts.append(relay_once(settings=settings, celery=celery))

    threads = [threading.Thread(target=relay) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    published = _job_ids(_messages(redis_url, redis_namespace, "small"))
    assert sum(counts) == 60
    assert sorted(published) == sorted(jobs)
    with tx() as s:
        assert outbox.count_pending(s) == 0


def test_a_relay_that_dies_before_commit_publishes_again(tx, broker_settings, redis_url,
                                                         redis_namespace) -> None:
    """At-least-once: the broker got the message but the row was not marked; the next pass
    sends it again (the lease claim makes the duplicate harmless, see test_runner)."""
    _pending(tx)
    with tx() as s:
        job_id = insert_job(s, account_id=make_account(s), offer=True).id
    celery = create_app(broker_settings)
    from app.db.session import get_sessionmaker
    from worker import relay as relay_module

    session = get_sessionmaker(broker_settings.resolved_database_url)()
    pending = outbox.claim_pending(session, limit=10)
    with celery.producer_or_acquire() as producer:
        for message in pending:
            relay_module._publish(celery, producer, broker_settings, message)
    session.rollback()  # the crash
    session.close()
    assert relay_once(settings=broker_settings, celery=celery) == 1
    assert _job_ids(_messages(redis_url, redis_namespace, "small")) == [job_id, job_id]


def _events(s, job_id: str) -> list[tuple[str, str]]:
    return [(e.dedupe_key, e.message) for e in s.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq))]


def test_reaper_requeues_an_expired_job_once_across_concurrent_reapers(tx, settings) -> None:
    with tx() as s:
        job_id = insert_job(s, account_id=make_account(s), admit=True).id
        attempt = leases.claim_job(s, job_id=job_id, owner="dead", lease_ttl_s=3,
                                   max_attempts=3).attempt
        expire_lease(s, job_id)
    reports = []
    barrier = threading.Barrier(4)

    def reap() -> None:
        barrier.wait()
        reports.append(reap_once(settings=settings))

    threads = [threading.Thread(target=reap) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.requeued.count(job_id) for r in reports) == 1
    with tx() as s:
        job = job_row(s, job_id)
        assert (job.status, job.attempt, job.lease_owner) == ("queued", attempt, None)
        rows = s.scalars(select(OutboxMessage).where(
            OutboxMessage.payload["job_id"].as_string() == job_id)).all()
        assert len(rows) == 1
        assert [k for k, _ in _events(s, job_id)] == [f"status:queued:{attempt}"]
    # The next claim is attempt 2.
    with tx() as s:
        assert leases.claim_job(s, job_id=job_id, owner="w2", lease_ttl_s=3,
                                max_attempts=3).attempt == 2


def test_reaper_fails_a_job_after_max_attempts_and_releases_its_hold(tx, settings) -> None:
    with tx() as s:
        account = make_account(s)
        job_id = insert_job(s, account_id=account, admit=True).id
        held = account_row(s, account).credit_held_micros
        assert held > 0
        s.execute(update(Job).where(Job.id == job_id).values(
            status="running", attempt=3, trained_tokens=5000,
            lease_expires_at=utcnow() - timedelta(seconds=5)))
    before = None
    with tx() as s:
        before = account_row(s, account)
    reports = [reap_once(settings=settings) for _ in range(2)]
    assert [job_id in r.failed for r in reports] == [True, False]
    with tx() as s:
        job = job_row(s, job_id)
        assert job.status == "failed" and job.error["code"] == "worker_lost"
        assert "Traceback" not in job.error["message"]
        assert job.cost_micros == 0  # a platform fault costs nothing
        after = account_row(s, account)
        assert after.credit_held_micros == before.credit_held_micros - held
        assert after.credit_available_micros == before.credit_available_micros + held
        kinds = sorted(s.scalars(select(LedgerTransaction.kind).where(
            LedgerTransaction.source_id == job_id)))
        assert kinds == ["capture", "hold", "release"]  # capture of 0, the whole hold released
        assert [k for k, _ in _events(s, job_id)] == ["status:failed:3"]


def test_reaper_reoffers_stale_queued_jobs_once(tx, settings) -> None:
    old = utcnow() - timedelta(seconds=settings.stale_queued_s + 30)
    with tx() as s:
        account = make_account(s)
        stale = insert_job(s, account_id=account, queued_at=old).id
        fresh = insert_job(s, account_id=account).id
        _, (stage0, stage1, _) = insert_continual_run(s, account_id=account)
        s.execute(update(Job).where(Job.id.in_([stage0, stage1])).values(queued_at=old))
    reports = []
    barrier = threading.Barrier(3)

    def reap() -> None:
        barrier.wait()
        reports.append(reap_once(settings=settings))

    threads = [threading.Thread(target=reap) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reoffered = [j for r in reports for j in r.reoffered]
    assert reoffered.count(stale) == 1 and reoffered.count(stage0) == 1
    assert fresh not in reoffered and stage1 not in reoffered  # stage 1 waits for stage 0
    with tx() as s:
        for job_id, expected in ((stale, 1), (fresh, 0), (stage1, 0)):
            assert s.scalar(select(func.count()).select_from(OutboxMessage).where(
                OutboxMessage.payload["job_id"].as_string() == job_id)) == expected
    # Offered just now: the next pass leaves it alone.
    assert stale not in reap_once(settings=settings).reoffered
