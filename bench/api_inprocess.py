"""CPU per request of the API's hot routes, in process: the ASGI app called directly (no HTTP
server, no load generator), on a scratch PostgreSQL database, so the figures measure our code
and its libraries alone and vary little with what else the machine runs.

    .venv/bin/python bench/api_inprocess.py [--requests 2000]

Writes docs/benchmarks/api_inprocess.json: for each route, the best of 3 rounds of CPU ms
per request (this process, all threads) and the wall-clock ms.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.api_load import MODEL, PG_ADMIN_URL, report, seed_accounts  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000,
                        help="requests per round for reads (creates: a fifth)")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "docs" / "benchmarks" / "api_inprocess.json")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser.parse_args(argv)


class AsgiCaller:
    """One request through the app's ASGI callable, the way uvicorn would hand it over."""

    def __init__(self, app, key: str) -> None:  # noqa: ANN001 - a FastAPI app
        self.app, self.key = app, key

    async def __call__(self, method: str, path: str, body: bytes = b"",
                       headers: tuple[tuple[bytes, bytes], ...] = ()) -> tuple[int, bytes]:
        route, _, query = path.partition("?")
        all_headers = [(b"host", b"bench"), (b"authorization", f"Bearer {self.key}".encode()),
                       *headers]
        if body:
            all_headers += [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]
        scope = {"type": "http", "http_version": "1.1", "method": method, "path": route,
                 "raw_path": route.encode(), "query_string": query.encode(),
                 "headers": all_headers, "scheme": "http", "server": ("bench", 80),
                 "client": ("127.0.0.1", 1), "root_path": "", "state": {}}
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def measure(app, account: dict, requests: int) -> dict:  # noqa: ANN001
    call = AsgiCaller(app, account["key"])
    create_body = json.dumps({"model": MODEL, "training_file": account["file"],
                              "hyperparameters": {"n_epochs": 1}}).encode()
    counter = {"n": 0}

    def idempotency() -> tuple[tuple[bytes, bytes], ...]:
        counter["n"] += 1
        return ((b"idempotency-key", f"bench-{time.time_ns()}-{counter['n']}".encode()),)

    for _ in range(10):  # a full page for the list, events for the first job
        status, payload = await call("POST", "/v1/fine_tuning/jobs", create_body, idempotency())
        assert status == 201, payload
    job = json.loads(payload)["id"]
    cases = {
        "healthz": ("GET", "/healthz", b"", requests),
        "retrieve_job": ("GET", f"/v1/fine_tuning/jobs/{job}", b"", requests),
        "list_jobs_10": ("GET", "/v1/fine_tuning/jobs?limit=10", b"", requests),
        "list_events": ("GET", f"/v1/fine_tuning/jobs/{job}/events", b"", requests),
        "create_job": ("POST", "/v1/fine_tuning/jobs", create_body, max(20, requests // 5)),
    }
    results = {}
    for name, (method, path, body, n) in cases.items():
        for _ in range(20):  # warm: compiled statements, pools, caches
            status, payload = await call(method, path, body,
                                         idempotency() if method == "POST" else ())
            assert status in (200, 201), (name, status, payload[:300])
        rounds = []
        for _ in range(3):
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(n):
                await call(method, path, body, idempotency() if method == "POST" else ())
            rounds.append(((time.process_time() - cpu) * 1000 / n,
                           (time.perf_counter() - wall) * 1000 / n))
        best = min(rounds)
        results[name] = {"cpu_ms": round(best[0], 3), "wall_ms": round(best[1], 3),
                         "requests_per_round": n,
                         "rounds_cpu_ms": [round(r[0], 3) for r in rounds]}
    return results


def run(args: argparse.Namespace) -> dict:
    import uvloop

    from app.db.migrate import upgrade
    from app.db.scratch import create_scratch_database, drop_scratch_database
    from app.main import create_app
    from app.settings import Settings

    database_url = create_scratch_database(PG_ADMIN_URL, prefix="crma_inprocess_")
    workdir = Path(tempfile.mkdtemp(prefix="crma-inprocess-"))
    try:
        upgrade(database_url)
        account = seed_accounts(database_url, workdir / "objects", 1)[0]
        settings = Settings(database_url=database_url, data_dir=workdir / "data",
                            storage_url=(workdir / "objects").as_uri(),
                            rate_limit_per_minute=0)
        app = create_app(settings)
        # The access log goes to a file in production; here it would flood the terminal.
        for handler in logging.getLogger("app").handlers:
            handler.setStream(open("/dev/null", "w"))  # noqa: SIM115 - lives as long as the run

        async def measure_and_close() -> dict:
            try:
                return await measure(app, account, args.requests)
            finally:
                reader = getattr(app.state, "reader", None)  # absent before 2026-11-29
                if reader is not None:
                    await reader.close()

        routes = uvloop.run(measure_and_close())
    finally:
        drop_scratch_database(PG_ADMIN_URL, database_url)
    return {
        "routes": routes,
        "method": "ASGI app called in process, PostgreSQL over loopback; best of 3 rounds; "
                  "CPU of this process (all threads), PostgreSQL's share not included",
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report(run(args), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
