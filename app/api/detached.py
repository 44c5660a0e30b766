"""Work a request starts that must not hold the request up: a completion's settlement.

Starlette's BackgroundTask runs inside the request's ASGI call, after the body is sent, and
on a keep-alive connection the server reads that connection's next request only once the
call returns, so the client's next request waited for the previous one's settlement (a few
milliseconds of database round trips). A detached task runs on the event loop on its own;
this registry keeps a reference to each until it is done (the loop holds tasks only weakly)
and lets the app's shutdown wait for those still running."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class DetachedTasks:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def __len__(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout_s: float) -> None:
        """Wait for the tasks still running (at shutdown); what is left after `timeout_s` is
        logged (a settlement left undone is settled by the stale-request sweep)."""
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        if pending:
            log.warning("%d detached task(s) still running at shutdown", len(pending))
