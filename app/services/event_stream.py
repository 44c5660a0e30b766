"""Server-sent events for a job: replay what exists (oldest first, or after Last-Event-ID),
then follow new events until the job is terminal. Each poll opens a short session in a
worker thread, so a long-lived stream holds no database connection between polls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.db.models import Job, JobEvent
from app.domain.job_state import is_terminal
from app.services import events

POLL_INTERVAL_S = 0.5
BATCH = 100


def _poll(session_factory: Callable[[], Session], job_id: str, after_seq: int | None
          ) -> tuple[list[JobEvent], str | None]:
    with session_factory() as session:
        batch = events.list_events(session, job_id=job_id, after_seq=after_seq, limit=BATCH,
                                   newest_first=False)
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        return batch, status


async def follow(
    *, session_factory: Callable[[], Session], job_id: str, after_seq: int | None,
    render: Callable[[JobEvent], dict[str, Any]], poll_interval_s: float = POLL_INTERVAL_S,
) -> AsyncIterator[dict[str, Any]]:
    """Yields sse-starlette event dicts; ends with an `event: done` once the job is terminal
    and every event has been sent."""
    last = after_seq
    while True:
        batch, status = await run_in_threadpool(_poll, session_factory, job_id, last)
        for event in batch:
            last = event.seq
            yield render(event)
        if len(batch) == BATCH:
            continue
        if status is None or is_terminal(status):
            yield {"event": "done", "data": status or "gone"}
            return
        await asyncio.sleep(poll_interval_s)
