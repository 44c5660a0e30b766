"""The child side of `crma dev`'s supervision: a supervised process never outlives `crma dev`.

`crma worker|relay|reaper --exit-with-parent PID` (what the supervisor runs):

1. asks the kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG, Linux), so a worker
   mid-job starts its warm shutdown (checkpoint, lease handed back) even when `crma dev` was
   SIGKILLed and cannot stop it; the parent's pid is checked right after, since a parent that
   died before the request was made sends nothing;
2. watches its parent in a thread: once the parent is gone (any platform), it waits
   `grace_s` for that shutdown and then SIGKILLs its own process group, so a shutdown that
   hangs (a Celery warm shutdown stuck in billiard's pool join) cannot leave it behind.

Set up in the child after exec, not in a `preexec_fn`: a preexec_fn can deadlock when the
parent has other threads (crma dev installs the model in one)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger(__name__)

POLL_S = 0.5
_PR_SET_PDEATHSIG = 1


def follow_parent(parent_pid: int, *, grace_s: float) -> None:
    """Exit with `parent_pid` (see the module docstring); returns at once."""
    if os.getppid() != parent_pid:
        # Already orphaned (re-parented to init or a subreaper) before we got here.
        os._exit(1)
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # died between the check above and prctl
            os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=_watch, args=(parent_pid, grace_s), name="parent-watch",
                     daemon=True).start()


def _watch(parent_pid: int, grace_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_S)
    log.warning("parent %d is gone; this process ends within %.0f s", parent_pid, grace_s)
    if not sys.platform.startswith("linux"):
        os.kill(os.getpid(), signal.SIGTERM)  # no parent-death signal there
    time.sleep(grace_s)
    print(f"[{os.getpid()}] still running {grace_s:.0f} s after the parent died: SIGKILL",
          file=sys.stderr, flush=True)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(os.getpgid(0), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
