"""Chaos fixtures: a PRIVATE PostgreSQL and Redis (tests/chaos/services.py) that the tests
stop, kill, flush and restart, and on them the real worker stack of tests/worker/stack.py
(`crma worker` processes, the relay and reaper loops, a tiny random-weight model) with short
reliability constants: lease 3 s, heartbeat 1 s, reaper 1 s (a test that needs a lease longer
than its outage asks for one).

The shared 127.0.0.1:5432/6379 servers are never touched."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.chaos.services import PrivatePostgres, PrivateRedis
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Services:
    pg: PrivatePostgres
    redis: PrivateRedis
    database_url: str


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    import psycopg

    from app.db.migrate import upgrade

    pg, redis = PrivatePostgres(), PrivateRedis(appendonly=True)
    try:
        pg.start()
        redis.start()
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE crma")
        database_url = pg.url.rsplit("/", 1)[0] + "/crma"
        upgrade(database_url)
        yield Services(pg=pg, redis=redis, database_url=database_url)
    finally:
        redis.destroy()
        pg.destroy()


@pytest.fixture(scope="session")
def chaos_model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store with a tiny random-weight Llama imported under a catalog id."""
    from crma_core.model_store import ModelStore
    from crma_core.testing import make_tiny_model_dir
    from tests.worker.stack import MODEL_ID

    source = make_tiny_model_dir(tmp_path_factory.mktemp("chaos-model") / "hf", "llama", seed=0)
    root = tmp_path_factory.mktemp("chaos-models")
    ModelStore(root).import_dir(MODEL_ID, source)
    return root


@pytest.fixture
def make_chaos_stack(services: Services, chaos_model_store: Path, tmp_path: Path):
    """`make_chaos_stack(**setting_overrides)`: a worker stack on the private services with
    its own broker key prefix; relay and reaper running; workers started on demand."""
    from tests.worker.stack import Stack, stack_settings

    made: list[Stack] = []

    def make(**overrides) -> Stack:
        directory = tmp_path / f"stack-{len(made)}"
        directory.mkdir()
        settings, env = stack_settings(
            pg_url=services.database_url, redis_url=services.redis.url,
            prefix=f"chaos-{secrets.token_hex(4)}:", tmp=directory,
            model_store=chaos_model_store, **overrides)
        stack = Stack(settings=settings, env=env, tmp=directory)
        made.append(stack)
        stack.start_relay_and_reaper()
        return stack

    yield make
    for stack in made:
        stack.close()


class OwnerlessClock:
    """How long a job stayed `running` while its lease owner was dead: sampled every 100 ms
    from the moment `owner_died()` is called until the job leaves that attempt."""

    def __init__(self, stack, job_id: str) -> None:  # noqa: ANN001
        self.stack, self.job_id = stack, job_id
        self.died_at: float | None = None
        self.dead_attempt: int | None = None
        self.orphaned_s: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def owner_died(self, attempt: int) -> None:
        self.died_at, self.dead_attempt = time.monotonic(), attempt
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                job = self.stack.job(self.job_id)
            except Exception:  # noqa: BLE001 - the database may be the thing under test
                continue
            if job.status != "running" or job.attempt != self.dead_attempt:
                self.orphaned_s = time.monotonic() - self.died_at
                return

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


@dataclass
class ApiServer:
    url: str
    process: subprocess.Popen
    log_path: Path
    headers: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_api(env: dict[str, str], tmp: Path, *, workers: int = 1) -> ApiServer:
    port = free_port()
    log_path = tmp / f"api-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host",
         "127.0.0.1", "--port", str(port), "--workers", str(workers), "--log-level", "warning"],
        cwd=ROOT, env={**env, "CRMA_RATE_LIMIT_PER_MINUTE": "1000000"},
        stdout=subprocess.DEVNULL, stderr=log_path.open("wb"), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return ApiServer(url=url, process=process, log_path=log_path)
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("API did not start:\n" + log_path.read_text(errors="replace"))
        time.sleep(0.1)


def stop_api(server: ApiServer) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, 15)
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, 9)
