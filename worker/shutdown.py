"""Warm shutdown of a worker that is training: on SIGTERM the running job checkpoints,
hands its lease back (status `queued`) and the next worker resumes it, instead of waiting for
the lease to expire.

Prefork: SIGTERM reaches the parent, which starts Celery's warm shutdown; our
`worker_shutting_down` hook (worker/signals.py) forwards SIGTERM to the pool's children, where
the runner's handler sets the flag. Solo pool: the hook sets the flag in-process."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_requested = threading.Event()


def request() -> None:
    _requested.set()


def requested() -> bool:
    return _requested.is_set()


@contextmanager
def while_training() -> Iterator[None]:
    """Around one job in a pool child: SIGTERM asks the job to checkpoint and hand its lease
    back instead of killing the process. Outside a job (an idle child that the pool
    terminates) SIGTERM keeps its default meaning. Not in the worker's main process (solo
    pool), where SIGTERM is Celery's own and `forward_to_children` sets the flag."""
    from billiard.process import current_process

    _requested.clear()
    in_child = (current_process()._name != "MainProcess"
                and threading.current_thread() is threading.main_thread())
    previous = signal.signal(signal.SIGTERM, lambda *_: request()) if in_child else None
    try:
        yield
    finally:
        if in_child:
            signal.signal(signal.SIGTERM, previous)


def forward_to_children() -> None:
    """Called in the worker's main process when Celery starts a warm shutdown."""
    import os

    from billiard.process import active_children

    request()
    for child in active_children():
        try:
            os.kill(child.pid, signal.SIGTERM)
        except (ProcessLookupError, TypeError):
            pass
