"""Time limits on the solo pool (what `crma dev` runs: one job per worker process, a shutdown
that cannot hang in a pool join). Celery enforces no limit there and SIGUSR1 in the worker's
main process dumps stacks instead of raising SoftTimeLimitExceeded, so: the soft limit is the
runner's own (it checkpoints and hands the job back before it), and the hard limit is
crma_cli/hard_limit.py's timer, which kills the worker process as billiard kills a pool child.
Real `crma worker --pool solo` processes on PostgreSQL and Redis."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from sqlalchemy import select

from app.db.models import Checkpoint
from tests.worker.stack import TERMINAL

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def solo_stack(pg_url: str, redis_url: str, tiny_model_store: Path, tmp_path_factory):
    """A stack of its own (database, Redis prefix): no prefork worker may take its jobs."""
    from app.db.migrate import upgrade
    from app.db.session import get_engine
    from tests.conftest import create_database, drop_database
    from tests.worker.conftest import _Stacks

    url = create_database()
    upgrade(url)
    stacks = _Stacks(url, redis_url, tiny_model_store, tmp_path_factory.mktemp("solo"))
    yield stacks.make()
    stacks.close()
    get_engine(url).dispose()
    drop_database(url)


def _send(stack, job_id: str, **limits: float) -> None:  # noqa: ANN001
    from worker.celery_app import create_app
    from worker.routing import RUN_JOB

    create_app(stack.settings).send_task(RUN_JOB, kwargs={"job_id": job_id}, queue="small",
                                         **limits)


def test_the_soft_limit_hands_back_after_a_checkpoint_on_the_solo_pool(solo_stack) -> None:
    stack = solo_stack
    worker = stack.start_worker(pool="solo")
    _, job_id = stack.submit(examples=120, n_epochs=2, offer=False)
    _send(stack, job_id, soft_time_limit=8, time_limit=600)
    job = stack.wait_status(job_id, TERMINAL, 180)
    assert job.status == "succeeded" and job.attempt == 2, job.error
    queued = [e for e in stack.events(job_id) if e.dedupe_key == "status:queued:1"]
    assert queued and "(time_limit)" in queued[0].message
    with stack.session() as s:
        steps = s.scalars(select(Checkpoint.step).where(Checkpoint.job_id == job_id,
                                                        Checkpoint.attempt == 1)).all()
    resumed = [e for e in stack.events(job_id) if e.dedupe_key == "resumed:2"]
    if steps:  # unless the machine was too busy to train a step before the deadline
        assert resumed and resumed[0].data["step"] == max(steps)
    else:
        assert not resumed
    assert sorted(stack.step_losses(job_id)) == list(range(1, 121))
    assert worker.process.poll() is None  # the same solo worker ran both attempts


def test_the_hard_limit_kills_a_solo_worker_and_the_job_is_recovered(solo_stack) -> None:
    stack = solo_stack
    for running in stack.live_workers():
        running.stop()
    worker = stack.start_worker(pool="solo")
    # 60 steps of at least 0.15 s each: the job cannot end inside its 4 s hard limit, and
    # its soft limit is far away, so only the hard one can stop it.
    _, job_id = stack.submit(examples=120, n_epochs=1, offer=False)
    _send(stack, job_id, soft_time_limit=3600, time_limit=4)
    assert worker.process.wait(timeout=180) == -signal.SIGKILL
    assert "passed its hard time limit (4 s)" in worker.log()
    stack.start_worker(pool="solo")  # what the supervisor or compose's restart policy does
    job = stack.wait_status(job_id, TERMINAL, 180)
    assert job.status == "succeeded" and job.attempt == 2, job.error
