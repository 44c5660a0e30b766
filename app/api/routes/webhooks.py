"""Webhook endpoints: register (the secret is shown once), list, retrieve, delete, enable /
disable, the delivery log, and a test event. Events are signed per Standard Webhooks and
delivered by the relay (app/services/webhook_delivery.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from app.api.deps import PrincipalDep, ReadSessionDep, SessionDep
from app.api.idempotent import IdempotencyKey, respond_idempotently
from app.api.presenters import unix
from app.db.models import WebhookDelivery, WebhookEndpoint
from app.schemas.common import AfterParam, DeletedObject, LimitParam, error_responses
from app.schemas.webhooks import (
    DeliveryAttempt,
    WebhookCreate,
    WebhookCreated,
    WebhookDeliveryList,
    WebhookDeliveryPublic,
    WebhookList,
    WebhookPublic,
)
from app.services import webhooks

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


def webhook_public(endpoint: WebhookEndpoint) -> WebhookPublic:
    return WebhookPublic(
        id=endpoint.id, url=endpoint.url, event_types=list(endpoint.event_types),
        description=endpoint.description, status=endpoint.status,
        disabled_reason=endpoint.disabled_reason, secret_hint=endpoint.secret_hint,
        created_at=unix(endpoint.created_at))


def delivery_public(delivery: WebhookDelivery) -> WebhookDeliveryPublic:
    return WebhookDeliveryPublic(
        id=delivery.id, webhook_id=delivery.endpoint_id, event_id=delivery.event_id,
        event_type=delivery.event_type, status=delivery.status, attempts=delivery.attempts,
        last_status_code=delivery.last_status_code, last_error=delivery.last_error,
        last_response_excerpt=delivery.last_response_excerpt,
        attempt_log=[DeliveryAttempt(**entry) for entry in delivery.attempt_log or []],
        next_attempt_at=unix(delivery.next_attempt_at) if delivery.status == "pending" else None,
        created_at=unix(delivery.created_at), last_attempt_at=unix(delivery.last_attempt_at),
        finished_at=unix(delivery.finished_at))


@router.post("", status_code=201, response_model=WebhookCreated,
             responses=error_responses(400, 401, 409, 422))
async def create_webhook(body: WebhookCreate, request: Request, principal: PrincipalDep,
                         idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Register an endpoint. The response holds its `secret` (`whsec_…`), shown only here."""
    settings = request.app.state.settings
    webhooks.check_event_types(body.event_types)
    await webhooks.check_endpoint_url(body.url, settings=settings)

    def create(session: Session) -> tuple[WebhookCreated, dict[str, str]]:
        endpoint, secret = webhooks.create_endpoint(
            session, account_id=principal.account_id, url=body.url,
            event_types=body.event_types, description=body.description, settings=settings)
        return WebhookCreated(**webhook_public(endpoint).model_dump(), secret=secret), {}

    return await respond_idempotently(
        request, transactions=request.app.state.transactions, principal=principal,
        key=idempotency_key, body=body.model_dump(mode="json"), create=create,
        location=lambda webhook_id: f"/v1/webhooks/{webhook_id}")


@router.get("", response_model=WebhookList, responses=error_responses(400, 401))
def list_webhooks(principal: PrincipalDep, session: ReadSessionDep, after: AfterParam = None,
                  limit: LimitParam = 20) -> WebhookList:
    """Your webhook endpoints, newest first."""
    rows, has_more = webhooks.list_endpoints(session, account_id=principal.account_id,
                                             after=after, limit=limit)
    return WebhookList(data=[webhook_public(e) for e in rows], has_more=has_more)


@router.get("/{webhook_id}", response_model=WebhookPublic, responses=error_responses(401, 404))
def retrieve_webhook(webhook_id: str, principal: PrincipalDep,
                     session: ReadSessionDep) -> WebhookPublic:
    """One endpoint (its secret is not shown again)."""
    return webhook_public(webhooks.get_endpoint(session, account_id=principal.account_id,
                                                endpoint_id=webhook_id))


@router.delete("/{webhook_id}", response_model=DeletedObject,
               responses=error_responses(401, 404))
def delete_webhook(webhook_id: str, principal: PrincipalDep, session: SessionDep) -> DeletedObject:
    """Delete an endpoint and its delivery log; nothing more is sent to it."""
    webhooks.delete_endpoint(session, account_id=principal.account_id, endpoint_id=webhook_id)
    return DeletedObject(id=webhook_id, object="webhook_endpoint")


@router.post("/{webhook_id}/enable", response_model=WebhookPublic,
             responses=error_responses(401, 404))
def enable_webhook(webhook_id: str, principal: PrincipalDep, session: SessionDep) -> WebhookPublic:
    """Enable an endpoint again.

    After it was disabled for persistent failure, or by you; its deliveries still pending
    are sent again."""
    return webhook_public(webhooks.set_enabled(session, account_id=principal.account_id,
                                               endpoint_id=webhook_id, enabled=True))


@router.post("/{webhook_id}/disable", response_model=WebhookPublic,
             responses=error_responses(401, 404))
def disable_webhook(webhook_id: str, principal: PrincipalDep,
                    session: SessionDep) -> WebhookPublic:
    """Stop sending to an endpoint.

    No new event is recorded for it, and its pending deliveries wait until it is enabled
    again."""
    return webhook_public(webhooks.set_enabled(session, account_id=principal.account_id,
                                               endpoint_id=webhook_id, enabled=False))


@router.get("/{webhook_id}/deliveries", response_model=WebhookDeliveryList,
            responses=error_responses(400, 401, 404))
def list_deliveries(webhook_id: str, principal: PrincipalDep, session: ReadSessionDep,
                    after: AfterParam = None, limit: LimitParam = 20) -> WebhookDeliveryList:
    """The endpoint's delivery log, newest first.

    Each delivery: status, attempts, the last response code and an excerpt of the answer,
    timestamps, and one entry per attempt."""
    rows, has_more = webhooks.list_deliveries(session, account_id=principal.account_id,
                                              endpoint_id=webhook_id, after=after, limit=limit)
    return WebhookDeliveryList(data=[delivery_public(d) for d in rows], has_more=has_more)


@router.post("/{webhook_id}/test", status_code=202, response_model=WebhookDeliveryPublic,
             responses=error_responses(401, 404, 409))
def test_webhook(webhook_id: str, principal: PrincipalDep,
                 session: SessionDep) -> WebhookDeliveryPublic:
    """Send a `webhook.test` event to this endpoint.

    It is delivered by the relay like any event; follow it in the delivery log."""
    return delivery_public(webhooks.send_test(session, account_id=principal.account_id,
                                              endpoint_id=webhook_id))
