"""Private PostgreSQL and Redis servers for chaos tests: started on free ports in temp
directories so a test can stop, kill and restart them without touching the shared servers
other tests (and other developers) use."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

_PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def _as_postgres_user(command: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


class PrivatePostgres:
    def __init__(self) -> None:
        if not _PG_BIN:
            pytest.skip("PostgreSQL server binaries not installed")
        self.bin = Path(_PG_BIN[-1])
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="crma-chaos-pg-"))
        self.data = self.dir / "data"
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run(
            _as_postgres_user([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust",
                               "-U", "postgres", "--no-sync"]),
            check=True, capture_output=True,
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        subprocess.run(
            _as_postgres_user([
                str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"),
                "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
                "-w", "start",
            ]),
            check=True, capture_output=True,
        )

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            _as_postgres_user([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"]),
            check=False, capture_output=True,
        )

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis:
    def __init__(self, *, appendonly: bool = True) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server not installed")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="crma-chaos-redis-"))
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", "--appendonly", "yes" if self.appendonly else "no",
             "--appendfsync", "everysec", "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        import redis

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.5).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def flushall(self) -> None:
        import redis

        redis.Redis(port=self.port).flushall()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
