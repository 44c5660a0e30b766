"""The heartbeat thread of one running attempt.

Every `heartbeat_s` it extends the lease (fenced by the attempt number), writes the trained
token count so far (a cancel or budget stop bills what was trained), reads the cancel flag and
refreshes the worker's liveness row. The training thread polls `stop_reason()` before every
step, so a cancel, a lost lease or a shutdown stops training within one heartbeat."""

from __future__ import annotations

import logging
import threading
import time

from app.db.session import session_scope
from app.services import leases
from app.settings import Settings
from worker import shutdown
from worker.liveness import touch

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, *, settings: Settings, job_id: str, attempt: int, worker_name: str,
                 trained_tokens: int = 0) -> None:
        self.settings = settings
        self.job_id = job_id
        self.attempt = attempt
        self.worker_name = worker_name
        self.trained_tokens = trained_tokens  # written by the training thread
        self.cancel_requested = False
        self.fenced = False  # another attempt owns the job now
        self.lost = False  # no heartbeat got through for a whole lease: assume we lost it
        self._last_ok = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.settings.heartbeat_s + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_s):
            self.beat()
            if self.fenced or self.lost:
                return

    def beat(self) -> bool:
        """One heartbeat; False when this attempt no longer owns the job."""
        try:
            with session_scope(self.settings.resolved_database_url) as session:
                beat = leases.heartbeat(
                    session, job_id=self.job_id, attempt=self.attempt,
                    lease_ttl_s=self.settings.lease_ttl_s, trained_tokens=self.trained_tokens,
                )
                if beat is not None:
                    touch(session, worker_name=self.worker_name, current_job_id=self.job_id)
        except Exception:  # noqa: BLE001 - a database blip must not kill training (R7)
            log.warning("heartbeat of %s attempt %d failed", self.job_id, self.attempt,
                        exc_info=True)
            if time.monotonic() - self._last_ok > self.settings.lease_ttl_s:
                # The reaper may already have handed the job to another attempt (R8).
                self.lost = True
            return not self.lost
        if beat is None:
            log.warning("job %s attempt %d was fenced out; stopping", self.job_id, self.attempt)
            self.fenced = True
            return False
        self._last_ok = time.monotonic()
        self.cancel_requested = beat.cancel_requested
        return True

    def stop_reason(self) -> str | None:
        """Why training must stop now, or None. Polled before every step."""
        if self.fenced or self.lost:
            return "fenced"
        if self.cancel_requested:
            return "cancelled"
        if shutdown.requested():
            return "shutdown"
        return None
