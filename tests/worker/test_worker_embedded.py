"""The embedded setup `crma dev` runs: SQLite database, Celery over the SQLite broker
(kombu's sqlalchemy transport, the default `resolved_broker_url`), local object store, and
`crma worker` / `crma relay` / `crma reaper` as real processes. Same code paths as
production, only the URLs differ."""

from __future__ import annotations

import pytest

from sqlalchemy import select

from app.db.migrate import upgrade
from app.db.models import WorkerHeartbeat
from tests.worker.stack import Stack, stack_settings, wait_for

pytestmark = pytest.mark.integration


def test_a_job_succeeds_on_the_sqlite_database_and_broker(tmp_path, tiny_model_store) -> None:
    database = f"sqlite:///{tmp_path / 'crma.sqlite'}"
    upgrade(database)
    settings, env = stack_settings(pg_url=database, redis_url="", prefix="", tmp=tmp_path,
                                   model_store=tiny_model_store, worker_step_delay_s=0.0)
    env.pop("CRMA_BROKER_URL")  # the embedded default: sqla+sqlite under data_dir
    settings = settings.model_copy(update={"broker_url": None})
    assert settings.resolved_broker_url.startswith("sqla+sqlite:///")
    stack = Stack(settings=settings, env=env, tmp=tmp_path)
    try:
        stack.start_loop_processes()
        stack.start_worker()
        _, job_id = stack.submit(examples=8)
        job = stack.wait_status(job_id, ("succeeded", "failed", "cancelled"), 180)
        assert job.status == "succeeded", job.error
        assert job.attempt == 1 and sorted(stack.step_losses(job_id)) == [1, 2, 3, 4]
        keys = [e.dedupe_key for e in stack.events(job_id)]
        assert keys[1] == "status:running:1" and keys[-1] == "status:succeeded:1"
        # The liveness ping reaches the idle worker through its own queue on this broker too.
        with stack.session() as s:
            seen_before = s.scalar(select(WorkerHeartbeat.last_seen_at))
        wait_for(lambda: _last_seen(stack) > seen_before, 30, what="a ping to be answered")
    finally:
        stack.close()


def _last_seen(stack):
    with stack.session() as s:
        return s.scalar(select(WorkerHeartbeat.last_seen_at))
