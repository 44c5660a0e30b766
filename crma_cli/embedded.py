"""`crma dev`: the whole service on one machine with no external server.

SQLite database, local-directory object store and a SQLite Celery broker, all under
--data-dir. Starts the API (this process), one CPU worker, the outbox relay, the reaper and the
inference engine (child processes, supervised: restarted when they die,
crma_cli/supervisor.py; the API finds the engine through CRMA_ENGINE_URL), installs
SmolLM2-135M into the model store in the background (crma_cli/dev_model.py: jobs created
meanwhile wait for it), creates a dev account on first start and prints its key. Ctrl-C stops
everything; no child outlives this process, however it ends."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
from pathlib import Path

from crma_cli.supervisor import ChildSpec, Supervisor

DEV_ACCOUNT_FILE = "dev-account.json"
DEV_CREDIT_MICROS = 25_000_000  # $25 of play money for the dev account
# Every worker `crma dev` starts is named with this prefix (liveness rows it may retire).
WORKER_NAME_PREFIX = "crma-dev-"
# On top of the worker's own shutdown window: the step in progress and the hand-back.
STOP_MARGIN_S = 30.0
ENGINE_PORT = 8100  # crma_cli/engine.py's default, and Settings.engine_url's


def register(subparsers: argparse._SubParsersAction) -> None:
    dev = subparsers.add_parser(
        "dev", help="run API + worker + relay + reaper with embedded defaults (no servers needed)"
    )
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--data-dir", default=None, help="installation root (default ./.data)")
    dev.add_argument("--no-model-install", action="store_true",
                     help="do not install SmolLM2-135M into the model store")
    dev.add_argument("--engine-port", type=int, default=None,
                     help=f"port of the inference engine (default {ENGINE_PORT}, or a free one "
                          "if that is taken)")
    dev.add_argument("--no-engine", action="store_true",
                     help="do not start the inference engine (completions answer 503)")
    dev.add_argument("--engine-compile", action="store_true",
                     help="let the engine compile its decode step (faster decoding; 1-2 "
                          "minutes of a core at start, beside the worker)")
    dev.set_defaults(func=run_dev)


def run_dev(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir or os.environ.get("CRMA_DATA_DIR") or ".data").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["CRMA_DATA_DIR"] = str(data_dir)
    os.environ.setdefault("CRMA_PUBLIC_BASE_URL", f"http://{args.host}:{args.port}")
    engine_port = None if args.no_engine else (args.engine_port or _engine_port())
    if engine_port is not None:
        os.environ["CRMA_ENGINE_URL"] = f"http://127.0.0.1:{engine_port}"
    # A dev installation's webhooks go to receivers on this machine or its network (http,
    # loopback, private addresses); a production setting never allows them.
    os.environ.setdefault("CRMA_WEBHOOK_ALLOW_PRIVATE_URLS", "true")
    from app.db.migrate import upgrade
    from app.settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    upgrade(settings.resolved_database_url)
    account = ensure_dev_account(settings.resolved_database_url, data_dir)
    supervisor = supervise_children(data_dir, database_url=settings.resolved_database_url,
                                    grace_s=settings.worker_shutdown_grace_s + STOP_MARGIN_S,
                                    engine_port=engine_port, engine_compile=args.engine_compile)
    # uvicorn restores the previous SIGTERM handler and re-raises the signal after its own
    # shutdown: with the default handler this process would die before `finally` stops the
    # children; this one turns it into SystemExit so they are stopped in order.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    install = None
    if not args.no_model_install:
        from crma_cli.dev_model import DefaultModelInstall

        install = DefaultModelInstall(settings, data_dir)
        if not install.begin():  # recorded before the API answers: jobs wait for it
            install = None
    try:
        supervisor.start()
        if install is not None:
            install.start()
        print_banner(args.host, args.port, data_dir, account, engine_port=engine_port)
        import uvicorn

        uvicorn.run("app.main:create_server_app", factory=True, host=args.host, port=args.port,
                    access_log=False)
    finally:
        supervisor.stop()
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def ensure_dev_account(database_url: str, data_dir: Path) -> dict[str, str]:
    """The dev account is created once; its key is kept in the data directory (a dev
    installation only: production keys are never written anywhere in plaintext)."""
    path = data_dir / DEV_ACCOUNT_FILE
    if path.is_file():
        return json.loads(path.read_text())
    from app.db.session import session_scope
    from app.services import accounts, billing
    from app.settings import get_settings

    with session_scope(database_url) as session:
        account, key = accounts.create_account(session, name="dev", plan="pro",
                                               pepper=get_settings().api_key_pepper)
        billing.add_credit(session, account_id=account.id, amount_micros=DEV_CREDIT_MICROS,
                           memo="crma dev starting credit")
        record = {"account_id": account.id, "api_key": key}
    path.write_text(json.dumps(record, indent=2) + "\n")
    path.chmod(0o600)
    return record


def _engine_port() -> int:
    """ENGINE_PORT if free, else one the kernel picks (several `crma dev` on one machine)."""
    for port in (ENGINE_PORT, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise RuntimeError("no free port for the inference engine")


def supervise_children(data_dir: Path, *, database_url: str, grace_s: float,
                       engine_port: int | None = None, engine_compile: bool = False) -> Supervisor:
    """The worker (solo pool: one job per process, and a shutdown that cannot hang in a pool
    join), the relay, the reaper and the inference engine (on `engine_port`; it waits for
    the model install, then serves SmolLM2 with adapters from the local object store), each
    restarted when it dies and ended with this process."""
    from app.services.health import retire_workers

    crma = [sys.executable, "-m", "crma_cli.main"]
    common = ["--data-dir", str(data_dir), "--exit-with-parent", str(os.getpid()),
              "--exit-grace", str(grace_s)]
    host = socket.gethostname()

    def worker_name(generation: int) -> str:
        return f"{WORKER_NAME_PREFIX}{os.getpid()}-{generation}@{host}"

    # Rows of the workers of an earlier `crma dev` here, killed before it could retire them.
    retire_workers(database_url, prefix=WORKER_NAME_PREFIX)
    children = [
        ChildSpec("worker", lambda generation: [
            *crma, "worker", *common, "--queues", "small,large,maintenance", "--pool", "solo",
            "--name", worker_name(generation), "--loglevel", "warning"],
            on_exit=lambda generation: retire_workers(database_url,
                                                      worker_ids=[worker_name(generation)])),
        ChildSpec("relay", lambda _: [*crma, "relay", *common]),
        ChildSpec("reaper", lambda _: [*crma, "reaper", *common]),
    ]
    if engine_port is not None:
        # One torch thread: it shares the machine with the worker (and the engine's one
        # scheduler thread decodes for every request anyway). No compiled decode step unless
        # asked: compiling would take a core for a minute or two at start, beside the worker
        # training a first job, and hold chat completions at 503 meanwhile.
        children.append(ChildSpec("engine", lambda _: [
            *crma, "engine", *common, "--port", str(engine_port), "--wait-for-model",
            "--threads", "1", "--compile" if engine_compile else "--no-compile",
            "--log-level", "warning"]))
    return Supervisor(children, grace_s=grace_s)


def print_banner(host: str, port: int, data_dir: Path, account: dict[str, str], *,
                 engine_port: int | None = None) -> None:
    base = f"http://{host}:{port}"
    engine = (f"http://127.0.0.1:{engine_port} (SmolLM2 and its fine-tuned models, once "
              "installed; the API calls it)" if engine_port else "not started (--no-engine)")
    print(
        "\n".join([
            "",
            f"CRMA fine-tuner (dev) on {base}",
            f"  Swagger UI : {base}/docs",
            f"  Dashboard  : {base}/dashboard/",
            f"  data dir   : {data_dir}",
            f"  account    : {account['account_id']}",
            f"  API key    : {account['api_key']}",
            f"  export CRMA_API_KEY={account['api_key']}",
            f"  engine     : {engine}",
            f"  chat       : POST {base}/v1/chat/completions (model: a job's fine_tuned_model)",
            "The worker, relay, reaper and engine are restarted if they die; Ctrl-C stops "
            "them all.",
            "",
        ]),
        flush=True,
    )
