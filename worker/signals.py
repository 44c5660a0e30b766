"""Celery signal hooks: register the worker's liveness row when it is ready to consume, and
turn a warm shutdown into a checkpoint + lease hand-back of the running job."""

from __future__ import annotations

import logging

from celery.signals import worker_ready, worker_shutting_down

from app.settings import get_settings

log = logging.getLogger(__name__)


@worker_ready.connect
def _register(sender=None, **_: object) -> None:  # noqa: ANN001 - Celery's signal signature
    from app.services.worker_liveness import register_worker

    settings = get_settings()
    consume_from = getattr(sender.app.amqp.queues, "consume_from", None) or {}
    queues = ",".join(sorted(q for q in consume_from if not q.endswith(".dq2")))
    try:
        register_worker(settings=settings, worker_name=sender.hostname, queues=queues,
                        device=settings.worker_device)
    except Exception:  # noqa: BLE001 - liveness must never stop the worker from consuming
        log.warning("could not register worker %s", sender.hostname, exc_info=True)


@worker_shutting_down.connect
def _shutting_down(sig=None, how=None, **_: object) -> None:  # noqa: ANN001
    """Warm shutdown: let the running job checkpoint and hand its lease back."""
    if how == "Warm":
        from worker import shutdown

        shutdown.forward_to_children()
