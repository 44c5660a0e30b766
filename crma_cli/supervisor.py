"""`crma dev`'s child processes (worker, relay, reaper), kept running and stopped for certain.

- A child that exits while `crma dev` runs is restarted after a backoff (1 s, doubling up to
  30 s; back to 1 s once it has stayed up a minute), with a log line for the exit and one for
  the restart.
- `stop()` sends SIGTERM to every child (a worker mid-job checkpoints and hands its lease
  back), waits up to `grace_s`, then SIGKILLs the process group of any child still running.
- If `crma dev` itself dies (SIGKILL, a crash), every child notices on its own and ends within
  `grace_s` (crma_cli/parent_watch.py): each is started with `--exit-with-parent`.

Each child gets its own session (process group): Ctrl-C in the terminal reaches `crma dev`
only, which then stops the children in order."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0
POLL_S = 0.2


@dataclass
class ChildSpec:
    """`command(generation)` is the argv of the generation-th start (0, 1, ...);
    `on_exit(generation)` runs after that start's process has exited (bookkeeping such as
    retiring the worker's liveness row; its errors are logged, never raised)."""

    name: str
    command: Callable[[int], list[str]]
    on_exit: Callable[[int], None] | None = None


@dataclass
class _Child:
    spec: ChildSpec
    process: subprocess.Popen[bytes] | None = None
    generation: int = -1
    started_at: float = 0.0
    backoff_s: float = 0.0
    restart_at: float | None = None


class Supervisor:
    def __init__(self, specs: list[ChildSpec], *, grace_s: float,
                 backoff_first_s: float = BACKOFF_FIRST_S,
                 say: Callable[[str], None] | None = None) -> None:
        self.grace_s = grace_s
        self.backoff_first_s = backoff_first_s
        self.say = say or (lambda text: print(f"[crma dev] {text}", file=sys.stderr, flush=True))
        self._children = [_Child(spec, backoff_s=backoff_first_s) for spec in specs]
        self._stopping = threading.Event()
        self._monitor = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def start(self) -> None:
        for child in self._children:
            self._spawn(child)
        self._monitor.start()

    def pids(self) -> dict[str, int | None]:
        return {c.spec.name: c.process.pid if c.process else None for c in self._children}

    def restarts(self, name: str) -> int:
        return next(max(c.generation, 0) for c in self._children if c.spec.name == name)

    def stop(self) -> None:
        """SIGTERM every child, wait up to `grace_s`, SIGKILL the groups still running."""
        self._stopping.set()
        if self._monitor.is_alive():
            self._monitor.join()
        running = [c for c in self._children if c.process is not None]
        for child in running:
            _signal_group(child.process, signal.SIGTERM, only_leader=True)
        deadline = time.monotonic() + self.grace_s
        for child in running:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"{child.spec.name} (pid {child.process.pid}) still running "
                         f"{self.grace_s:.0f} s after SIGTERM: SIGKILL")
            # The whole group: a Celery worker stuck in warm shutdown leaves pool processes.
            _signal_group(child.process, signal.SIGKILL)
            child.process.wait()
            self._exited(child)

    # -- the monitor thread ----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.wait(POLL_S):
            for child in self._children:
                try:
                    self._check(child)
                except Exception as error:  # noqa: BLE001 - the monitor must keep running
                    self.say(f"supervising {child.spec.name} failed: {error!r}")

    def _check(self, child: _Child) -> None:
        now = time.monotonic()
        if child.process is not None:
            code = child.process.poll()
            if code is None:
                return
            uptime = now - child.started_at
            if uptime >= STABLE_AFTER_S:
                child.backoff_s = self.backoff_first_s
            self.say(f"{child.spec.name} (pid {child.process.pid}) {_describe(code)} after "
                     f"{uptime:.0f} s; restarting in {child.backoff_s:g} s")
            self._exited(child)
            child.process = None
            child.restart_at = now + child.backoff_s
            child.backoff_s = min(BACKOFF_MAX_S, child.backoff_s * 2)
        elif child.restart_at is not None and now >= child.restart_at:
            self._spawn(child)
            self.say(f"{child.spec.name} restarted (pid {child.process.pid}, restart "
                     f"{child.generation})")

    def _spawn(self, child: _Child) -> None:
        child.generation += 1
        child.restart_at = None
        child.started_at = time.monotonic()
        child.process = subprocess.Popen(child.spec.command(child.generation),
                                         start_new_session=True)

    def _exited(self, child: _Child) -> None:
        if child.spec.on_exit is not None:
            try:
                child.spec.on_exit(child.generation)
            except Exception as error:  # noqa: BLE001 - bookkeeping only
                self.say(f"after {child.spec.name} exited: {error!r}")


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _signal_group(process: subprocess.Popen[bytes], signum: int, *,
                  only_leader: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if only_leader:
            if process.poll() is None:
                process.send_signal(signum)
        else:
            os.killpg(process.pid, signum)
