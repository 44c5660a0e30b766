"""What an outage of the database or the broker looks like to our code, so callers that
outlive one (a worker's fenced writes, the maintenance tasks' retries) can tell it from a
bug."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

# Worth retrying later: the database or the broker unreachable.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError, InterfaceError, ConnectionError, TimeoutError)


def database_unreachable(error: Exception) -> bool:
    """What a database that is down or restarting raises: a refused or dropped connection,
    a pool with no connection to give. (An IntegrityError and the like is a bug: not this.)"""
    if isinstance(error, OperationalError | InterfaceError | PoolTimeout):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated
