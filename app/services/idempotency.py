"""Idempotency-Key handling for creating POSTs (docs/user-guide.md; docs/reliability.md, "Money").

One database transaction holds the key claim, the creating work done by the route's handler
(job insert, admission hold, event, outbox row) and the stored response. Either all of it
commits or none of it does, so there is no half-done state to recover and no
`in_progress` row is ever visible to another transaction.

Semantics (per account; keys are 1..255 printable ASCII characters):
- first request: the handler runs; a 2xx/3xx response is stored with the claim and returned;
- same key, same fingerprint, after it committed: the stored status, body and headers are
  replayed (plus `idempotent-replayed: true`), nothing runs again;
- same key, different fingerprint: 422 `idempotency_key_reused`;
- same key while the first request is still running: 409 `idempotency_key_in_use` with
  Retry-After (PostgreSQL; SQLite serialises writers, so there the duplicate waits for the
  first one and replays it);
- errors are NOT stored: a handler that raises (DomainError -> 4xx, anything else -> 5xx) or
  returns a status >= 400 rolls the whole transaction back, key claim included, so a
  corrected retry with the same key runs normally. This differs from Stripe (which stores
  500s) on purpose: since the work rolled back too, re-running it is safe;
- records live `settings.idempotency_ttl_s` (>= 24 h); an expired record is overwritten.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic_core import to_jsonable_python
from sqlalchemy import bindparam, delete, select, text, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import IdempotencyRecord
from app.domain.errors import Conflict, InvalidRequest, Unprocessable

MAX_KEY_LENGTH = 255
IN_USE_RETRY_AFTER_S = 1
REPLAYED_HEADER = "idempotent-replayed"

# Built once (Core on the table, bind parameters): every creating POST runs these.
_records = IdempotencyRecord.__table__
# PostgreSQL: the claim row stays invisible until commit, and a plain INSERT would block on
# the in-flight duplicate's uncommitted row. A transaction-scoped advisory lock on the key
# lets the duplicate see "in flight" at once and answer 409 instead of waiting. The lock and
# the claim are one statement (one round trip): the INSERT reads the lock's result, so it
# runs only once the lock is held, and a conflict there is a committed record (an in-flight
# one holds the lock), which the caller then reads with a fresh snapshot.
_LOCK_AND_CLAIM_PG = text("""
    WITH advisory AS (SELECT pg_try_advisory_xact_lock(:lock_id) AS locked),
    claim AS (
        INSERT INTO idempotency_records
            (account_id, key, request_hash, status, created_at, expires_at)
        SELECT :account_id, :key, :request_hash, :status, :created_at, :expires_at
        FROM advisory WHERE locked
        ON CONFLICT (account_id, key) DO NOTHING
        RETURNING key
    )
    SELECT locked, (SELECT key FROM claim) FROM advisory
""")
_CLAIM_SQLITE = (
    sqlite_insert(_records)
    .on_conflict_do_nothing(index_elements=["account_id", "key"])
    .returning(_records.c.key)
)
_this_key = (_records.c.account_id == bindparam("b_account_id"),
             _records.c.key == bindparam("b_key"))
# ORM (the replay reads the record's attributes), re-read even if already in the session.
_RECORD = (
    select(IdempotencyRecord).where(*_this_key).execution_options(populate_existing=True)
)
# SET takes the columns given with each execution.
_SET_RECORD = update(_records).where(*_this_key)


@dataclass(frozen=True)
class StoredResponse:
    """What a creating route answers. `body` must be JSON-serialisable (pydantic models are
    accepted and converted); `headers` should describe the resource (Location, quota
    headers), never per-request ones such as x-request-id, because replays repeat them."""

    status_code: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def replayed(self) -> bool:
        return self.headers.get(REPLAYED_HEADER) == "true"


def fingerprint(*, method: str, path: str, body: Any) -> str:
    """sha256 of the request's method, path and canonical JSON body: what "same body" means.
    Pass the validated request model (or its `model_dump(mode="json")`)."""
    canonical = json.dumps(
        {"method": method.upper(), "path": path, "body": to_jsonable_python(body)},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def validate_key(key: str | None) -> str | None:
    """None passes (the header is optional on most POSTs); otherwise 1..255 printable ASCII."""
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all(32 <= ord(c) < 127 for c in key):
        raise InvalidRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters.",
            code="invalid_idempotency_key",
            param="Idempotency-Key",
        )
    return key


def run_idempotent(
    *,
    session_factory: Callable[[], Session],
    account_id: str,
    key: str | None,
    fingerprint: str,
    handler: Callable[[Session], StoredResponse],
    ttl_s: float,
    now: datetime | None = None,
) -> StoredResponse:
    """Run `handler(session)` at most once per (account_id, key) and return its response.

    `session_factory` opens a fresh Session (e.g. `get_sessionmaker(url)`); this function
    owns that session's transaction and commits it: the handler must not commit. With
    `key=None` the handler simply runs in one committed transaction.

    Raises InvalidRequest (400, bad key), Unprocessable (422 `idempotency_key_reused`),
    Conflict (409 `idempotency_key_in_use`, retry_after_s=1), or whatever the handler
    raises (after rolling everything back). Returns the first response, or its replay whose
    headers carry `idempotent-replayed: true`. A key is remembered for `ttl_s` seconds
    (`Settings.idempotency_ttl_s`).
    """
    validate_key(key)
    session = session_factory()
    try:
        if key is None:
            response = _normalise(handler(session))
            if response.status_code >= 400:
                session.rollback()
            else:
                session.commit()
            return response
        stored = _claim(session, account_id=account_id, key=key, fingerprint=fingerprint,
                        now=now, ttl_s=ttl_s)
        if stored is not None:
            session.rollback()
            return stored
        response = _normalise(handler(session))
        if response.status_code >= 400:
            session.rollback()
            return response
        _store(session, account_id=account_id, key=key, response=response)
        session.commit()
        return response
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def purge_expired(session: Session, *, now: datetime | None = None) -> int:
    """Delete records past their expiry (a periodic janitor may call this); returns count."""
    result = session.execute(
        delete(IdempotencyRecord).where(IdempotencyRecord.expires_at < (now or utcnow()))
    )
    return result.rowcount or 0


def _claim(
    session: Session, *, account_id: str, key: str, fingerprint: str, now: datetime | None,
    ttl_s: float,
) -> StoredResponse | None:
    """Claim the key inside the caller's transaction. None means "go ahead"; a
    StoredResponse is a replay; errors are raised."""
    now = now or utcnow()
    expires_at = now + timedelta(seconds=ttl_s)
    values = {
        "account_id": account_id, "key": key, "request_hash": fingerprint,
        "status": "in_progress", "created_at": now, "expires_at": expires_at,
    }
    if session.get_bind().dialect.name == "postgresql":
        locked, inserted = session.execute(
            _LOCK_AND_CLAIM_PG, {**values, "lock_id": _advisory_lock_id(account_id, key)}
        ).one()
        if not locked:
            raise _in_use()
    else:
        inserted = session.execute(_CLAIM_SQLITE, values).scalar_one_or_none()
    if inserted is not None:
        return None
    record = session.execute(
        _RECORD, {"b_account_id": account_id, "b_key": key}
    ).scalar_one()
    if _as_aware(record.expires_at) <= now:
        session.execute(_SET_RECORD, {
            "b_account_id": account_id, "b_key": key, "request_hash": fingerprint,
            "status": "in_progress", "response_code": None, "response_body": None,
            "response_headers": None, "resource_id": None, "created_at": now,
            "expires_at": expires_at,
        })
        return None
    if record.request_hash != fingerprint:
        raise Unprocessable(
            "This Idempotency-Key was already used with a different request body.",
            code="idempotency_key_reused",
            param="Idempotency-Key",
        )
    if record.status != "done" or record.response_code is None:
        raise _in_use()
    headers = dict(record.response_headers or {})
    headers[REPLAYED_HEADER] = "true"
    return StoredResponse(
        status_code=record.response_code,
        body=json.loads(record.response_body or "null"),
        headers=headers,
    )


def _store(session: Session, *, account_id: str, key: str, response: StoredResponse) -> None:
    body = response.body
    resource_id = body.get("id") if isinstance(body, Mapping) else None
    session.execute(_SET_RECORD, {
        "b_account_id": account_id, "b_key": key, "status": "done",
        "response_code": response.status_code,
        "response_body": json.dumps(body, separators=(",", ":")),
        "response_headers": dict(response.headers),
        "resource_id": resource_id if isinstance(resource_id, str) else None,
    })


def _normalise(response: StoredResponse) -> StoredResponse:
    """Round-trip the body through JSON so the first answer and every replay are identical."""
    body = json.loads(json.dumps(to_jsonable_python(response.body), separators=(",", ":")))
    headers = {str(k).lower(): str(v) for k, v in response.headers.items()}
    return StoredResponse(status_code=response.status_code, body=body, headers=headers)


def _advisory_lock_id(account_id: str, key: str) -> int:
    digest = hashlib.sha256(f"idempotency\x00{account_id}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _in_use() -> Conflict:
    return Conflict(
        "A request with this Idempotency-Key is still in progress; retry shortly.",
        code="idempotency_key_in_use",
        param="Idempotency-Key",
        retry_after_s=IN_USE_RETRY_AFTER_S,
        headers={"Retry-After": str(IN_USE_RETRY_AFTER_S)},
    )


def _as_aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; stored values are UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
