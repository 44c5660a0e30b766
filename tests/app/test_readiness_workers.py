"""/readyz fails, saying why, while no live worker consumes a training queue: read from the
`worker_heartbeats` rows workers write (the API imports no Celery), on PostgreSQL and SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from app.db.base import utcnow
from app.db.models import WorkerHeartbeat
from app.db.session import session_scope
from app.services.health import retire_workers
from tests.app.helpers import make_settings

pytestmark = pytest.mark.integration


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database of this test's own: the heartbeat table must start empty."""
    from app.db.migrate import upgrade

    url = (request.getfixturevalue("fresh_pg_url") if request.param == "postgresql"
           else f"sqlite:///{tmp_path / 'ready.sqlite'}")
    upgrade(url)
    yield url


def seen(url: str, worker_id: str, queues: str, ago_s: float) -> None:
    at = utcnow() - timedelta(seconds=ago_s)
    with session_scope(url) as session:
        session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.worker_id == worker_id))
        session.add(WorkerHeartbeat(worker_id=worker_id, queues=queues, device="cpu",
                                    started_at=at, last_seen_at=at))


def readyz(tmp_path: Path, url: str) -> tuple[int, dict[str, str]]:
    from app.main import create_app

    settings = make_settings(tmp_path, url, worker_ping_interval_s=60.0)
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
    body = response.json()
    assert body["status"] == ("ok" if response.status_code == 200 else "unavailable")
    return response.status_code, body["checks"]


def test_no_worker_at_all_is_not_ready(tmp_path: Path, empty_db: str) -> None:
    status, checks = readyz(tmp_path, empty_db)
    assert status == 503
    assert checks["workers"] == ("error: no live worker consumes queue small, large (none seen "
                                 "in the last 180 s); jobs there wait until one does")
    assert checks["database"] == checks["broker"] == checks["storage"] == "ok"


def test_a_worker_seen_within_the_window_on_every_training_queue_is_ready(
        tmp_path: Path, empty_db: str) -> None:
    seen(empty_db, "crma-cpu-1@a", "large,maintenance,small", ago_s=100)
    status, checks = readyz(tmp_path, empty_db)
    assert status == 200 and checks == {"database": "ok", "broker": "ok", "storage": "ok",
                                        "workers": "ok"}


def test_each_training_queue_needs_its_own_consumer(tmp_path: Path, empty_db: str) -> None:
    seen(empty_db, "gpu-small@a", "small", ago_s=1)
    status, checks = readyz(tmp_path, empty_db)
    assert status == 503 and "consumes queue large " in checks["workers"]
    seen(empty_db, "gpu-large@b", "large", ago_s=1)
    assert readyz(tmp_path, empty_db)[0] == 200


def test_a_worker_not_seen_for_three_ping_intervals_is_not_live(tmp_path: Path,
                                                                empty_db: str) -> None:
    seen(empty_db, "crma-cpu-1@a", "large,small", ago_s=200)
    seen(empty_db, "crma-cpu-2@a", "maintenance", ago_s=1)  # consumes no training queue
    status, checks = readyz(tmp_path, empty_db)
    assert status == 503 and checks["workers"].startswith("error: no live worker")


def test_retired_workers_stop_counting_at_once(tmp_path: Path, empty_db: str) -> None:
    seen(empty_db, "crma-dev-7-0@a", "large,small", ago_s=1)
    seen(empty_db, "crma-dev-7-1@a", "large,small", ago_s=1)
    seen(empty_db, "crma-dev_x@a", "large,small", ago_s=1)  # "_" is no wildcard here
    assert retire_workers(empty_db, worker_ids=["crma-dev-7-0@a"]) == 1
    assert readyz(tmp_path, empty_db)[0] == 200
    assert retire_workers(empty_db, prefix="crma-dev-") == 1
    with session_scope(empty_db) as session:
        assert session.scalars(select(WorkerHeartbeat.worker_id)).all() == ["crma-dev_x@a"]
    with pytest.raises(ValueError):
        retire_workers(empty_db)
