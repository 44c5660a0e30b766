"""`crma dev` and its child processes (worker, relay, reaper): however the dev process is
stopped, no child outlives it. Real processes throughout."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crma_cli.embedded import stop_children
from tests.conftest import free_port, wait_until_healthy

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited for every purpose here.
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [pid for pid in pids if _alive(pid)]
        if not left:
            return []
        time.sleep(0.2)
    return [pid for pid in pids if _alive(pid)]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline and _alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def test_a_child_that_ignores_sigterm_is_killed_with_its_whole_group() -> None:
    # Like a Celery worker stuck in warm shutdown: it ignores SIGTERM and has a pool child.
    script = ("import signal, subprocess, sys, time\n"
              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              "pool = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
              "print(pool.pid, flush=True)\n"
              "time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                             stdout=subprocess.PIPE, text=True)
    try:
        pool_pid = int(child.stdout.readline())
        started = time.monotonic()
        stop_children([child], timeout_s=1)
        assert child.returncode == -signal.SIGKILL
        assert time.monotonic() - started < 10
        assert _wait_gone([pool_pid], 10) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux")
def test_children_get_sigterm_when_the_dev_process_dies_abruptly(tmp_path: Path) -> None:
    script = ("import subprocess, sys, signal, os\n"
              "from crma_cli.embedded import _parent_death_signal\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],\n"
              "                         start_new_session=True,\n"
              "                         preexec_fn=_parent_death_signal(signal.SIGTERM))\n"
              "print(child.pid, flush=True)\n"
              "sys.stdin.readline()\n"
              "os._exit(0)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    assert _alive(child_pid)
    parent.stdin.write("\n")
    parent.stdin.flush()
    parent.wait(10)
    assert _wait_gone([child_pid], 10) == []


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
        children = [pid for pid in _processes_mentioning(str(data_dir)) if pid != dev.pid]
        assert len(children) >= 3, children  # worker, relay, reaper (+ the worker's pool)
        dev.send_signal(signal.SIGTERM)
        # 143 = SystemExit from dev's own handler, after `finally` stopped the children in
        # order (uvicorn's re-raised SIGTERM would otherwise kill it at once: -15).
        assert dev.wait(60) == 128 + signal.SIGTERM
        assert _wait_gone(children, 10) == []
        assert _processes_mentioning(str(data_dir)) == []
    finally:
        if dev.poll() is None:
            dev.kill()
        for pid in _processes_mentioning(str(data_dir)):
            os.kill(pid, signal.SIGKILL)
        log.close()
