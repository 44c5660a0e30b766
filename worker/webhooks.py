"""The relay process's webhook thread: the delivery loop of app/services/webhook_delivery.py
on an asyncio loop of its own, so webhook attempts (seconds each when a receiver is slow)
never hold up the Celery publishing on the relay's main thread."""

from __future__ import annotations

import asyncio
import logging
import threading

from app.services.webhook_delivery import DeliveryLoop
from app.settings import Settings

log = logging.getLogger(__name__)


def start_webhook_deliveries(*, settings: Settings, stop: threading.Event) -> threading.Thread:
    """Run the delivery loop until `stop` is set (join the returned thread after that)."""

    def run() -> None:
        try:
            asyncio.run(DeliveryLoop(settings).run(stop))
        except Exception:  # noqa: BLE001 - logged; the relay itself keeps publishing
            log.exception("the webhook delivery loop stopped")

    thread = threading.Thread(target=run, name="webhook-deliveries", daemon=True)
    thread.start()
    return thread
