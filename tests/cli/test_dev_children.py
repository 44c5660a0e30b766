"""`crma dev`'s supervision of its child processes (crma_cli/supervisor.py,
crma_cli/parent_watch.py): a child that dies is restarted with backoff and a log line; however
the dev process stops or dies, no child outlives it. Real processes throughout."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from crma_cli.supervisor import ChildSpec, Supervisor
from tests.conftest import free_port, wait_until_healthy

ROOT = Path(__file__).resolve().parents[2]
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
# Ignores SIGTERM (like a Celery worker stuck in warm shutdown) and has a child of its own.
STUBBORN = [sys.executable, "-c",
            "import signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "pool = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            "time.sleep(600)\n"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited for every purpose here.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [pid for pid in pids if alive(pid)]
        if not left:
            return []
        time.sleep(0.2)
    return [pid for pid in pids if alive(pid)]


def wait_for(condition, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().split(")")[-1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == parent:
                found.append(int(entry.name))
                frontier.append(int(entry.name))
    return found


class Said:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, text: str) -> None:
        with self.lock:
            self.lines.append(text)

    def matching(self, fragment: str) -> list[str]:
        with self.lock:
            return [line for line in self.lines if fragment in line]


def test_a_child_that_dies_is_restarted_with_a_log_line() -> None:
    said, exited = Said(), []
    specs = [ChildSpec("sleeper", lambda _: SLEEPER, on_exit=exited.append)]
    supervisor = Supervisor(specs, grace_s=5, say=said)
    supervisor.start()
    try:
        first = supervisor.pids()["sleeper"]
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: supervisor.pids()["sleeper"] not in (None, first), 30, "a restart")
        assert alive(supervisor.pids()["sleeper"])
        assert said.matching(f"sleeper (pid {first}) was killed by SIGKILL")
        assert said.matching("sleeper restarted")
        assert exited == [0]  # the first start's bookkeeping ran once
        assert supervisor.restarts("sleeper") == 1
    finally:
        supervisor.stop()
    assert exited == [0, 1]
    assert not alive(first)


def test_a_crash_loop_backs_off_doubling() -> None:
    said = Said()
    crasher = [sys.executable, "-c", "raise SystemExit(3)"]
    supervisor = Supervisor([ChildSpec("crasher", lambda _: crasher)], grace_s=5,
                            backoff_first_s=0.1, say=said)
    supervisor.start()
    try:
        wait_for(lambda: len(said.matching("exited with code 3")) >= 4, 60, "four exits")
    finally:
        supervisor.stop()
    delays = [float(line.rsplit("restarting in ", 1)[1].split()[0])
              for line in said.matching("exited with code 3")]
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]


def test_stop_ends_children_and_escalates_to_sigkill_for_the_whole_group() -> None:
    said = Said()
    supervisor = Supervisor([ChildSpec("polite", lambda _: SLEEPER),
                             ChildSpec("stubborn", lambda _: STUBBORN)], grace_s=2, say=said)
    supervisor.start()
    stubborn = supervisor.pids()["stubborn"]
    wait_for(lambda: descendants(stubborn), 30, "the stubborn child's own child")
    pool = descendants(stubborn)
    supervisor.stop()
    assert wait_gone([*supervisor.pids().values(), *pool], 10) == []
    assert said.matching("stubborn") and said.matching("SIGKILL")
    assert not said.matching("polite")  # it ended on SIGTERM
    assert not said.matching("restart")  # stopping is not dying


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux")
def test_children_end_when_the_supervising_process_is_killed(tmp_path: Path) -> None:
    """SIGKILL of the parent: a child that honours SIGTERM ends (parent-death signal); one
    that ignores it is SIGKILLed with its group once the grace period is over."""
    # Every line goes out in one write: three processes share the pipe, and print() may
    # write a line in pieces that another process's line lands between.
    follow = ("import os, sys, time\n"
              "from crma_cli.parent_watch import follow_parent\n"
              "follow_parent(int(sys.argv[1]), grace_s=float(sys.argv[2]))\n"
              "os.write(1, f'following {os.getpid()}\\n'.encode())\n")
    script = (
        "import os, sys, time\n"
        "from crma_cli.supervisor import ChildSpec, Supervisor\n"
        f"follow = {follow!r}\n"
        f"stubborn = {STUBBORN[2]!r}\n"
        "me = str(os.getpid())\n"
        "sup = Supervisor([\n"
        "    ChildSpec('polite', lambda _: [sys.executable, '-c', follow + 'time.sleep(600)',"
        " me, '3']),\n"
        "    ChildSpec('stubborn', lambda _: [sys.executable, '-c',"
        " 'import time\\n' + follow + stubborn, me, '3']),\n"
        "], grace_s=3)\n"
        "sup.start()\n"
        "os.write(1, ('pids ' + ' '.join(map(str, sup.pids().values())) + '\\n').encode())\n"
        "time.sleep(600)\n")
    stderr = tmp_path / "stderr.log"
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=stderr.open("wb"), text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    polite = stubborn = None
    try:
        following = set()
        while polite is None or len(following) < 2:  # both past their startup checks
            words = parent.stdout.readline().split()
            assert words, stderr.read_text()
            if words[0] == "pids":
                polite, stubborn = int(words[1]), int(words[2])
            else:
                following.add(int(words[1]))
        assert following == {polite, stubborn}
        wait_for(lambda: descendants(stubborn), 30, "the stubborn child's own child")
        pool = descendants(stubborn)
        parent.kill()
        parent.wait()
        assert wait_gone([polite, stubborn, *pool], 60) == []
        # It ignored SIGTERM: only its watcher's SIGKILL, after the grace period, ended it.
        assert f"[{stubborn}] still running 3 s after the parent died: SIGKILL" in \
            stderr.read_text()
    finally:
        for pid in (polite, stubborn):
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


def dev_processes(data_dir: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(data_dir) in cmdline and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


@pytest.mark.integration
def test_sigterm_to_crma_dev_stops_every_child(tmp_path: Path) -> None:
    data_dir = tmp_path / "dev-data"
    port = free_port()
    env = {**os.environ, "CRMA_DATA_DIR": str(data_dir)}
    env.pop("CRMA_DATABASE_URL", None)
    log = open(tmp_path / "dev.log", "wb")
    dev = subprocess.Popen(
        [sys.executable, "-m", "crma_cli.main", "dev", "--data-dir", str(data_dir),
         "--port", str(port), "--no-model-install"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", dev, 120,
                           describe=lambda: (tmp_path / "dev.log").read_text()[-3000:])
        children = [pid for pid in dev_processes(data_dir) if pid != dev.pid]
        assert len(children) >= 4, children  # worker, relay, reaper, engine
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in children]
        # The engine waits for the model (not installed here) before it loads anything.
        engine = next(c for c in commands if b"engine" in c and b"--wait-for-model" in c)
        assert b"--no-compile" in engine  # crma dev's engine starts at once (no --engine-compile)
        dev.send_signal(signal.SIGTERM)
        # 143 = SystemExit from dev's own handler, after `finally` stopped the children in
        # order (uvicorn's re-raised SIGTERM would otherwise kill it at once: -15).
        assert dev.wait(120) == 128 + signal.SIGTERM
        assert wait_gone(children, 10) == []
        assert dev_processes(data_dir) == []
        assert "restarting in" not in (tmp_path / "dev.log").read_text()  # stopped, not died
    finally:
        if dev.poll() is None:
            dev.kill()
        for pid in dev_processes(data_dir):
            os.kill(pid, signal.SIGKILL)
        log.close()
