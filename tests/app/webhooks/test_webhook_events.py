"""Webhook events, Standard Webhooks signatures and the retry schedule (app/domain/webhooks.py),
checked with the standardwebhooks package as a receiver would check them."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.domain import webhooks


def test_secret_is_a_standard_webhooks_secret():
    secret = webhooks.new_secret()
    assert secret.startswith("whsec_") and secret != webhooks.new_secret()
    Webhook(secret)  # the reference library accepts it
    assert webhooks.secret_hint(secret) == "whsec_…" + secret[-4:]


def test_event_body_is_openai_shaped_and_verifies():
    secret = webhooks.new_secret()
    event_id = webhooks.new_event_id()
    body = webhooks.event_body(event_id=event_id, type=webhooks.JOB_SUCCEEDED,
                               created_at=1719168000, data={"id": "ftjob-abc"})
    headers = webhooks.signed_headers(secret=secret, event_id=event_id, body=body)
    assert headers["webhook-id"] == event_id and headers["content-type"] == "application/json"
    event = Webhook(secret).verify(body, headers)
    assert event == {"object": "event", "id": event_id, "type": "fine_tuning.job.succeeded",
                     "created_at": 1719168000, "data": {"id": "ftjob-abc"}}
    assert json.loads(body) == event


def test_signature_fails_for_another_secret_body_or_id():
    secret = webhooks.new_secret()
    body = webhooks.event_body(event_id="evt-1", type=webhooks.JOB_FAILED, created_at=1,
                               data={"id": "ftjob-x"})
    headers = webhooks.signed_headers(secret=secret, event_id="evt-1", body=body)
    with pytest.raises(WebhookVerificationError):
        Webhook(webhooks.new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"ftjob-x", b"ftjob-y"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-id": "evt-2"})


def test_a_retry_signs_a_fresh_timestamp_with_the_same_id():
    secret = webhooks.new_secret()
    body = webhooks.event_body(event_id="evt-1", type=webhooks.JOB_CANCELLED, created_at=1,
                               data={"id": "ftjob-x"})
    first_at = datetime.now(timezone.utc) - timedelta(hours=2)
    first = webhooks.signed_headers(secret=secret, event_id="evt-1", body=body, at=first_at)
    retry = webhooks.signed_headers(secret=secret, event_id="evt-1", body=body)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(body, first)  # receivers refuse replays of old attempts
    Webhook(secret).verify(body, retry)
    assert retry["webhook-id"] == first["webhook-id"]


def test_retry_schedule_backs_off_with_jitter_and_ends():
    schedule = webhooks.DEFAULT_RETRY_SCHEDULE_S
    rng = random.Random(7)
    delays = [webhooks.retry_delay_s(n, schedule, rng=rng) for n in range(1, len(schedule) + 1)]
    for delay, base in zip(delays, schedule, strict=True):
        assert base * 0.8 <= delay <= base * 1.2
    assert webhooks.retry_delay_s(len(schedule) + 1, schedule) is None
    assert webhooks.max_attempts(schedule) == 8
    total_h = sum(schedule) / 3600
    assert 24 <= total_h <= 32  # "about a day"
    jittered = {round(webhooks.retry_delay_s(3, schedule, rng=rng), 3) for _ in range(20)}
    assert len(jittered) > 1
    with pytest.raises(ValueError):
        webhooks.retry_delay_s(0, schedule)


def test_event_types():
    assert webhooks.unknown_event_types(["fine_tuning.job.succeeded", "nope"]) == ["nope"]
    assert set(webhooks.JOB_EVENT_BY_STATUS.values()) <= set(webhooks.EVENT_TYPES)
    assert set(webhooks.RUN_EVENT_BY_STATUS.values()) <= set(webhooks.EVENT_TYPES)


def test_excerpt_is_short_text():
    assert webhooks.response_excerpt(b"x" * 5000) == "x" * webhooks.EXCERPT_BYTES
    assert webhooks.response_excerpt(b"\xff\xfeok") == "\ufffd\ufffdok"


def test_after_attempt_retries_then_gives_up_and_disables():
    schedule = (1.0, 2.0)
    rng = random.Random(1)
    assert webhooks.after_attempt(attempts=1, succeeded=True, schedule=schedule).status == \
        "succeeded"
    first = webhooks.after_attempt(attempts=1, succeeded=False, schedule=schedule, rng=rng)
    assert first.status == "pending" and 0.8 <= first.retry_in_s <= 1.2
    assert not first.disable_endpoint
    second = webhooks.after_attempt(attempts=2, succeeded=False, schedule=schedule, rng=rng)
    assert second.status == "pending" and 1.6 <= second.retry_in_s <= 2.4
    last = webhooks.after_attempt(attempts=3, succeeded=False, schedule=schedule, rng=rng)
    assert last == webhooks.AttemptOutcome("failed", None, True)
    assert webhooks.after_attempt(attempts=3, succeeded=True, schedule=schedule).status == \
        "succeeded"
