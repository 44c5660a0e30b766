"""The reaper: the single recovery path for jobs whose worker died (app/services/recovery.py
does the passes), plus the liveness pings of idle workers. Run as `crma reaper` (a loop), as
the Celery beat task `crma.reap`, or in-process by `crma dev`.

Idle workers are pinged through their own queue (`worker_direct`): a worker whose liveness
row stops moving while it is idle is not consuming (app/services/worker_liveness.py)."""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery
from celery.utils.nodenames import worker_direct

from app.services import exports, recovery, worker_liveness
from app.services.recovery import ReapReport
from app.settings import Settings
from worker.routing import PING

log = logging.getLogger(__name__)

# worker name -> monotonic time this process last pinged it. At most one ping per interval
# per worker: pings must not pile up behind a slow worker (each one takes the pool slot).
_last_ping: dict[str, float] = {}


def reap_once(*, settings: Settings, celery: Celery | None = None) -> ReapReport:
    report = recovery.recover(settings)
    stale_exports = exports.recover_stale(settings)
    if stale_exports:
        log.warning("reaper: %d merged-weights export(s) lost their worker", stale_exports)
    if celery is not None:
        report.pinged = ping_idle_workers(celery=celery, settings=settings)
    return report


def ping_idle_workers(*, celery: Celery, settings: Settings) -> int:
    """Ping each idle worker not seen for a ping interval (and seen this hour) through its
    own queue, unless this process pinged it less than an interval ago."""
    sent = 0
    for name in worker_liveness.idle_workers(settings=settings):
        if time.monotonic() - _last_ping.get(name, float("-inf")) < settings.worker_ping_interval_s:
            continue
        try:
            celery.send_task(PING, queue=worker_direct(name),
                             expires=settings.worker_ping_interval_s)
            _last_ping[name] = time.monotonic()
            sent += 1
        except Exception:  # noqa: BLE001 - the broker being down must not stop the reaper
            log.warning("could not ping worker %s", name, exc_info=True)
            break
    return sent


def run_reaper_loop(*, settings: Settings, celery: Celery | None, stop: threading.Event) -> None:
    """`crma reaper`: one pass every `reaper_interval_s` until `stop` is set."""
    while not stop.is_set():
        try:
            report = reap_once(settings=settings, celery=celery)
            if report.requeued or report.failed or report.reoffered:
                log.info("reaper: %s", report.as_dict())
        except Exception:  # noqa: BLE001 - the loop outlives database outages
            log.warning("reaper pass failed", exc_info=True)
        stop.wait(settings.reaper_interval_s)
