"""Tenant scoping in one place: every tenant-owned read goes through `scoped`/`get_owned`,
so another tenant's object is indistinguishable from a missing one."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

T = TypeVar("T")


def scoped(statement: Select[Any], model: type, account_id: str) -> Select[Any]:
    return statement.where(model.account_id == account_id)  # type: ignore[attr-defined]


def get_owned(session: Session, model: type[T], object_id: str, account_id: str) -> T | None:
    """The object if it exists *and* belongs to the account, else None (the caller 404s)."""
    statement = select(model).where(
        model.id == object_id,  # type: ignore[attr-defined]
        model.account_id == account_id,  # type: ignore[attr-defined]
    )
    return session.scalars(statement).first()
