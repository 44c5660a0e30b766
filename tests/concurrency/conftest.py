"""Concurrency fixtures: a PostgreSQL engine with room for many threads, and row helpers.

Each thread opens its own session (own connection, own transaction), exactly like
concurrent API requests or worker processes do."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from app.db.session import normalize_url


@pytest.fixture(scope="session")
def threads_factory(pg_url: str) -> Iterator[sessionmaker[Session]]:
    # The same lock_timeout as production engines (app/db/session.py), but a pool large
    # enough that 50 threads never queue for a connection: we test the database, not the pool.
    engine = create_engine(
        normalize_url(pg_url), pool_size=64, max_overflow=0,
        connect_args={"options": "-c lock_timeout=2000 -c statement_timeout=10000"},
    )
    yield sessionmaker(bind=engine, expire_on_commit=False)
    engine.dispose()


@pytest.fixture(scope="module")
def live_api(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real API server (uvicorn, its own process) on a free port, on the test database."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    from race_helpers import free_port

    from tests.conftest import stop_process

    root = Path(__file__).resolve().parents[2]
    data = tmp_path_factory.mktemp("live_api")
    port = free_port()
    env = {
        **os.environ,
        "CRMA_DATABASE_URL": pg_url,
        "CRMA_DATA_DIR": str(data),
        "CRMA_STORAGE_URL": (data / "objects").as_uri(),
        "CRMA_API_KEY_PEPPER": "",
    }
    log = (data / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                raise RuntimeError((data / "server.log").read_text()[-4000:])
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("API server did not start: " + (data / "server.log").read_text())
            time.sleep(0.2)
        yield base
    finally:
        stop_process(server, 15)
        log.close()
