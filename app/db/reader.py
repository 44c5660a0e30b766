"""Async reads for the hot GET routes (job status, job list, job events).

A status read through the ORM session costs ~1.2 ms of CPU for one indexed row (statement
construction, cache key, ORM loading, psycopg's per-column metadata) plus a worker-thread hop
for the sync route; on the 2-core target the API must answer 1,000 such reads per second next
to 100 creates (docs/benchmarks.md, API load). So the hot reads are `async def` routes that
run a few statements built once (SQLAlchemy Core with `bindparam`s, compiled once per
dialect) through asyncpg, ~0.06 ms of CPU each. Everything that writes, and every colder
read, keeps using the ORM session.

On SQLite (`crma dev`) the same statements run through the SQLAlchemy engine in a worker
thread: speed does not matter there, one definition of each query does.

Statements select `columns(Model, ...)`, labelled with the ORM attribute names (a job's
`metadata` column is `user_metadata`), so a row becomes a `Record` that presenters take like
a mapped object."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any, NamedTuple

from sqlalchemy import Select, inspect
from sqlalchemy.engine import Dialect
from starlette.concurrency import run_in_threadpool

from app.db.session import get_engine, is_sqlite, normalize_url


Rows = list[Mapping[str, Any]]


class DatabaseUnavailable(Exception):
    """The database could not be reached (or did not answer in time): a 503, not a 500."""


class Record(SimpleNamespace):
    """One row, with the mapped class's attribute names (see `columns`)."""


def columns(model: type, *attributes: str) -> list[Any]:
    """`model`'s columns for these attributes, labelled with the attribute names, so that a
    fetched row becomes a Record with `Record(**row)`, without renaming each key."""
    mapper = inspect(model)
    return [mapper.column_attrs[name].columns[0].label(name) for name in attributes]


class _Prepared(NamedTuple):
    statement: Select[Any]
    sql: str
    names: tuple[str, ...]  # of the `$n` parameters, in order
    fixed_values: Mapping[str, Any]


class Reader:
    """Runs prepared Core SELECTs; `fetch` returns rows as mappings (column name -> value)."""

    async def fetch(self, statement: Select[Any], params: dict[str, Any]) -> Rows:
        raise NotImplementedError

    async def fetch_one(self, statement: Select[Any],
                        params: dict[str, Any]) -> Mapping[str, Any] | None:
        rows = await self.fetch(statement, params)
        return rows[0] if rows else None

    async def close(self) -> None:
        """Release this event loop's connections."""


class EngineReader(Reader):
    """SQLite: the statement through the SQLAlchemy engine, in a worker thread."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.engine = get_engine(url, timeout_s)

    def _fetch(self, statement: Select[Any], params: dict[str, Any]) -> Rows:
        with self.engine.connect() as connection:
            return list(connection.execute(statement, params).mappings())

    async def fetch(self, statement: Select[Any], params: dict[str, Any]) -> Rows:
        return await run_in_threadpool(self._fetch, statement, params)


# What a lost or refused connection looks like from asyncpg (server down, restarted, full),
# and a statement cancelled by statement_timeout (a saturated server): 503s, like the
# OperationalError of the ORM path (app/api/errors.py).
def unavailable_errors() -> tuple[type[BaseException], ...]:
    import asyncpg

    return (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError, asyncpg.exceptions.CannotConnectNowError,
            asyncpg.exceptions.OperatorInterventionError,
            asyncpg.exceptions.TooManyConnectionsError,
            asyncpg.exceptions.QueryCanceledError)


class AsyncpgReader(Reader):
    """PostgreSQL through an asyncpg pool per event loop (uvicorn runs one loop per worker;
    a test client may run several in turn)."""

    def __init__(self, url: str, timeout_s: float, *, max_connections: int = 10) -> None:
        self.dsn = normalize_url(url).replace("postgresql+psycopg://", "postgresql://", 1)
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self._pools: dict[asyncio.AbstractEventLoop, Any] = {}
        self._compiled: dict[int, _Prepared] = {}
        self._dialect: Dialect | None = None
        self._unavailable = unavailable_errors()

    def _sql(self, statement: Select[Any]) -> _Prepared:
        """The statement compiled once for asyncpg (`$n` parameters)."""
        prepared = self._compiled.get(id(statement))
        if prepared is None or prepared.statement is not statement:
            if self._dialect is None:
                from sqlalchemy.dialects.postgresql.asyncpg import dialect

                self._dialect = dialect()
            compiled = statement.compile(dialect=self._dialect)
            prepared = self._compiled[id(statement)] = _Prepared(
                statement, compiled.string, tuple(compiled.positiontup or ()),
                # Values bound in the statement itself (`kind == "fine_tune"`); the caller
                # gives the others. construct_params on every call was ~8% of a status read.
                compiled.construct_params(_check=False))
        return prepared

    async def _pool(self) -> Any:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None or (pool.done() and (pool.cancelled() or pool.exception())):
            self._forget_closed_loops()
            # A task, so that concurrent first requests share one pool while it starts.
            pool = self._pools[loop] = loop.create_task(self._create_pool())
        return await pool

    async def _create_pool(self) -> Any:
        import asyncpg

        statement_ms = int(self.timeout_s * 1000)
        return await asyncpg.create_pool(
            self.dsn, min_size=0, max_size=self.max_connections, timeout=self.timeout_s,
            command_timeout=self.timeout_s * 5, init=_decode_json,
            # Reads only, outside transactions: nothing to reset between borrowers, and
            # asyncpg's default reset is a round trip per release.
            reset=_nothing_to_reset,
            server_settings={"statement_timeout": str(statement_ms * 5),
                             "application_name": "crma-api-reads"},
        )

    def _forget_closed_loops(self) -> None:
        for loop in [loop for loop in self._pools if loop.is_closed()]:
            task = self._pools.pop(loop)
            if task.done() and task.exception() is None:
                try:
                    task.result().terminate()  # its loop is gone: drop the sockets
                except Exception:  # noqa: BLE001 - best effort on a dead loop
                    pass

    async def fetch(self, statement: Select[Any], params: dict[str, Any]) -> Rows:
        prepared = self._sql(statement)
        fixed = prepared.fixed_values
        args = [params[name] if name in params else fixed[name] for name in prepared.names]
        try:
            pool = await self._pool()
            async with pool.acquire(timeout=self.timeout_s) as connection:
                return await connection.fetch(prepared.sql, *args)
        except self._unavailable as error:
            raise DatabaseUnavailable(type(error).__name__) from error

    async def close(self) -> None:
        task = self._pools.pop(asyncio.get_running_loop(), None)
        if task is not None:
            try:
                pool = await task
            except self._unavailable:
                return
            await pool.close()


async def _decode_json(connection: Any) -> None:
    for name in ("json", "jsonb"):
        await connection.set_type_codec(name, schema="pg_catalog", encoder=json.dumps,
                                        decoder=json.loads)


async def _nothing_to_reset(_connection: Any) -> None:
    return None


def open_reader(url: str, timeout_s: float = 2.0) -> Reader:
    if is_sqlite(url):
        return EngineReader(url, timeout_s)
    return AsyncpgReader(url, timeout_s)
