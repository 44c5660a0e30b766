"""Webhook endpoints of an account: register (URL checked, secret made), list, retrieve,
delete, enable / disable, the delivery log, and a test event. Another account's endpoint is
the same 404 as a missing one."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import WebhookDelivery, WebhookEndpoint
from app.domain import webhooks
from app.domain.errors import Conflict, InvalidRequest, NotFound
from app.domain.ids import new_id
from app.domain.secret_box import box_for
from app.domain.webhook_urls import WebhookURLRefused
from app.services.pagination import find_owned, page, scoped_select
from app.services.webhook_events import emit_event
from app.services.webhook_sender import check_url
from app.settings import Settings


async def check_endpoint_url(url: str, *, settings: Settings) -> None:
    """The registration check (form, and every address the host resolves to now): a 400
    `invalid_webhook_url` naming why. Deliveries check again (DNS may change)."""
    try:
        async with asyncio.timeout(settings.webhook_timeout_s):
            await check_url(url, allow_private=settings.webhook_allow_private_urls)
    except WebhookURLRefused as exc:
        raise InvalidRequest(f"The webhook URL is refused: {exc}.", param="url",
                             code="invalid_webhook_url") from None
    except TimeoutError:
        raise InvalidRequest(f"The webhook URL is refused: its host did not resolve within "
                             f"{settings.webhook_timeout_s:g} s.", param="url",
                             code="invalid_webhook_url") from None


def check_event_types(event_types: Sequence[str] | None) -> list[str]:
    """The subscription list (all types when None); a 400 names unknown types."""
    if event_types is None:
        return list(webhooks.EVENT_TYPES)
    if not event_types:
        raise InvalidRequest("event_types must name at least one event type (omit it for "
                             "all).", param="event_types", code="invalid_event_type")
    unknown = webhooks.unknown_event_types(event_types)
    if unknown:
        raise InvalidRequest(
            f"Unknown event type(s) {', '.join(repr(t) for t in unknown)}; known: "
            f"{', '.join(webhooks.EVENT_TYPES)}.", param="event_types",
            code="invalid_event_type")
    return list(dict.fromkeys(event_types))


def create_endpoint(session: Session, *, account_id: str, url: str,
                    event_types: Sequence[str] | None, description: str | None,
                    settings: Settings) -> tuple[WebhookEndpoint, str]:
    """A new enabled endpoint and its secret (returned once; the caller checked the URL)."""
    types = check_event_types(event_types)
    count = session.scalar(select(func.count()).select_from(WebhookEndpoint)
                           .where(WebhookEndpoint.account_id == account_id))
    if count >= settings.webhook_max_endpoints:
        raise InvalidRequest(
            f"An account can register at most {settings.webhook_max_endpoints} webhook "
            "endpoints; delete one first.", param="url", code="too_many_webhooks")
    secret = webhooks.new_secret()
    sealed = box_for(settings.webhook_secret_key_list).seal(secret)
    endpoint = WebhookEndpoint(id=new_id("webhook"), account_id=account_id, url=url,
                               description=description, event_types=types, secret=sealed,
                               secret_hint=webhooks.secret_hint(secret), status="enabled",
                               created_at=utcnow())
    session.add(endpoint)
    session.flush()
    return endpoint, secret


def reseal_secrets(session: Session, *, settings: Settings) -> tuple[int, int]:
    """Seal every endpoint's secret with the first of the configured keys: secrets stored
    unsealed, and those an older key sealed (key rotation). Returns (resealed, already
    current). Raises SecretKeyError when a sealed secret opens with none of the keys."""
    box = box_for(settings.webhook_secret_key_list)
    if not box.seals:
        raise InvalidRequest("CRMA_WEBHOOK_SECRET_KEYS is not set: there is no key to seal "
                             "with.", param="webhook_secret_keys")
    resealed = current = 0
    for endpoint in session.scalars(select(WebhookEndpoint).with_for_update()):
        if box.is_current(endpoint.secret):
            current += 1
            continue
        endpoint.secret = box.seal(box.open(endpoint.secret))
        resealed += 1
    session.flush()
    return resealed, current


def get_endpoint(session: Session, *, account_id: str, endpoint_id: str) -> WebhookEndpoint:
    endpoint = find_owned(session, WebhookEndpoint, account_id, endpoint_id)
    if endpoint is None:
        raise NotFound(f"No webhook endpoint {endpoint_id!r}.", param="webhook_id")
    return endpoint


def list_endpoints(session: Session, *, account_id: str, after: str | None,
                   limit: int) -> tuple[list[WebhookEndpoint], bool]:
    return page(session, scoped_select(WebhookEndpoint, account_id), WebhookEndpoint,
                after=after, limit=limit)


def delete_endpoint(session: Session, *, account_id: str, endpoint_id: str) -> None:
    """Delete the endpoint and its delivery log; its pending deliveries are never sent."""
    endpoint = get_endpoint(session, account_id=account_id, endpoint_id=endpoint_id)
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id))
    session.delete(endpoint)
    session.flush()


def set_enabled(session: Session, *, account_id: str, endpoint_id: str,
                enabled: bool) -> WebhookEndpoint:
    """Enable (deliveries still pending go out again) or disable an endpoint."""
    endpoint = get_endpoint(session, account_id=account_id, endpoint_id=endpoint_id)
    endpoint.status = "enabled" if enabled else "disabled"
    endpoint.disabled_reason = None if enabled else "disabled by the account"
    endpoint.disabled_at = None if enabled else utcnow()
    if enabled:
        # Deliveries that waited while it was disabled are due now.
        session.execute(update(WebhookDelivery).where(
            WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.status == "pending",
        ).values(next_attempt_at=utcnow()).execution_options(synchronize_session=False))
    session.flush()
    return endpoint


def list_deliveries(session: Session, *, account_id: str, endpoint_id: str,
                    after: str | None, limit: int) -> tuple[list[WebhookDelivery], bool]:
    """The endpoint's delivery log, newest first."""
    endpoint = get_endpoint(session, account_id=account_id, endpoint_id=endpoint_id)
    statement = scoped_select(WebhookDelivery, account_id).where(
        WebhookDelivery.endpoint_id == endpoint.id)
    return page(session, statement, WebhookDelivery, after=after, limit=limit)


def send_test(session: Session, *, account_id: str, endpoint_id: str) -> WebhookDelivery:
    """A `webhook.test` event for this endpoint only, delivered like any other."""
    endpoint = get_endpoint(session, account_id=account_id, endpoint_id=endpoint_id)
    if endpoint.status != "enabled":
        raise Conflict("This webhook endpoint is disabled; enable it first "
                       f"(POST /v1/webhooks/{endpoint.id}/enable).", code="webhook_disabled")
    event_id = emit_event(session, account_id=account_id, type=webhooks.TEST_EVENT,
                          data={"id": endpoint.id}, dedupe_key=f"test:{new_id('webhook_event')}",
                          endpoint_id=endpoint.id)
    return session.scalars(select(WebhookDelivery).where(
        WebhookDelivery.event_id == event_id, WebhookDelivery.endpoint_id == endpoint.id)).one()
