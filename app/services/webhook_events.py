"""Emitting webhook events: the event row and one pending delivery per listening endpoint,
written in the caller's transaction (the job lifecycle's terminal transition, or a test
request), so an event exists exactly when the state change it announces was committed.
The relay's delivery loop sends them (app/services/webhook_delivery.py).

An account without an enabled endpoint that listens writes nothing (one indexed SELECT)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db.base import db_now
from app.db.models import ContinualRun, WebhookDelivery, WebhookEndpoint, WebhookEvent
from app.domain import webhooks
from app.domain.ids import new_id


def emit_event(session: Session, *, account_id: str, type: str, data: dict[str, Any],
               dedupe_key: str, endpoint_id: str | None = None) -> str | None:
    """Record event `type` for every enabled endpoint of the account subscribed to it (only
    `endpoint_id` when given: the test event). Returns the event id, or None when no endpoint
    listens or the event was already emitted (same `dedupe_key`)."""
    query = select(WebhookEndpoint.id, WebhookEndpoint.event_types).where(
        WebhookEndpoint.account_id == account_id, WebhookEndpoint.status == "enabled")
    if endpoint_id is not None:
        query = query.where(WebhookEndpoint.id == endpoint_id)
    targets = [row.id for row in session.execute(query)
               if endpoint_id is not None or type in (row.event_types or ())]
    if not targets:
        return None
    now = db_now(session)
    event_id = webhooks.new_event_id()
    body = webhooks.event_body(event_id=event_id, type=type, created_at=int(now.timestamp()),
                               data=data)
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    inserted = session.execute(
        insert(WebhookEvent).values(id=event_id, account_id=account_id, type=type,
                                    body=body.decode("utf-8"), dedupe_key=dedupe_key,
                                    created_at=now)
        .on_conflict_do_nothing(index_elements=["account_id", "dedupe_key"])
        .returning(WebhookEvent.id)
    ).scalar_one_or_none()
    if inserted is None:
        return None
    session.execute(WebhookDelivery.__table__.insert(), [
        {"id": new_id("webhook_delivery"), "account_id": account_id, "event_id": event_id,
         "endpoint_id": target, "event_type": type, "status": "pending", "attempts": 0,
         "next_attempt_at": now, "attempt_log": [], "created_at": now}
        for target in targets
    ])
    return event_id


def job_finished(session: Session, *, account_id: str, job_id: str, kind: str,
                 run_id: str | None, stage_index: int | None, status: str) -> None:
    """`fine_tuning.job.<status>` for a fine-tuning job; for a continual run's stage that
    succeeded, `continual.run.stage.succeeded` (the run's own end is `run_finished`)."""
    if kind == "fine_tune" and status in webhooks.JOB_EVENT_BY_STATUS:
        emit_event(session, account_id=account_id, type=webhooks.JOB_EVENT_BY_STATUS[status],
                   data={"id": job_id}, dedupe_key=f"{job_id}:{status}")
    elif kind == "continual_stage" and status == "succeeded":
        emit_event(session, account_id=account_id, type=webhooks.RUN_STAGE_SUCCEEDED,
                   data={"id": run_id, "stage_index": stage_index, "job_id": job_id},
                   dedupe_key=f"{run_id}:stage:{stage_index}:{status}")


def run_finished(session: Session, *, run_id: str, status: str, stages: int) -> None:
    """`continual.run.<status>` once per (status, number of stages): a run that finishes
    again after domains were added to it announces it again."""
    if status not in webhooks.RUN_EVENT_BY_STATUS:
        return
    account_id = session.scalar(select(ContinualRun.account_id).where(ContinualRun.id == run_id))
    emit_event(session, account_id=account_id, type=webhooks.RUN_EVENT_BY_STATUS[status],
               data={"id": run_id}, dedupe_key=f"{run_id}:{status}:{stages}")
