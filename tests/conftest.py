"""Shared fixtures for real services: a fresh PostgreSQL database per test session, a Redis
key namespace, and an S3 server (moto's server mode) on loopback.

With CRMA_REQUIRE_SERVICES=1 (CI) a missing PostgreSQL or Redis is an error, not a skip."""

from __future__ import annotations

import os

# Before torch loads libgomp: spinning OpenMP threads on a shared 2-core machine made training
# steps ~10x slower under load (measured: 28 s vs 1 s per SmolLM2 step). Subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Engines that tests start (`crma engine`, `crma dev`) decode eagerly: compiling the decode
# step costs each one a minute of the suite's 2 cores. tests/serving/test_compiled_decode.py
# covers the compiled step; the in-process fixtures pass compile themselves.
os.environ.setdefault("CRMA_ENGINE_COMPILE", "0")
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get("CRMA_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("CRMA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _require_services() -> bool:
    return os.environ.get("CRMA_REQUIRE_SERVICES", "0") == "1"


def _unavailable(what: str, error: Exception) -> None:
    message = f"{what} unreachable: {error}"
    if _require_services():
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(url: str, process: subprocess.Popen, timeout: float,
                       describe: Callable[[], str] = lambda: "") -> None:
    """Poll `url`/healthz until it answers 200; fail (with `describe()`) if the server
    process exits or the timeout passes first."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"server at {url} did not become healthy\n{describe()}")
        time.sleep(0.1)


@contextmanager
def running_engine(engine_args: list[str], *, log: Path, env: dict[str, str]) -> Iterator[str]:
    """A real `crma engine` process on a free port with `engine_args`, its output in `log`;
    yields its URL once healthy and stops it afterwards."""
    port = free_port()
    command = [sys.executable, "-m", "crma_cli.main", "engine", *engine_args, "--port", str(port)]
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process, 120, lambda: log.read_text()[-3000:])
        yield url
    finally:
        stop_process(process, 20)


def stop_process(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM, then SIGKILL if ``process`` is still running ``grace_s`` later."""
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def create_database() -> str:
    """Create an empty PostgreSQL database and return its URL."""
    from app.db.scratch import create_scratch_database

    return create_scratch_database(PG_ADMIN_URL, prefix="crma_test_")


def drop_database(url: str) -> None:
    from app.db.scratch import drop_scratch_database

    drop_scratch_database(PG_ADMIN_URL, url)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A migrated, empty PostgreSQL database for this test session."""
    try:
        url = create_database()
    except Exception as error:  # noqa: BLE001 - any connection failure means "no server"
        _unavailable("PostgreSQL", error)
    from app.db.migrate import upgrade

    upgrade(url)
    yield url
    drop_database(url)


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """An empty, unmigrated PostgreSQL database for one test (migration tests)."""
    try:
        url = create_database()
    except Exception as error:  # noqa: BLE001
        _unavailable("PostgreSQL", error)
    yield url
    drop_database(url)


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as error:  # noqa: BLE001
        _unavailable("Redis", error)
    return REDIS_URL


@pytest.fixture
def redis_namespace(redis_url: str) -> Iterator[str]:
    """A unique key prefix; everything under it is deleted afterwards."""
    import redis

    prefix = f"crma-test-{secrets.token_hex(4)}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-speaking HTTP server on loopback (moto's server mode)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    import boto3

    name = "crma-test-" + secrets.token_hex(4)
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def tiny_model_store(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a Path
    """A model store holding a tiny random-weight Llama imported under a catalog id (as
    `crma models import` does): the SmolLM2 id, so `crma dev` and the workers find it."""
    from crma_core.model_store import ModelStore
    from crma_core.testing import make_tiny_model_dir

    source = make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model") / "hf", "llama", seed=0)
    root = tmp_path_factory.mktemp("model-store")
    ModelStore(root).import_dir("smollm2-135m-instruct", source)
    return root
