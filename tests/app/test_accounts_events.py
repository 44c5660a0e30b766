"""Accounts, API keys and the auth cache; job events with dedupe keys (PostgreSQL + SQLite)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app.db.models import ApiKey, Job, JobEvent
from app.db.session import session_scope
from app.domain.api_keys import KEY_PREFIX, digest_api_key
from app.domain.errors import Unauthorized
from app.services import accounts, auth, events

def test_key_is_shown_once_and_stored_as_digest(db_url: str) -> None:
    with session_scope(db_url) as session:
        account, key = accounts.create_account(session, name="acme", plan="pro", pepper="p")
    assert key.startswith(KEY_PREFIX) and len(key) == len(KEY_PREFIX) + 40
    with session_scope(db_url) as session:
        row = session.scalars(select(ApiKey).where(ApiKey.account_id == account.id)).one()
        assert row.digest == digest_api_key(key, pepper="p")
        assert key not in (row.digest, row.prefix) and row.prefix == key[:12]
        principal = auth.authenticate(session, api_key=key, pepper="p")
    assert (principal.account_id, principal.plan, principal.key_id) == (account.id, "pro", row.id)


def test_unknown_malformed_and_revoked_keys_fail_alike(db_url: str) -> None:
    with session_scope(db_url) as session:
        account, key = accounts.create_account(session, name="acme", plan="free", pepper="")
        key_id = accounts.list_keys(session, account_id=account.id)[0].id
        auth.authenticate(session, api_key=key, pepper="")  # now cached
    with session_scope(db_url) as session:
        accounts.revoke_key(session, key_id=key_id)
    failures = []
    for candidate in (key, KEY_PREFIX + "x" * 40, "not-a-key", key + "x"):
        with session_scope(db_url) as session, pytest.raises(Unauthorized) as caught:
            auth.authenticate(session, api_key=candidate, pepper="")
        failures.append((caught.value.message, caught.value.code))
    assert len(set(failures)) == 1


def test_wrong_pepper_does_not_authenticate(db_url: str) -> None:
    with session_scope(db_url) as session:
        _, key = accounts.create_account(session, name="acme", plan="free", pepper="one")
    with session_scope(db_url) as session, pytest.raises(Unauthorized):
        auth.authenticate(session, api_key=key, pepper="two")


def test_list_accounts_counts_active_keys(db_url: str) -> None:
    with session_scope(db_url) as session:
        account, _ = accounts.create_account(session, name="lister", plan="pro", pepper="")
        extra, _ = accounts.create_api_key(session, account_id=account.id, name="ci", pepper="")
        accounts.revoke_key(session, key_id=extra.id)
        accounts.create_api_key(session, account_id=account.id, name="ci2", pepper="")
    with session_scope(db_url) as session:
        summary = {a.id: a for a in accounts.list_accounts(session)}[account.id]
    assert (summary.name, summary.plan, summary.active_keys) == ("lister", "pro", 2)


def test_invalid_plan_is_rejected(db_url: str) -> None:
    from app.domain.errors import InvalidRequest

    with session_scope(db_url) as session, pytest.raises(InvalidRequest):
        accounts.create_account(session, name="x", plan="enterprise", pepper="")


def test_record_event_dedupes_and_keeps_order(db_url: str, make_job) -> None:
    with session_scope(db_url) as session:
        account, _ = accounts.create_account(session, name="ev", plan="pro", pepper="")
        job = make_job(session, account_id=account.id)
    with session_scope(db_url) as session:
        events.record_event(session, job_id=job.id, message="created", type="message")
        for _ in range(3):
            events.record_event(session, job_id=job.id, message="step 1", type="metrics",
                                data={"step": 1, "loss": 1.5}, dedupe_key="metrics:step:1")
        events.record_event(session, job_id=job.id, message="no key")
        events.record_event(session, job_id=job.id, message="no key")
    with session_scope(db_url) as session:
        count = session.scalar(select(func.count()).where(JobEvent.job_id == job.id))
        newest = events.list_events(session, job_id=job.id, limit=10)
        oldest_first = events.list_events(session, job_id=job.id, newest_first=False)
        page2 = events.list_events(session, job_id=job.id, after_seq=newest[1].seq, limit=10)
    assert count == 4
    assert [e.message for e in oldest_first] == ["created", "step 1", "no key", "no key"]
    assert [e.seq for e in newest] == sorted((e.seq for e in newest), reverse=True)
    assert [e.message for e in page2] == ["step 1", "created"]
    assert newest[-1].id.startswith("ftevent-") and oldest_first[1].data == {"step": 1, "loss": 1.5}
    assert isinstance(job, Job)
