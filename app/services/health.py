"""Readiness checks: database, broker and object store, each bounded by a short timeout so
/readyz answers within a few seconds even when a dependency hangs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from sqlalchemy import text

from app.db.session import get_engine
from app.settings import Settings
from app.storage.base import ObjectStore

logger = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 3.0
_pool = ThreadPoolExecutor(max_workers=6, thread_name_prefix="readyz")


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


def readiness(settings: Settings, store: ObjectStore) -> dict[str, str]:
    """{"database": "ok" | "error: ...", "broker": ..., "storage": ...}."""
    checks: dict[str, Callable[[], None]] = {
        "database": lambda: check_database(settings),
        "broker": lambda: check_broker(settings),
        "storage": lambda: check_storage(store),
    }
    futures = {name: _pool.submit(check) for name, check in checks.items()}
    results: dict[str, str] = {}
    for name, future in futures.items():
        try:
            future.result(timeout=CHECK_TIMEOUT_S)
            results[name] = "ok"
        except FutureTimeout:
            results[name] = "error: timed out"
        except Exception as error:  # noqa: BLE001 - any failure means "not ready"
            logger.warning("readiness check %s failed: %s", name, error)
            results[name] = f"error: {type(error).__name__}"
    return results
