"""Readiness checks: database, broker, object store and live workers, each bounded by a short
timeout so /readyz answers within a few seconds even when a dependency hangs.

Workers are judged by what they record in the database (the API does not import Celery):
`worker_heartbeats.last_seen_at` moves only when a worker consumes something (a job's lease
heartbeat, or a ping the reaper sends idle workers every `worker_ping_interval_s`,
worker/liveness.py). A training queue is served when some worker consuming it was seen within
LIVENESS_WINDOW_PINGS ping intervals; a worker killed outright is noticed at the latest then,
or at once under `crma dev`, whose supervisor retires a dead worker's row."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import timedelta

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from app.db.models import WorkerHeartbeat
from app.db.session import get_engine, session_scope
from app.db.base import db_now
from app.settings import Settings
from app.storage.base import ObjectStore

logger = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 3.0
# worker.celery_app.TRAINING_QUEUES (not imported: the API does not import Celery).
TRAINING_QUEUES = ("small", "large")
# An idle worker is pinged once its last sighting is a ping interval old, by a reaper pass
# that comes at most a reaper interval later: two intervals is the normal worst case.
LIVENESS_WINDOW_PINGS = 3
_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="readyz")


class NotReady(Exception):
    """A check's answer whose message is safe to show (it names no internals)."""


def check_database(settings: Settings) -> None:
    engine = get_engine(settings.resolved_database_url, settings.db_timeout_s)
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def check_broker(settings: Settings) -> None:
    """A cheap connection test (no message is sent)."""
    from kombu import Connection

    with Connection(settings.resolved_broker_url, connect_timeout=2) as connection:
        connection.ensure_connection(max_retries=1, timeout=2)


def check_storage(store: ObjectStore) -> None:
    store.ping()


def check_workers(settings: Settings) -> None:
    """Every training queue has a worker seen consuming within the liveness window."""
    window_s = LIVENESS_WINDOW_PINGS * settings.worker_ping_interval_s
    engine = get_engine(settings.resolved_database_url, settings.db_timeout_s)
    with Session(engine) as session:
        since = db_now(session) - timedelta(seconds=window_s)
        rows = session.scalars(select(WorkerHeartbeat.queues)
                               .where(WorkerHeartbeat.last_seen_at > since)).all()
    served = {queue for queues in rows for queue in queues.split(",")}
    missing = [queue for queue in TRAINING_QUEUES if queue not in served]
    if missing:
        raise NotReady(f"no live worker consumes queue {', '.join(missing)} (none seen in the "
                       f"last {window_s:.0f} s); jobs there wait until one does")


def retire_workers(database_url: str, *, worker_ids: list[str] | None = None,
                   prefix: str | None = None) -> int:
    """Forget workers known to be gone (their supervisor saw them exit), by id or id prefix,
    so readiness stops counting them at once. Returns how many rows went."""
    statement = delete(WorkerHeartbeat)
    if worker_ids is not None:
        statement = statement.where(WorkerHeartbeat.worker_id.in_(worker_ids))
    elif prefix is not None:
        statement = statement.where(WorkerHeartbeat.worker_id.startswith(prefix, autoescape=True))
    else:
        raise ValueError("name the workers to retire")
    with session_scope(database_url) as session:
        return session.execute(statement).rowcount


def readiness(settings: Settings, store: ObjectStore) -> dict[str, str]:
    """{"database": "ok" | "error: ...", "broker": ..., "storage": ..., "workers": ...}."""
    checks: dict[str, Callable[[], None]] = {
        "database": lambda: check_database(settings),
        "broker": lambda: check_broker(settings),
        "storage": lambda: check_storage(store),
        "workers": lambda: check_workers(settings),
    }
    futures = {name: _pool.submit(check) for name, check in checks.items()}
    results: dict[str, str] = {}
    for name, future in futures.items():
        try:
            future.result(timeout=CHECK_TIMEOUT_S)
            results[name] = "ok"
        except FutureTimeout:
            results[name] = "error: timed out"
        except NotReady as reason:
            results[name] = f"error: {reason}"
        except Exception as error:  # noqa: BLE001 - any failure means "not ready"
            logger.warning("readiness check %s failed: %s", name, error)
            results[name] = f"error: {type(error).__name__}"
    return results
