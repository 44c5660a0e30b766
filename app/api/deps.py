"""Request dependencies: settings, the database session (the route's unit of work), the
object store, and the authenticated principal.

The session dependency commits when the route function returns and rolls back when it
raises. It runs with scope="function", so the connection is back in the pool before a
streamed response (file download, server-sent events) starts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from app.api.logs import account_id_var
from app.api.rate_limit import enforce as enforce_rate_limit
from app.db.session import get_engine, get_sessionmaker, session_scope
from app.domain.errors import Unauthorized
from app.domain.principal import Principal
from app.services import auth
from app.settings import Settings
from app.storage.base import ObjectStore

__all__ = [
    "Principal", "authenticate", "get_principal", "get_read_session", "get_session",
    "get_settings_dep", "get_store", "PrincipalDep", "ReadSessionDep", "SessionDep",
    "SettingsDep", "StoreDep",
]

# auto_error=False: a missing header gets our envelope (401), not FastAPI's default 403.
_bearer = HTTPBearer(
    auto_error=False,
    description="Your API key (`sk-crma-...`), created with `crma admin create-account`.",
)


# Dependencies that do no I/O are `async def`: a sync one would cost a thread-pool hop each.
async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def open_session(settings: Settings) -> Session:
    return get_sessionmaker(settings.resolved_database_url, settings.db_timeout_s)()


def get_session(settings: SettingsDep) -> Iterator[Session]:
    with session_scope(settings.resolved_database_url, settings.db_timeout_s) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


@lru_cache(maxsize=8)
def _read_sessionmaker(url: str, timeout_s: float) -> sessionmaker[Session]:
    # Same pool, autocommit connections: a read is one round trip, without BEGIN/COMMIT.
    engine = get_engine(url, timeout_s).execution_options(isolation_level="AUTOCOMMIT")
    return sessionmaker(bind=engine, expire_on_commit=False)


def open_read_session(settings: Settings) -> Session:
    return _read_sessionmaker(settings.resolved_database_url, settings.db_timeout_s)()


async def get_read_session(settings: SettingsDep) -> AsyncIterator[Session]:
    """For GET routes only: statements run outside a transaction and nothing is committed.

    `async` on purpose: opening a Session does no I/O and closing one only hands its
    autocommit connection back to the pool, so neither needs a worker thread (a sync
    generator dependency costs two thread hops per request, ~0.5 ms of CPU on a status read)."""
    session = open_read_session(settings)
    try:
        yield session
    finally:
        session.close()


ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]


async def get_store(request: Request) -> ObjectStore:
    return request.app.state.store


StoreDep = Annotated[ObjectStore, Depends(get_store)]


def _authenticate_with_database(settings: Settings, api_key: str) -> Principal:
    # Commits last_used_at.
    with session_scope(settings.resolved_database_url, settings.db_timeout_s) as session:
        return auth.authenticate(session, api_key=api_key, pepper=settings.api_key_pepper)


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Bearer-token authentication; every failure is the same 401. A cached key costs no
    thread hop and no query; a miss looks the digest up in a worker thread.

    Settings come from the app state, not from SettingsDep: FastAPI spends ~0.05 ms of CPU
    per dependency per request, and this one runs on every authenticated request."""
    settings: Settings = request.app.state.settings
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized(
            "You didn't provide an API key. Send it as 'Authorization: Bearer sk-crma-...'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    api_key = credentials.credentials
    principal = auth.cached_principal(api_key=api_key, pepper=settings.api_key_pepper)
    if principal is None:
        principal = await run_in_threadpool(_authenticate_with_database, settings, api_key)
    # Read by the access-log middleware, and by log lines of this request's context.
    request.state.account_id = principal.account_id
    account_id_var.set(principal.account_id)
    enforce_rate_limit(getattr(request.app.state, "rate_limiter", None),
                       key=principal.key_id, state=request.state)
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def authenticate(request: Request) -> Principal:
    """What PrincipalDep resolves, as a plain call (app/api/direct_routes.py)."""
    return await get_principal(request, await _bearer(request))
