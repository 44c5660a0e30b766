"""Webhook events, their signatures and the retry schedule (pure rules, shared by the API and
the relay that delivers them).

Events are shaped like OpenAI's webhook events::

    {"object": "event", "id": "evt-…", "type": "fine_tuning.job.succeeded",
     "created_at": 1719168000, "data": {"id": "ftjob-…"}}

and signed per the Standard Webhooks specification (https://www.standardwebhooks.com/):
``webhook-id`` (the event id, the same on every retry so receivers can deduplicate),
``webhook-timestamp`` (seconds, the time of this attempt) and ``webhook-signature``
(``v1,`` + base64 HMAC-SHA256 over ``id.timestamp.body`` with the endpoint's ``whsec_``
secret). The ``standardwebhooks`` package signs here and verifies on the receiver's side.
"""

from __future__ import annotations

import base64
import json
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from standardwebhooks import Webhook

from app.domain.ids import new_id

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32

JOB_SUCCEEDED = "fine_tuning.job.succeeded"
JOB_FAILED = "fine_tuning.job.failed"
JOB_CANCELLED = "fine_tuning.job.cancelled"
RUN_STAGE_SUCCEEDED = "continual.run.stage.succeeded"
RUN_SUCCEEDED = "continual.run.succeeded"
RUN_FAILED = "continual.run.failed"
RUN_CANCELLED = "continual.run.cancelled"
TEST_EVENT = "webhook.test"

# What an endpoint can subscribe to (the test event is sent on request, whatever the list).
EVENT_TYPES = (JOB_SUCCEEDED, JOB_FAILED, JOB_CANCELLED,
               RUN_STAGE_SUCCEEDED, RUN_SUCCEEDED, RUN_FAILED, RUN_CANCELLED)
JOB_EVENT_BY_STATUS = {"succeeded": JOB_SUCCEEDED, "failed": JOB_FAILED,
                       "cancelled": JOB_CANCELLED}
RUN_EVENT_BY_STATUS = {"succeeded": RUN_SUCCEEDED, "failed": RUN_FAILED,
                       "cancelled": RUN_CANCELLED}

# Svix's schedule, about 28 hours over 8 attempts: the first try, then retries after these
# many seconds (each with jitter). Settings may shorten it (tests run it in seconds).
DEFAULT_RETRY_SCHEDULE_S = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
JITTER_FRACTION = 0.2
# What the delivery log keeps of a receiver's answer.
EXCERPT_BYTES = 512


def new_secret() -> str:
    """``whsec_`` + base64 of 32 random bytes (what Standard Webhooks libraries accept)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def secret_hint(secret: str) -> str:
    """The part of a secret that may be shown again after creation (its last 4 characters)."""
    return f"{SECRET_PREFIX}…{secret[-4:]}"


def new_event_id() -> str:
    """``evt-`` + 24 random characters: the event's id, sent as ``webhook-id``."""
    return new_id("webhook_event")


def unknown_event_types(types: Sequence[str]) -> list[str]:
    return [t for t in types if t not in EVENT_TYPES]


def event_body(*, event_id: str, type: str, created_at: int, data: dict[str, Any]) -> bytes:
    """The JSON body of an event, serialised once: the bytes that are signed are the bytes
    that are sent, on every attempt."""
    event = {"object": "event", "id": event_id, "type": type, "created_at": int(created_at),
             "data": data}
    return json.dumps(event, separators=(",", ":"), sort_keys=True).encode("utf-8")


def signed_headers(*, secret: str, event_id: str, body: bytes,
                   at: datetime | None = None) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt (a fresh timestamp each time: receivers
    reject timestamps older than a few minutes)."""
    at = at or datetime.now(timezone.utc)
    signature = Webhook(secret).sign(msg_id=event_id, timestamp=at, data=body)
    return {"webhook-id": event_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": signature, "content-type": "application/json"}


def retry_delay_s(failed_attempts: int, schedule: Sequence[float], *,
                  rng: random.Random | None = None) -> float | None:
    """Seconds to wait after the ``failed_attempts``-th failed attempt (1 = the first try
    failed), with ±20 % jitter so endpoints that failed together do not retry together; None
    when the schedule is spent (the delivery has failed for good)."""
    if failed_attempts < 1:
        raise ValueError("failed_attempts counts from 1")
    if failed_attempts > len(schedule):
        return None
    base = float(schedule[failed_attempts - 1])
    jitter = (rng or random).uniform(-JITTER_FRACTION, JITTER_FRACTION)
    return max(0.0, base * (1.0 + jitter))


@dataclass(frozen=True)
class AttemptOutcome:
    """What a delivery becomes after an attempt: ``succeeded``, ``pending`` (retried in
    ``retry_in_s``) or ``failed`` for good, which disables its endpoint: the receiver has
    answered nothing but failures for the whole schedule (about a day by default)."""

    status: str
    retry_in_s: float | None = None
    disable_endpoint: bool = False


def after_attempt(*, attempts: int, succeeded: bool, schedule: Sequence[float],
                  rng: random.Random | None = None) -> AttemptOutcome:
    """The delivery's state after its ``attempts``-th attempt (counting this one)."""
    if succeeded:
        return AttemptOutcome("succeeded")
    delay = retry_delay_s(attempts, schedule, rng=rng)
    if delay is None:
        return AttemptOutcome("failed", disable_endpoint=True)
    return AttemptOutcome("pending", retry_in_s=delay)


def max_attempts(schedule: Sequence[float]) -> int:
    """The first try plus one retry per entry of the schedule."""
    return len(schedule) + 1


def response_excerpt(raw: bytes) -> str:
    """At most ``EXCERPT_BYTES`` of a receiver's answer, as text (undecodable bytes replaced)."""
    return raw[:EXCERPT_BYTES].decode("utf-8", errors="replace")
