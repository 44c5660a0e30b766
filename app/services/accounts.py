"""Accounts and their API keys (operator actions: the admin CLI calls these)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Account, ApiKey
from app.domain.api_keys import digest_api_key, display_prefix, generate_api_key
from app.domain.errors import InvalidRequest, NotFound
from app.domain.ids import new_id
from app.services import auth

PLANS = ("free", "pro")


@dataclass(frozen=True)
class AccountSummary:
    id: str
    name: str
    plan: str
    created_at: datetime
    credit_available_micros: int
    credit_held_micros: int
    active_keys: int


def create_account(
    session: Session, *, name: str, plan: str, pepper: str
) -> tuple[Account, str]:
    """A new account with one API key. Returns the account and the plaintext key (shown
    once). `pepper` is `Settings.api_key_pepper` (the key's digest is keyed with it)."""
    if plan not in PLANS:
        raise InvalidRequest(f"plan must be one of {', '.join(PLANS)}", param="plan")
    if not name.strip():
        raise InvalidRequest("name must not be empty", param="name")
    account = Account(
        id=new_id("account"), name=name.strip(), plan=plan, created_at=utcnow(),
        credit_available_micros=0, credit_held_micros=0, runs_used=0,
    )
    session.add(account)
    session.flush()
    _, key = create_api_key(session, account_id=account.id, pepper=pepper)
    return account, key


def create_api_key(
    session: Session, *, account_id: str, pepper: str, name: str = "default"
) -> tuple[ApiKey, str]:
    key = generate_api_key()
    row = ApiKey(
        id=new_id("api_key"), account_id=account_id, name=name, prefix=display_prefix(key),
        digest=digest_api_key(key, pepper=pepper), created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row, key


def revoke_key(session: Session, *, key_id: str) -> ApiKey:
    """Revoke a key (idempotent). This process forgets it at once; others within the TTL."""
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"No API key with id {key_id!r}", param="key_id")
    if row.revoked_at is None:
        session.execute(
            update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        session.refresh(row)
    auth.forget_key(key_id)
    return row


def list_accounts(session: Session) -> list[AccountSummary]:
    active = (
        select(ApiKey.account_id, func.count().label("n"))
        .where(ApiKey.revoked_at.is_(None))
        .group_by(ApiKey.account_id)
        .subquery()
    )
    rows = session.execute(
        select(Account, func.coalesce(active.c.n, 0))
        .outerjoin(active, active.c.account_id == Account.id)
        .order_by(Account.created_at, Account.id)
    ).all()
    return [
        AccountSummary(
            id=a.id, name=a.name, plan=a.plan, created_at=a.created_at,
            credit_available_micros=a.credit_available_micros,
            credit_held_micros=a.credit_held_micros, active_keys=int(n),
        )
        for a, n in rows
    ]


def list_keys(session: Session, *, account_id: str) -> list[ApiKey]:
    return list(
        session.scalars(
            select(ApiKey).where(ApiKey.account_id == account_id).order_by(ApiKey.created_at)
        )
    )
