"""Hard time limits for a worker on Celery's solo pool, which enforces none.

On the prefork pool the parent SIGKILLs a pool child that passes a task's hard limit and
raises SoftTimeLimitExceeded in it (SIGUSR1) at the soft one. With the solo pool the task runs
in the worker's own main thread and neither happens (SIGUSR1 there is Celery's "dump the
stacks" handler). The soft limit needs no signal: the runner stops on its own before it,
checkpoints and hands the job back (worker/runner.py computes that deadline from the same
message). This module restores the hard one: a timer per task that, if the task still runs at
its hard limit, SIGKILLs the worker process, as billiard would kill the pool child. The
supervisor (`crma dev`) or the container's restart policy starts a new worker; the job's lease
expires and the reaper puts it back in the queue."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from celery import Celery
from celery.signals import task_postrun, task_prerun

log = logging.getLogger(__name__)

_timers: dict[str, threading.Timer] = {}


def enforce_hard_time_limits(app: Celery) -> None:
    def armed(task_id=None, task=None, **_: object) -> None:  # noqa: ANN001 - Celery's signature
        hard = (getattr(task.request, "timelimit", None) or (None, None))[0]
        hard = hard or app.conf.task_time_limit
        if not hard or not task_id:
            return
        timer = threading.Timer(float(hard), _kill, args=(task.name, task_id, float(hard)))
        timer.daemon = True
        _timers[task_id] = timer
        timer.start()

    def disarmed(task_id=None, **_: object) -> None:  # noqa: ANN001
        timer = _timers.pop(task_id, None) if task_id else None
        if timer is not None:
            timer.cancel()

    task_prerun.connect(armed, weak=False)
    task_postrun.connect(disarmed, weak=False)


def _kill(name: str, task_id: str, hard_s: float) -> None:
    message = (f"task {name}[{task_id}] passed its hard time limit ({hard_s:.0f} s): "
               f"killing worker process {os.getpid()}")
    log.error(message)
    print(message, file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
