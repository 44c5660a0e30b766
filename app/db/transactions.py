"""Write transactions for `async` routes: run sync service code (which takes a Session) without
a worker thread where the driver allows it.

Job creation is the hot write path (100 creates/s next to 1,000 status reads/s on the 2-core
target, docs/benchmarks.md, API load). In a worker thread, each of its round trips waits to
get the GIL back from the event loop serving the reads (up to the 5 ms switch interval), so a
create took ~20 ms at the median under load for ~2.5 ms of CPU. On PostgreSQL the same
service code therefore runs on SQLAlchemy's asyncio engine (asyncpg): `AsyncSession.run_sync`
runs it in a greenlet on the event loop, and each statement awaits its round trip there.
SQLite (`crma dev`) keeps the thread: its driver has no async form worth the dependency.

asyncpg connections belong to the event loop that opened them, so there is one engine per
loop (uvicorn runs one per worker process; a test client may run several in turn)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.db.reader import DatabaseUnavailable, unavailable_errors
from app.db.session import (
    get_sessionmaker,
    is_sqlite,
    normalize_url,
    ping_idle_connections,
    server_options,
)

T = TypeVar("T")
# Opens the one Session of the work's transaction; the work commits (or rolls back) and
# closes it.
SessionFactory = Callable[[], Session]
Work = Callable[[SessionFactory], T]


class Transactions:
    async def run(self, work: Work[T]) -> T:
        """`work(open_session)`, where the work owns the session's transaction."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release this event loop's connections."""


class ThreadTransactions(Transactions):
    """SQLite: the sync engine, in a worker thread."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.sessions = get_sessionmaker(url, timeout_s)

    async def run(self, work: Work[T]) -> T:
        return await run_in_threadpool(work, self.sessions)


class AsyncpgTransactions(Transactions):
    """PostgreSQL: the work runs in a greenlet on this loop's asyncpg engine."""

    def __init__(self, url: str, timeout_s: float, *, pool_size: int = 10,
                 durable: bool = True) -> None:
        self.url = normalize_url(url).replace("postgresql+psycopg://", "postgresql+asyncpg://", 1)
        self.timeout_s = timeout_s
        self.pool_size = pool_size
        self.durable = durable
        self._engines: dict[asyncio.AbstractEventLoop, AsyncEngine] = {}
        self._unavailable = unavailable_errors()

    def _engine(self) -> AsyncEngine:
        loop = asyncio.get_running_loop()
        engine = self._engines.get(loop)
        if engine is None:
            self._forget_closed_loops()
            engine = self._engines[loop] = self._create_engine()
        return engine

    def _create_engine(self) -> AsyncEngine:
        engine = create_async_engine(
            self.url,
            pool_pre_ping=False,  # see app/db/session.py: idle connections are pinged instead
            pool_size=self.pool_size,
            max_overflow=2 * self.pool_size,
            pool_timeout=self.timeout_s,
            connect_args={"timeout": max(1.0, self.timeout_s),
                          "server_settings": self._server_settings()},
        )
        ping_idle_connections(engine.sync_engine)
        return engine

    def _server_settings(self) -> dict[str, str]:
        settings = server_options(self.timeout_s)
        if not self.durable:
            # The commit returns before its WAL record is flushed (see open_transactions).
            settings["synchronous_commit"] = "off"
        return settings

    def _forget_closed_loops(self) -> None:
        for loop in [loop for loop in self._engines if loop.is_closed()]:
            # Its connections died with their loop: drop them without closing them.
            self._engines.pop(loop).sync_engine.dispose(close=False)

    async def run(self, work: Work[T]) -> T:
        """The work must do no blocking I/O of its own: it runs on the event loop."""
        try:
            async with AsyncSession(self._engine(), expire_on_commit=False) as session:
                return await session.run_sync(lambda sync_session: work(lambda: sync_session))
        except self._unavailable as error:
            # Connecting failed (SQLAlchemy wraps what fails later in DBAPIError): a 503.
            raise DatabaseUnavailable(type(error).__name__) from error

    async def close(self) -> None:
        engine = self._engines.pop(asyncio.get_running_loop(), None)
        if engine is not None:
            await engine.dispose()


def open_transactions(url: str, timeout_s: float = 2.0, *, durable: bool = True
                      ) -> Transactions:
    """`durable=False`: on PostgreSQL, connections whose commits do not wait for the WAL
    flush (`synchronous_commit = off`), for work whose loss in a crash of the database server
    itself (the last ~200 ms of commits) is harmless; PostgreSQL keeps commit order either
    way. SQLite ignores it."""
    if is_sqlite(url):
        return ThreadTransactions(url, timeout_s)
    return AsyncpgTransactions(url, timeout_s, durable=durable)
