"""Sending the webhook outbox: claim due deliveries, attempt each (signed, pinned to a checked
address: app/services/webhook_sender.py), record the attempt, schedule the retry or give up.

Runs in the relay process on a thread of its own with its own asyncio loop
(worker/webhooks.py), so a slow receiver never delays the Celery publishing, and at most
`webhook_concurrency` attempts are in flight. At-least-once: a claim pushes the delivery's
`next_attempt_at` past the attempt's deadline (its lease); a relay that dies mid-attempt
leaves it due again, and the retry carries the same `webhook-id`. A delivery whose whole
retry schedule failed is `failed` and disables its endpoint (persistent failure); enabling
it again (POST /v1/webhooks/{id}/enable) resumes what was still pending."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.base import db_now
from app.db.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from app.db.session import session_scope
from app.domain import webhooks
from app.domain.secret_box import SecretKeyError, box_for
from app.services.webhook_sender import (
    AttemptResult,
    Resolver,
    make_client,
    resolve_host,
    send_attempt,
)
from app.settings import Settings

log = logging.getLogger(__name__)
# How long past its deadline a claimed attempt may run before the delivery is due again.
LEASE_MARGIN_S = 60.0


@dataclass(frozen=True)
class DueDelivery:
    id: str
    endpoint_id: str
    url: str
    stored_secret: str  # as the endpoint row keeps it: sealed (app/domain/secret_box.py)
    event_id: str
    body: bytes


def schedule_of(settings: Settings) -> tuple[float, ...]:
    return tuple(settings.webhook_retry_schedule_s or webhooks.DEFAULT_RETRY_SCHEDULE_S)


def claim_due(session: Session, *, limit: int, lease_s: float) -> list[DueDelivery]:
    """Lock up to `limit` due deliveries of enabled endpoints (oldest due first; another
    relay skips them on PostgreSQL) and push their `next_attempt_at` `lease_s` ahead."""
    now = db_now(session)
    query = (
        select(WebhookDelivery.id)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now,
               WebhookEndpoint.status == "enabled")
        .order_by(WebhookDelivery.next_attempt_at).limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(of=WebhookDelivery, skip_locked=True)
    ids = list(session.scalars(query))
    if not ids:
        return []
    session.execute(update(WebhookDelivery).where(WebhookDelivery.id.in_(ids))
                    .values(next_attempt_at=now + timedelta(seconds=lease_s))
                    .execution_options(synchronize_session=False))
    rows = session.execute(
        select(WebhookDelivery.id, WebhookDelivery.endpoint_id, WebhookEndpoint.url,
               WebhookEndpoint.secret, WebhookEvent.id.label("event_id"), WebhookEvent.body)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.id.in_(ids))
    ).all()
    return [DueDelivery(id=r.id, endpoint_id=r.endpoint_id, url=r.url, stored_secret=r.secret,
                        event_id=r.event_id, body=r.body.encode("utf-8")) for r in rows]


def record_attempt(session: Session, *, delivery_id: str, result: AttemptResult,
                   schedule: tuple[float, ...], at: datetime,
                   rng: random.Random | None = None) -> str | None:
    """Write one attempt's result and what follows (retry, success, failure that disables the
    endpoint). Returns the delivery's new status (None: it is gone, e.g. endpoint deleted)."""
    delivery = session.scalars(select(WebhookDelivery).where(
        WebhookDelivery.id == delivery_id).with_for_update()).first()
    if delivery is None or delivery.status != "pending":
        return None
    attempts = delivery.attempts + 1
    outcome = webhooks.after_attempt(attempts=attempts, succeeded=result.succeeded,
                                     schedule=schedule, rng=rng)
    now = db_now(session)
    delivery.attempts = attempts
    delivery.status = outcome.status
    delivery.last_attempt_at = at
    delivery.last_status_code = result.status_code
    delivery.last_error = (result.error or None) and result.error[:1000]
    delivery.last_response_excerpt = result.excerpt or None
    delivery.attempt_log = [*(delivery.attempt_log or []), {
        "at": int(at.timestamp()), "status_code": result.status_code, "error": result.error,
        "duration_ms": result.duration_ms}]
    delivery.next_attempt_at = (now + timedelta(seconds=outcome.retry_in_s)
                                if outcome.retry_in_s is not None else None)
    if outcome.status != "pending":
        delivery.finished_at = now
    if outcome.disable_endpoint:
        last = f"HTTP {result.status_code}" if result.status_code else result.error
        session.execute(update(WebhookEndpoint).where(
            WebhookEndpoint.id == delivery.endpoint_id, WebhookEndpoint.status == "enabled",
        ).values(status="disabled", disabled_at=now, disabled_reason=(
            f"every attempt of delivery {delivery.id} failed over the whole retry schedule "
            f"({attempts} attempts; last: {last})")[:500]))
    return outcome.status


class DeliveryLoop:
    """Claims and sends deliveries until `stop` is set, `webhook_concurrency` at a time."""

    def __init__(self, settings: Settings, *, resolve: Resolver = resolve_host,
                 verify: object = True) -> None:
        self.settings = settings
        self.resolve = resolve
        self.verify = verify
        self.schedule = schedule_of(settings)
        self.lease_s = settings.webhook_timeout_s + LEASE_MARGIN_S
        self.secrets = box_for(settings.webhook_secret_key_list)
        if not self.secrets.seals:
            log.warning("CRMA_WEBHOOK_SECRET_KEYS is not set: new webhook secrets are stored "
                        "unsealed (docs/operator-guide.md, Secrets at rest)")

    def _claim(self, limit: int) -> list[DueDelivery]:
        with session_scope(self.settings.resolved_database_url) as session:
            return claim_due(session, limit=limit, lease_s=self.lease_s)

    def _record(self, delivery: DueDelivery, result: AttemptResult, at: datetime) -> None:
        with session_scope(self.settings.resolved_database_url) as session:
            status = record_attempt(session, delivery_id=delivery.id, result=result,
                                    schedule=self.schedule, at=at)
        if status == "failed":
            log.warning("webhook delivery %s to %s failed for good; endpoint %s disabled",
                        delivery.id, delivery.url, delivery.endpoint_id)

    async def _deliver(self, client, delivery: DueDelivery) -> None:  # noqa: ANN001 - httpx
        from app.db.base import utcnow

        try:
            secret = self.secrets.open(delivery.stored_secret)
        except SecretKeyError as error:
            # The operator's keys, not the receiver: the delivery stays pending (due again
            # when its claim lapses) and spends none of its attempts.
            log.error("webhook delivery %s to endpoint %s cannot be signed: %s", delivery.id,
                      delivery.endpoint_id, error)
            return
        at = utcnow()
        headers = webhooks.signed_headers(secret=secret, event_id=delivery.event_id,
                                          body=delivery.body, at=at)
        result = await send_attempt(
            client, url=delivery.url, body=delivery.body, headers=headers,
            timeout_s=self.settings.webhook_timeout_s,
            allow_private=self.settings.webhook_allow_private_urls, resolve=self.resolve)
        await asyncio.to_thread(self._record, delivery, result, at)

    async def run_once(self) -> int:
        """Claim what is due now and deliver it (tests and `--once`); returns how many."""
        async with make_client(verify=self.verify) as client:
            due = await asyncio.to_thread(self._claim, self.settings.webhook_batch_size)
            await asyncio.gather(*(self._deliver(client, d) for d in due))
        return len(due)

    async def run(self, stop: threading.Event) -> None:
        in_flight: set[asyncio.Task] = set()
        backoff = self.settings.webhook_interval_s
        async with make_client(verify=self.verify) as client:
            while not stop.is_set():
                free = self.settings.webhook_concurrency - len(in_flight)
                due: list[DueDelivery] = []
                if free > 0:
                    try:
                        due = await asyncio.to_thread(
                            self._claim, min(free, self.settings.webhook_batch_size))
                        backoff = self.settings.webhook_interval_s
                    except Exception:  # noqa: BLE001 - a loop that must outlive outages
                        log.warning("webhook claim failed; retrying in %.1fs", backoff,
                                    exc_info=True)
                        await asyncio.sleep(backoff)
                        backoff = min(30.0, backoff * 2)
                        continue
                for delivery in due:
                    task = asyncio.create_task(self._guarded(client, delivery))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if not due:
                    await asyncio.sleep(self.settings.webhook_interval_s)
            if in_flight:  # let attempts under way record their result
                await asyncio.wait(in_flight, timeout=self.settings.webhook_timeout_s + 5)

    async def _guarded(self, client, delivery: DueDelivery) -> None:  # noqa: ANN001
        try:
            await self._deliver(client, delivery)
        except Exception:  # noqa: BLE001 - the lease makes it due again
            log.warning("webhook delivery %s: attempt not recorded", delivery.id,
                        exc_info=True)
