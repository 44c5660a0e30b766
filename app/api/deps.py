"""Request dependencies: settings, the database session (the route's unit of work), the
object store, and the authenticated principal.

The session dependency commits when the route function returns and rolls back when it
raises. It runs with scope="function", so the connection is back in the pool before a
streamed response (file download, server-sent events) starts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.db.session import get_sessionmaker
from app.domain.errors import Unauthorized
from app.domain.principal import Principal
from app.services import auth
from app.settings import Settings
from app.storage.base import ObjectStore

__all__ = [
    "Principal", "get_principal", "get_session", "get_settings_dep", "get_store",
    "PrincipalDep", "SessionDep", "SettingsDep", "StoreDep",
]

# auto_error=False: a missing header gets our envelope (401), not FastAPI's default 403.
_bearer = HTTPBearer(
    auto_error=False,
    description="Your API key (`sk-crma-...`), created with `crma admin create-account`.",
)


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def open_session(settings: Settings) -> Session:
    return get_sessionmaker(settings.resolved_database_url, settings.db_timeout_s)()


def get_session(settings: SettingsDep) -> Iterator[Session]:
    session = open_session(settings)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_store(request: Request) -> ObjectStore:
    return request.app.state.store


StoreDep = Annotated[ObjectStore, Depends(get_store)]


def get_principal(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Bearer-token authentication; every failure is the same 401."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized(
            "You didn't provide an API key. Send it as 'Authorization: Bearer sk-crma-...'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    principal = auth.authenticate(
        session, api_key=credentials.credentials, pepper=settings.api_key_pepper
    )
    # Read by the access-log middleware (structured logs carry account_id).
    request.state.account_id = principal.account_id
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]
