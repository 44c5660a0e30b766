"""The reliability configuration of the Celery app (docs/reliability.md), checked value by
value so a change to any of them is a deliberate one."""

from __future__ import annotations

from app.settings import Settings
from app.services.outbox import RUN_JOB_TASK
from worker.celery_app import INCLUDE, create_app, time_limits
from worker.routing import MAINTENANCE_QUEUE, PING, REAP, RELAY_OUTBOX, RUN_JOB


def _conf(**values):
    return create_app(Settings(**values)).conf


def test_json_only_no_results_and_one_job_at_a_time() -> None:
    conf = _conf(broker_url="redis://127.0.0.1:6379/0", broker_key_prefix="ns:")
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.result_backend is None and conf.task_ignore_result is True
    assert conf.worker_concurrency == 1 and conf.worker_prefetch_multiplier == 1
    assert conf.broker_connection_retry_on_startup is True
    assert conf.worker_soft_shutdown_timeout == Settings().worker_shutdown_grace_s


def test_training_is_acked_early_and_never_prefetched_on_redis() -> None:
    conf = _conf(broker_url="redis://127.0.0.1:6379/0", broker_key_prefix="ns:")
    assert conf.task_acks_late is False and conf.task_reject_on_worker_lost is False
    assert conf.worker_disable_prefetch is True
    options = conf.broker_transport_options
    assert options["global_keyprefix"] == "ns:"
    assert options["visibility_timeout"] >= 3600
    assert conf.result_backend_transport_options == options


def test_maintenance_tasks_are_acked_late_with_bounded_retries() -> None:
    import worker.tasks as tasks

    for task in (tasks.relay_outbox, tasks.reap, tasks.worker_ping):
        assert task.acks_late is True and task.reject_on_worker_lost is True
        assert task.max_retries == 5 and task.retry_backoff
    assert tasks.run_job.acks_late is False
    routes = _conf().task_routes
    assert routes[RELAY_OUTBOX]["queue"] == routes[REAP]["queue"] == MAINTENANCE_QUEUE
    beat = {entry["task"] for entry in _conf().beat_schedule.values()}
    assert beat == {RELAY_OUTBOX, REAP}
    assert {RUN_JOB, RELAY_OUTBOX, REAP, PING} <= set(tasks.app.tasks)
    assert RUN_JOB == RUN_JOB_TASK  # the name the API writes into the outbox


def test_a_starting_worker_imports_the_tasks_and_signal_hooks() -> None:
    app = create_app(Settings())
    assert tuple(app.conf.include) == INCLUDE == ("worker.tasks", "worker.signals")
    app.loader.import_default_modules()  # what `celery worker` does at start-up
    import sys

    assert {"worker.tasks", "worker.signals"} <= set(sys.modules)


def test_a_fresh_child_per_job_on_gpu_workers_only() -> None:
    assert _conf(worker_device="cuda:0").worker_max_tasks_per_child == 1
    assert _conf(worker_device="cpu").worker_max_tasks_per_child is None


def test_time_limits_per_queue_leave_a_margin_to_checkpoint() -> None:
    settings = Settings(worker_time_limit_s={"small": 3600.0, "large": 7200.0},
                        worker_soft_time_margin_s=300.0)
    assert time_limits(settings, "small") == {"time_limit": 3600.0, "soft_time_limit": 3300.0}
    assert time_limits(settings, "large") == {"time_limit": 7200.0, "soft_time_limit": 6900.0}
    conf = create_app(settings).conf
    assert conf.task_time_limit == 7200.0 and conf.task_soft_time_limit == 6900.0


def test_the_embedded_default_broker_is_sqlite(tmp_path) -> None:
    conf = _conf(data_dir=tmp_path)
    assert conf.broker_url == f"sqla+sqlite:///{tmp_path.resolve() / 'broker.sqlite'}"
    assert conf.worker_disable_prefetch is False  # Redis-only in Celery
    assert conf.broker_transport_options == {}
