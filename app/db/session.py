"""Engines and sessions. PostgreSQL in production and tests, SQLite for `crma dev`.

Timeouts are short on purpose: when the database is down the API must answer 503 within
about two seconds instead of hanging (docs/reliability.md, PostgreSQL down)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain `postgresql://` URLs."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


@lru_cache(maxsize=8)
def get_engine(url: str, timeout_s: float = 2.0) -> Engine:
    url = normalize_url(url)
    if is_sqlite(url):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=True
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    options = " ".join(f"-c {name}={value}" for name, value in server_options(timeout_s).items())
    engine = create_engine(
        url,
        # Not pool_pre_ping: a SELECT 1 round trip on every checkout was a third of a status
        # read. Connections idle for a while are pinged instead (below); a hot connection
        # that died with the server fails its one statement (a 503, see app/api/errors.py)
        # and SQLAlchemy then recycles every older connection of the pool.
        pool_pre_ping=False,
        pool_size=10,
        max_overflow=20,
        pool_timeout=timeout_s,
        connect_args={
            "connect_timeout": max(1, int(timeout_s)),
            "options": options,
        },
    )
    ping_idle_connections(engine)
    return engine


def server_options(timeout_s: float) -> dict[str, str]:
    """Session settings of every API connection: statement_timeout bounds a hung query,
    lock_timeout a blocked row lock."""
    statement_ms = int(timeout_s * 1000)
    return {"statement_timeout": str(statement_ms * 5), "lock_timeout": str(statement_ms)}


# A pooled connection unused for this long is pinged before use (it may have died with a
# database restart, a failover or an idle timeout in between).
PING_IDLE_AFTER_S = 5.0


def ping_idle_connections(engine: Engine) -> None:
    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection, record) -> None:  # noqa: ANN001 - pool hook
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection, record, _proxy) -> None:  # noqa: ANN001 - pool hook
        returned = record.info.get("returned_at")
        if returned is None or time.monotonic() - returned < PING_IDLE_AFTER_S:
            return
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
            dbapi_connection.rollback()  # leave no transaction open (autocommit is set later)
        except Exception as error:
            # The pool discards this connection and checks out (or opens) another.
            raise DisconnectionError() from error


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - DBAPI hook
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@lru_cache(maxsize=8)
def get_sessionmaker(url: str, timeout_s: float = 2.0) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url, timeout_s), expire_on_commit=False)


@contextmanager
def session_scope(url: str, timeout_s: float = 2.0) -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception."""
    session = get_sessionmaker(url, timeout_s)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
