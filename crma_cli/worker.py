"""`crma worker`, `crma reaper`, `crma relay`: the worker-side processes.

`crma worker --gpu N` runs one Celery worker for GPU N (CUDA_VISIBLE_DEVICES=N, device
cuda:0 inside the process); without `--gpu` it trains on the CPU. One worker process per GPU,
one job at a time, a fresh child process per job on a GPU (see worker/celery_app.py)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
from pathlib import Path

TRAINING_AND_MAINTENANCE = ("small", "large", "maintenance")


def register(subparsers: argparse._SubParsersAction) -> None:
    worker = subparsers.add_parser("worker", help="run a Celery training worker")
    worker.add_argument("--queues", default=None,
                        help="comma-separated queues: small, large, maintenance "
                             "(default: CRMA_WORKER_QUEUES, i.e. small,large)")
    worker.add_argument("--gpu", type=int, default=None, metavar="N",
                        help="train on GPU N (sets CUDA_VISIBLE_DEVICES=N); default: CPU")
    worker.add_argument("--data-dir", default=None, help="embedded installation root")
    worker.add_argument("--concurrency", type=int, default=1,
                        help="processes; keep 1 (one job per GPU)")
    worker.add_argument("--pool", default="prefork", choices=("prefork", "solo", "threads"),
                        help="prefork (default: a fresh child per job) or solo (the job runs "
                             "in the worker process; what `crma dev` uses)")
    worker.add_argument("--name", default=None, help="Celery node name (default: unique)")
    worker.add_argument("--loglevel", default="info")
    _add_supervision_arguments(worker)
    worker.set_defaults(func=run_worker)

    reaper = subparsers.add_parser("reaper", help="requeue or fail jobs whose worker died")
    reaper.add_argument("--data-dir", default=None)
    reaper.add_argument("--once", action="store_true", help="one pass, then exit")
    _add_supervision_arguments(reaper)
    reaper.set_defaults(func=run_reaper)

    relay = subparsers.add_parser("relay", help="publish the outbox to the broker")
    relay.add_argument("--data-dir", default=None)
    relay.add_argument("--once", action="store_true", help="one pass, then exit")
    _add_supervision_arguments(relay)
    relay.set_defaults(func=run_relay)


def _add_supervision_arguments(parser: argparse.ArgumentParser) -> None:
    # Set by `crma dev` (crma_cli/supervisor.py) for the processes it supervises.
    parser.add_argument("--exit-with-parent", type=int, default=None, metavar="PID",
                        help="end (SIGTERM, then SIGKILL after --exit-grace) when PID dies")
    parser.add_argument("--exit-grace", type=float, default=90.0, metavar="S",
                        help="seconds between the parent's death and SIGKILL (default 90)")


def _prepare_environment(args: argparse.Namespace) -> None:
    if getattr(args, "exit_with_parent", None) is not None:
        from crma_cli.parent_watch import follow_parent

        follow_parent(args.exit_with_parent, grace_s=args.exit_grace)
    # crma_cli may set environment defaults before Settings is built (docs/dev/contracts.md).
    if args.data_dir:
        os.environ["CRMA_DATA_DIR"] = os.path.abspath(args.data_dir)
    if getattr(args, "gpu", None) is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
        os.environ["CRMA_WORKER_DEVICE"] = "cuda:0"
    from app.settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    broker = settings.resolved_broker_url
    if broker.startswith("sqla+sqlite:///"):
        # SQLite creates the file, not its directory (the embedded default lives in data_dir).
        Path(broker.removeprefix("sqla+sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_worker(args: argparse.Namespace) -> int:
    _prepare_environment(args)
    from app.settings import get_settings

    settings = get_settings()
    queues = args.queues or settings.worker_queues
    unknown = sorted(set(queues.split(",")) - set(TRAINING_AND_MAINTENANCE))
    if unknown:
        raise SystemExit(f"unknown queue(s): {', '.join(unknown)}; "
                         f"use {', '.join(TRAINING_AND_MAINTENANCE)}")
    if args.gpu is not None and args.concurrency != 1:
        raise SystemExit("one process per GPU: --gpu needs --concurrency 1")
    device = "gpu" if args.gpu is not None else "cpu"
    name = args.name or f"crma-{device}{args.gpu if args.gpu is not None else ''}-{os.getpid()}@{socket.gethostname()}"
    if not settings.worker_device.startswith("cuda"):
        # CPU only: children inherit the imported library, so a fresh child per job costs a
        # fork, not seconds of imports. Never on a GPU worker: CUDA is not fork-safe.
        import crma_core.recipe  # noqa: F401  (torch, transformers)
        import matplotlib  # noqa: F401  (the bundle's plots)
        import peft  # noqa: F401

    from worker.celery_app import app

    if args.pool == "solo":
        from crma_cli.hard_limit import enforce_hard_time_limits

        enforce_hard_time_limits(app)
    argv = ["worker", "--queues", queues, "--concurrency", str(args.concurrency),
            "--pool", args.pool, "--hostname", name, "--loglevel", args.loglevel,
            "--without-gossip", "--without-mingle"]
    app.worker_main(argv)
    return 0


def _loop(args: argparse.Namespace, which: str) -> int:
    _prepare_environment(args)
    from app.settings import get_settings
    from worker.celery_app import app

    settings = get_settings()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if which == "reaper":
        from worker.reaper import reap_once, run_reaper_loop

        if args.once:
            print(reap_once(settings=settings, celery=app).as_dict())
            return 0
        run_reaper_loop(settings=settings, celery=app, stop=stop)
    else:
        from worker.relay import relay_once, run_relay_loop

        if args.once:
            print(relay_once(settings=settings, celery=app))
            return 0
        run_relay_loop(settings=settings, celery=app, stop=stop)
    return 0


def run_reaper(args: argparse.Namespace) -> int:
    return _loop(args, "reaper")


def run_relay(args: argparse.Namespace) -> int:
    return _loop(args, "relay")
