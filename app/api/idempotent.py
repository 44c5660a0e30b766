"""Glue between creating routes and the idempotency service: fingerprint the request, run
the creating work in one transaction under the Idempotency-Key, answer (or replay) it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from app.db.transactions import Transactions
from app.domain.principal import Principal
from app.services.idempotency import StoredResponse, fingerprint, run_idempotent

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", description="Retry-safe key: the same key and body replay "
           "the first response for 24 h.",
           # Documented only (the service answers 400 invalid_idempotency_key otherwise).
           json_schema_extra={"pattern": "^[ -~]+$", "minLength": 1, "maxLength": 255}),
]

Creator = Callable[[Session], tuple[BaseModel, dict[str, str]]]


async def respond_idempotently(
    request: Request, *, transactions: Transactions, principal: Principal, key: str | None,
    body: Any, create: Creator, status_code: int = 201,
    location: Callable[[str], str] | None = None,
) -> JSONResponse:
    """Run `create(session)` -> (public model, headers) at most once per key, through
    `transactions` (app/db/transactions.py); the session's transaction is committed by the
    idempotency wrapper."""

    def handler(session: Session) -> StoredResponse:
        public, headers = create(session)
        if location is not None:
            headers = {**headers, "location": location(getattr(public, "id"))}
        return StoredResponse(status_code, public.model_dump(mode="json"), headers)

    request_fingerprint = fingerprint(method=request.method, path=request.url.path, body=body)
    ttl_s = request.app.state.settings.idempotency_ttl_s
    response = await transactions.run(lambda open_session: run_idempotent(
        session_factory=open_session, account_id=principal.account_id, key=key,
        fingerprint=request_fingerprint, handler=handler, ttl_s=ttl_s,
    ))
    return JSONResponse(response.body, status_code=response.status_code, headers=response.headers)
