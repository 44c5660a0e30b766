"""Warm shutdown of a worker that is training (R9): on SIGTERM the running job checkpoints,
hands its lease back (status `queued`) and the next worker resumes it, instead of waiting for
the lease to expire.

Prefork: SIGTERM reaches the parent, which starts Celery's warm shutdown; our
`worker_shutting_down` hook (worker/signals.py) forwards SIGTERM to the pool's children, where
the runner's handler sets the flag. Solo pool: the hook sets the flag in-process."""

from __future__ import annotations

import signal
import threading

_requested = threading.Event()


def request() -> None:
    _requested.set()


def requested() -> bool:
    return _requested.is_set()


def install_child_handler() -> None:
    """In a pool child that trains: SIGTERM asks for a clean stop instead of killing it.
    Not in the worker's main process (solo pool), where SIGTERM is Celery's own."""
    from billiard.process import current_process

    if current_process()._name == "MainProcess":
        return
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: request())


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
