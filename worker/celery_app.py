"""The Celery application and its whole reliability configuration, in one place.

Celery is the doorbell, PostgreSQL is the truth (docs/reliability.md). Training
tasks are acknowledged early: a worker killed mid-job loses its message, on purpose. The job
is recovered by exactly one path, the database lease + reaper: the lease expires, the reaper
puts the job back to `queued` with an outbox row, and the next claimant resumes it from its
last checkpoint. We do not use acks_late for training because on Redis it means
(a) a visibility timeout longer than the longest job (48 h) or duplicate deliveries of every
long job, which also delays recovery of genuinely lost ones by that timeout, and (b)
`task_reject_on_worker_lost` message loops when a job kills its worker every time (OOM).
Duplicates that still happen (the relay publishing twice, a re-offer racing a delivery) are
harmless: the lease claim lets one delivery through and the others exit without writing.

The short maintenance tasks (relay, reaper, ping) are idempotent and use acks_late with
reject_on_worker_lost plus bounded retries on transient errors: re-running them is free.

Process model: one worker process per GPU (`crma worker --gpu N`), concurrency 1, prefork
pool. On a GPU worker every task gets a fresh child (`worker_max_tasks_per_child = 1`), so
each job starts with a clean CUDA context and allocator; CUDA is never initialised in the
parent (not fork-safe). CPU workers (`crma dev`, tests) reuse their child: there is no CUDA
state to reset, and Celery replaces an exited child only on its 5-second pool-maintenance
timer, which measured 3-6 s of dead time after every task here (20 ms with reuse), i.e.
after every job, duplicate delivery and liveness ping. The parent of a CPU worker pre-imports
torch/transformers/peft (crma_cli/worker.py), so the child never pays those imports.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from app.settings import Settings, get_settings
from worker.routing import MAINTENANCE_QUEUE, REAP, RELAY_OUTBOX, TRAINING_QUEUES

# Registered by Celery when the app is finalized (tasks), and on import (signal hooks).
INCLUDE = ("worker.tasks", "worker.signals")


def is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "redis+socket://"))


def transport_options(settings: Settings) -> dict[str, Any]:
    url = settings.resolved_broker_url
    if is_redis(url):
        return {
            # Every key kombu writes (queues, bindings, unacked maps) lives under this prefix.
            "global_keyprefix": settings.broker_key_prefix,
            # Only acks_late messages (the short maintenance tasks) wait on this; training
            # tasks are acked before they run and are never prefetched (see below).
            "visibility_timeout": 3600,
        }
    if url.startswith("filesystem://"):
        folder = settings.resolved_data_dir / "broker"
        for sub in ("queue", "processed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
        }
    return {}


def configure(app: Celery, settings: Settings) -> None:
    url = settings.resolved_broker_url
    limits = settings.worker_time_limit_s
    longest = max(limits.values()) if limits else 48 * 3600.0
    options = transport_options(settings)
    app.conf.update(
        broker_url=url,
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        # No result backend: job state lives in PostgreSQL.
        result_backend=None,
        task_ignore_result=True,
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Training: early ack, never prefetch a second job behind a running one.
        task_acks_late=False,
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        worker_disable_prefetch=is_redis(url),
        worker_concurrency=1,
        worker_max_tasks_per_child=1 if settings.worker_device.startswith("cuda") else None,
        # Default limits fit the longest queue; the relay sends per-queue limits with each
        # training message. The soft limit is caught by the runner, which checkpoints and
        # hands the job back to the queue.
        task_time_limit=longest,
        task_soft_time_limit=max(1.0, longest - settings.worker_soft_time_margin_s),
        worker_soft_shutdown_timeout=settings.worker_shutdown_grace_s,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Each worker also consumes its own queue (pings that prove it is consuming).
        worker_direct=True,
        task_default_queue="small",
        task_queues=[
            Queue(name, Exchange(name), routing_key=name)
            for name in (*TRAINING_QUEUES, MAINTENANCE_QUEUE)
        ],
        task_routes={
            RELAY_OUTBOX: {"queue": MAINTENANCE_QUEUE},
            REAP: {"queue": MAINTENANCE_QUEUE},
        },
        # Optional: `celery -A worker.celery_app beat` + a worker on the maintenance queue
        # run the relay and reaper; `crma relay` / `crma reaper` loops are the default.
        beat_schedule={
            "relay-outbox": {"task": RELAY_OUTBOX, "schedule": settings.relay_interval_s * 4,
                             "options": {"expires": settings.relay_interval_s * 4}},
            "reap": {"task": REAP, "schedule": settings.reaper_interval_s,
                     "options": {"expires": settings.reaper_interval_s}},
        },
        worker_send_task_events=False,
        broker_channel_error_retry=True,
    )
    if is_redis(url):
        # Results are off, but keep the backend's transport options in step with the broker's
        # (the three-places rule of redis.rst "Caveats") in case someone enables one.
        app.conf.result_backend_transport_options = dict(options)


def time_limits(settings: Settings, queue: str) -> dict[str, float]:
    """Hard and soft limits for a training message on `queue` (sent by the relay)."""
    hard = settings.worker_time_limit_s.get(queue)
    if hard is None:
        return {}
    return {"time_limit": hard,
            "soft_time_limit": max(1.0, hard - settings.worker_soft_time_margin_s)}


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("crma", set_as_current=False, include=list(INCLUDE))
    configure(app, settings)
    return app


# The process-wide app (`celery -A worker.celery_app`). A worker imports INCLUDE when it
# starts: worker/tasks.py registers its tasks on this app, worker/signals.py its hooks.
app = create_app()
