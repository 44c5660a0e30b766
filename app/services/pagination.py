"""Tenant-scoped queries: a select of the caller's own rows, one row by id, and cursor
pagination, newest first (`after` is the id of the last object of the previous page; the next
page holds what was created before it; the cursor must be one of the caller's own objects,
looked up in the same scoped query, else it is an invalid cursor)."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, select, tuple_
from sqlalchemy.orm import Session

from app.domain.errors import InvalidRequest
from app.domain.id_format import is_id

T = TypeVar("T")


def page(
    session: Session, statement: Select[Any], model: type[T], *, after: str | None, limit: int,
) -> tuple[list[T], bool]:
    """Run `statement` (already tenant-scoped) newest first; returns (rows, has_more)."""
    created, ident = model.created_at, model.id  # type: ignore[attr-defined]
    if after is not None:
        cursor = session.execute(
            statement.with_only_columns(created, ident).where(ident == after)
        ).first() if is_id(after) else None
        if cursor is None:
            raise invalid_cursor(after)
        statement = statement.where(tuple_(created, ident) < tuple_(cursor[0], cursor[1]))
    rows = list(session.scalars(statement.order_by(created.desc(), ident.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def invalid_cursor(cursor: str) -> InvalidRequest:
    return InvalidRequest(f"Unknown cursor {cursor!r}.", param="after", code="invalid_cursor")


def scoped_select(model: type[T], account_id: str) -> Select[Any]:
    return select(model).where(model.account_id == account_id)  # type: ignore[attr-defined]


def find_owned(session: Session, model: type[T], account_id: str, object_id: str,
               *criteria: Any, for_update: bool = False) -> T | None:
    """The account's row with this id (and `criteria`), or None; a malformed id is None
    without a query (a NUL byte or 10 kB of junk never reaches the database)."""
    if not is_id(object_id):
        return None
    statement = scoped_select(model, account_id).where(
        model.id == object_id, *criteria)  # type: ignore[attr-defined]
    if for_update:
        statement = statement.with_for_update()
    return session.scalars(statement).first()
