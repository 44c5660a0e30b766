"""The outbox relay: publishes committed outbox rows to Celery, then marks them published
(app/services/outbox.py `publish_pending` does the rows; this module the sending).

At-least-once: a relay that dies between publishing and committing publishes those rows
again on the next pass. Duplicates are harmless by construction (the lease claim lets one
delivery through; app/services/outbox.py explains why two relays never send a row at once).
The API never imports this module or Celery; it only writes outbox rows."""

from __future__ import annotations

import contextlib
import logging
import threading

from celery import Celery

from app.services import outbox
from app.settings import Settings
from worker.celery_app import time_limits
from worker.routing import RUN_JOB
from worker.webhooks import start_webhook_deliveries

log = logging.getLogger(__name__)

# Bounded publish retries: with the broker down, give the row back quickly (it stays
# unpublished) instead of blocking the relay for minutes.
RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}


def relay_once(*, settings: Settings, celery: Celery) -> int:
    """Publish every row available now (in batches); returns how many were published."""
    published = 0
    while True:
        sent, batch_full = _relay_batch(settings=settings, celery=celery)
        published += sent
        if not batch_full:
            return published


def _relay_batch(*, settings: Settings, celery: Celery) -> tuple[int, bool]:
    with contextlib.ExitStack() as stack:
        producers = []

        def publish(message: outbox.PendingMessage) -> None:
            # A producer only when there is something to send: an idle relay does not touch
            # the broker.
            if not producers:
                producers.append(stack.enter_context(celery.producer_or_acquire()))
            _publish(celery, producers[0], settings, message)

        return outbox.publish_pending(settings.resolved_database_url,
                                      limit=settings.relay_batch_size, publish=publish)


def _publish(celery: Celery, producer, settings: Settings, message: outbox.PendingMessage) -> None:
    options = time_limits(settings, message.queue) if message.task == RUN_JOB else {}
    celery.send_task(message.task, kwargs=message.payload, queue=message.queue,
                     producer=producer, retry=True, retry_policy=RETRY_POLICY, **options)


def run_relay_loop(*, settings: Settings, celery: Celery, stop: threading.Event) -> None:
    """`crma relay`: publish until `stop` is set; sleep `relay_interval_s` when idle and back
    off (up to 30 s) while the database or the broker is down. Webhook deliveries run on a
    thread of their own meanwhile (worker/webhooks.py)."""
    deliveries = start_webhook_deliveries(settings=settings, stop=stop)
    try:
        _publish_until(settings=settings, celery=celery, stop=stop)
    finally:
        stop.set()
        deliveries.join(timeout=settings.webhook_timeout_s + 10)


def _publish_until(*, settings: Settings, celery: Celery, stop: threading.Event) -> None:
    backoff = settings.relay_interval_s
    while not stop.is_set():
        try:
            sent = relay_once(settings=settings, celery=celery)
            backoff = settings.relay_interval_s
        except Exception:  # noqa: BLE001 - a loop that must outlive outages
            log.warning("relay pass failed; retrying in %.1fs", backoff, exc_info=True)
            stop.wait(backoff)
            backoff = min(30.0, backoff * 2)
            continue
        if sent:
            log.info("relayed %d outbox message(s)", sent)
        else:
            stop.wait(settings.relay_interval_s)
