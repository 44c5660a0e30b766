"""API-key authentication: digest lookup, constant-time comparison, a short-lived cache.

Unknown, malformed and revoked keys all raise the same `Unauthorized`, so a caller cannot
tell a revoked key from one that never existed. The cache maps digest -> principal for at
most `CACHE_TTL_S`; `forget_key` (called on revocation) drops a key at once in this process,
other processes stop accepting it within the TTL."""

from __future__ import annotations

import hmac
import threading
import time
from collections import OrderedDict

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Account, ApiKey
from app.domain.api_keys import digest_api_key, looks_like_api_key
from app.domain.errors import Unauthorized
from app.domain.principal import Principal

CACHE_TTL_S = 30.0
_CACHE_MAX_ENTRIES = 10_000
INVALID_KEY_MESSAGE = "Incorrect API key provided."


class PrincipalCache:
    """digest -> (principal, expiry); LRU-bounded, thread-safe (sync routes run in threads)."""

    def __init__(self, ttl_s: float = CACHE_TTL_S, max_entries: int = _CACHE_MAX_ENTRIES) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: str) -> Principal | None:
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            if entry[1] < time.monotonic():
                del self._entries[digest]
                return None
            self._entries.move_to_end(digest)
            return entry[0]

    def put(self, digest: str, principal: Principal) -> None:
        with self._lock:
            self._entries[digest] = (principal, time.monotonic() + self.ttl_s)
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def forget_key(self, key_id: str) -> None:
        with self._lock:
            for digest in [d for d, (p, _) in self._entries.items() if p.key_id == key_id]:
                del self._entries[digest]

    def forget_account(self, account_id: str) -> None:
        with self._lock:
            for digest in [d for d, (p, _) in self._entries.items() if p.account_id == account_id]:
                del self._entries[digest]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


PRINCIPALS = PrincipalCache()


def forget_key(key_id: str) -> None:
    PRINCIPALS.forget_key(key_id)


def cached_principal(*, api_key: str, pepper: str) -> Principal | None:
    """The cached principal of a well-formed key, or None (then call `authenticate`)."""
    if not looks_like_api_key(api_key):
        return None
    return PRINCIPALS.get(digest_api_key(api_key, pepper=pepper))


def authenticate(session: Session, *, api_key: str, pepper: str) -> Principal:
    """The principal owning `api_key`, or `Unauthorized` (same error for every failure)."""
    if not looks_like_api_key(api_key):
        raise Unauthorized(INVALID_KEY_MESSAGE)
    digest = digest_api_key(api_key, pepper=pepper)
    cached = PRINCIPALS.get(digest)
    if cached is not None:
        return cached
    row = session.execute(
        select(ApiKey.id, ApiKey.digest, ApiKey.revoked_at, Account.id, Account.plan)
        .join(Account, Account.id == ApiKey.account_id)
        .where(ApiKey.digest == digest)
    ).first()
    # The indexed lookup finds the row; compare_digest keeps the final check constant-time.
    if row is None or row[2] is not None or not hmac.compare_digest(row[1], digest):
        raise Unauthorized(INVALID_KEY_MESSAGE)
    principal = Principal(account_id=row[3], plan=row[4], key_id=row[0])
    # last_used_at is refreshed on cache misses only: at most once per TTL per process.
    session.execute(update(ApiKey).where(ApiKey.id == row[0]).values(last_used_at=utcnow()))
    PRINCIPALS.put(digest, principal)
    return principal
