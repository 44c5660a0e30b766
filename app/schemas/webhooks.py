"""Webhook endpoints and their delivery log (wire types)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.domain.webhooks import EVENT_TYPES
from app.schemas.common import ListEnvelope, RequestModel



class WebhookCreate(RequestModel):
    url: str = Field(max_length=2048, description=(
        "Where events are POSTed: https, resolving to public addresses only (a dev "
        "installation also accepts http and loopback/private addresses)."))
    event_types: list[str] | None = Field(
        None, max_length=len(EVENT_TYPES),
        description="Event types to send (default: all): " + ", ".join(EVENT_TYPES) + ".")
    description: str | None = Field(None, max_length=500)

    model_config = RequestModel.model_config | {
        "json_schema_extra": {"examples": [{
            "url": "https://hooks.example.com/crma",
            "event_types": ["fine_tuning.job.succeeded", "fine_tuning.job.failed"],
            "description": "CI pipeline",
        }]}
    }


class WebhookPublic(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    event_types: list[str]
    description: str | None
    status: Literal["enabled", "disabled"]
    disabled_reason: str | None = Field(
        None, description="Why the endpoint was disabled (automatically after persistent "
                          "failure, or by you).")
    secret_hint: str = Field(description="The secret's last characters (the secret itself "
                                         "is shown once, at creation).")
    created_at: int


class WebhookCreated(WebhookPublic):
    secret: str = Field(description=(
        "`whsec_…`: verifies the `webhook-signature` header (Standard Webhooks). Shown once: "
        "store it now."))


class WebhookList(ListEnvelope):
    data: list[WebhookPublic]


class DeliveryAttempt(BaseModel):
    at: int
    status_code: int | None
    error: str | None
    duration_ms: int


class WebhookDeliveryPublic(BaseModel):
    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    webhook_id: str
    event_id: str = Field(description="Sent as `webhook-id`: the same on every retry.")
    event_type: str
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None = Field(description="Why the last attempt got no HTTP answer "
                                               "(refused address, DNS, timeout, connection).")
    last_response_excerpt: str | None = Field(
        description="The first 512 bytes of the last answer; nothing more is kept.")
    attempt_log: list[DeliveryAttempt]
    next_attempt_at: int | None
    created_at: int
    last_attempt_at: int | None
    finished_at: int | None


class WebhookDeliveryList(ListEnvelope):
    data: list[WebhookDeliveryPublic]
