"""The heartbeat thread of one running attempt: every `heartbeat_s` it calls
`Attempt.beat` (extend the lease, send the trained tokens, read the cancel flag, refresh the
worker's liveness). The training thread polls `stop_reason()` before every step, so a cancel,
a lost lease or a shutdown stops training within one heartbeat."""

from __future__ import annotations

import threading

from app.services.attempts import Attempt
from worker import shutdown


class LeaseKeeper:
    def __init__(self, attempt: Attempt) -> None:
        self.attempt = attempt
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{attempt.job.id}",
                                        daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.attempt.settings.heartbeat_s + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.attempt.settings.heartbeat_s):
            if not self.attempt.beat():
                return

    def stop_reason(self) -> str | None:
        """Why training must stop now, or None. Polled before every step."""
        attempt = self.attempt
        if attempt.fenced or attempt.lost:
            return "fenced"
        if attempt.cancel_requested:
            return "cancelled"
        if shutdown.requested():
            return "shutdown"
        return None
