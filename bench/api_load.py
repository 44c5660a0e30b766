"""API load: job creates at a fixed rate plus status reads as fast as the server answers.

A real server (`crma serve --workers N`, uvicorn) on PostgreSQL over loopback, and a load
generator in a separate process (asyncio + uvloop, a minimal HTTP/1.1 keep-alive client so
the generator spends little of the machine's CPU):

- creates: open loop, `--create-rate` per second (default 100) of
  `POST /v1/fine_tuning/jobs`, spread over `--accounts` pro accounts (one key each), each with
  an `Idempotency-Key` unless `--no-idempotency`; latency counts from the scheduled start, so
  time spent waiting for a free connection is included (no coordinated omission);
- reads: closed loop, `--read-connections` connections each sending the next request as soon
  as the previous answer arrives (or, with `--read-rate R`, open loop: R per second over those
  connections, latency from the scheduled time): `GET /v1/fine_tuning/jobs/{id}` (70%),
  `GET /v1/fine_tuning/jobs?limit=10` (20%), `GET /v1/fine_tuning/jobs/{id}/events` (10%)
  for jobs of the caller's own account;
- errors: any status other than 200/201 and any transport error, in either stream.

The default per-key rate limit (6000/min per API process) stays on: the load is spread over
enough keys that no key exceeds it.

    .venv/bin/python bench/api_load.py [--duration 120] [--server-workers 2]

Writes docs/benchmarks/api_load.json (`create_p99_ms`, `status_reads_per_s`, `errors`, the
latency distributions, and the machine's load average before, during and after the run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PG_ADMIN_URL = os.environ.get("CRMA_BENCH_PG_ADMIN_URL",
                              "postgresql://postgres@127.0.0.1:5432/postgres")
MODEL = "smollm2-135m-instruct"
CHAT_LINE = json.dumps({"messages": [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."}]})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=120.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=10.0, help="unmeasured seconds first")
    parser.add_argument("--create-rate", type=float, default=100.0, help="creates per second")
    parser.add_argument("--read-connections", type=int, default=16)
    parser.add_argument("--read-rate", type=float, default=0.0,
                        help="reads per second, open loop (default 0: closed loop, as many as "
                             "--read-connections get answered)")
    parser.add_argument("--create-connections", type=int, default=32)
    parser.add_argument("--accounts", type=int, default=32)
    # 2 on the 2-core box: 3 answered fewer reads (200 vs 222/s) at a higher create p99
    # (612 vs 449 ms) in back-to-back 60 s runs on 2026-11-29.
    parser.add_argument("--server-workers", type=int, default=2)
    parser.add_argument("--no-idempotency", action="store_true")
    parser.add_argument("--database-url", default=None,
                        help="an existing empty database (default: create and drop one)")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "docs" / "benchmarks" / "api_load.json")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser.parse_args(argv)


# -- a minimal HTTP/1.1 client ------------------------------------------------------------------

# uvicorn closes a keep-alive connection idle for 5 s (timeout_keep_alive); like any HTTP
# client, reconnect rather than send on a connection the server may be closing.
IDLE_RECONNECT_S = 4.0


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_used = 0.0

    async def request(self, method: str, path: str, headers: dict[str, str],
                      body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is not None and time.monotonic() - self.last_used > IDLE_RECONNECT_S:
            self.close()
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        try:
            raw = await self.reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            length, close = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            payload = await self.reader.readexactly(length)
        except BaseException:
            self.close()
            raise
        self.last_used = time.monotonic()
        if close:
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# -- the load generator (its own process) -------------------------------------------------------

def percentile_ms(values: list[float], q: float) -> float | None:
    """The q-th percentile of latencies in seconds, in ms; None (JSON null) without any."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]
                 * 1000, 2)


async def generate(config: dict) -> dict:
    host, port = "127.0.0.1", config["port"]
    accounts = config["accounts"]  # [{"key", "file", "jobs": [...]}]
    idempotency = config["idempotency"]
    start = time.monotonic() + 0.5
    measure_from = start + config["warmup"]
    stop_at = measure_from + config["duration"]
    creates: list[tuple[float, int, float]] = []  # (latency s, status, finished at)
    completed = {"all": 0}  # every answered request, warm-up and backlog included
    reads: list[tuple[float, int, str]] = []
    transport_errors: dict[str, int] = {}
    rng = random.Random(7)

    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(config["create_connections"]):
        pool.put_nowait(Connection(host, port))

    def note_error(error: BaseException) -> None:
        name = type(error).__name__
        transport_errors[name] = transport_errors.get(name, 0) + 1

    async def one_create(i: int, scheduled: float) -> None:
        account = accounts[i % len(accounts)]
        headers = {"Authorization": f"Bearer {account['key']}",
                   "Content-Type": "application/json"}
        if idempotency:
            headers["Idempotency-Key"] = f"load-{config['run_id']}-{i}"
        body = json.dumps({"model": MODEL, "training_file": account["file"],
                           "hyperparameters": {"n_epochs": 1}}).encode()
        connection = await pool.get()
        try:
            status, payload = await connection.request("POST", "/v1/fine_tuning/jobs", headers,
                                                       body)
        except Exception as error:  # noqa: BLE001 - counted, never fatal
            if scheduled >= measure_from:
                note_error(error)
            return
        finally:
            pool.put_nowait(connection)
        finished = time.monotonic()
        completed["all"] += 1
        if status == 201:
            account["jobs"].append(json.loads(payload)["id"])
        if scheduled >= measure_from:
            creates.append((finished - scheduled, status, finished))

    def pick_read(local: random.Random) -> tuple[str, str, dict[str, str]]:
        account = accounts[local.randrange(len(accounts))]
        headers = {"Authorization": f"Bearer {account['key']}"}
        roll = local.random()
        job = account["jobs"][local.randrange(len(account["jobs"]))]
        if roll < 0.7:
            return "get_job", f"/v1/fine_tuning/jobs/{job}", headers
        if roll < 0.9:
            return "list_jobs", "/v1/fine_tuning/jobs?limit=10", headers
        return "list_events", f"/v1/fine_tuning/jobs/{job}/events", headers

    async def one_read(connection: Connection, local: random.Random, since: float) -> None:
        """`since`: when the read was due (open loop) or sent (closed loop)."""
        kind, path, headers = pick_read(local)
        try:
            status, _ = await connection.request("GET", path, headers)
        except Exception as error:  # noqa: BLE001 - counted, never fatal
            if since >= measure_from:
                note_error(error)
            return
        done = time.monotonic()
        completed["all"] += 1
        if measure_from <= since and done <= stop_at:
            reads.append((done - since, status, kind))

    async def closed_loop_reader(n: int) -> None:
        connection = Connection(host, port)
        local = random.Random(n)
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        while time.monotonic() < stop_at:
            await one_read(connection, local, time.monotonic())
        connection.close()

    async def open_loop_reads() -> None:
        read_pool: asyncio.Queue[Connection] = asyncio.Queue()
        for _ in range(config["read_connections"]):
            read_pool.put_nowait(Connection(host, port))
        local = random.Random(1)

        async def scheduled_read(_: int, due: float) -> None:
            connection = await read_pool.get()
            try:
                await one_read(connection, local, due)
            finally:
                read_pool.put_nowait(connection)

        await scheduled(config["read_rate"], scheduled_read)

    async def scheduled(rate: float, launch) -> None:  # noqa: ANN001 - async (i, due) -> None
        """Open loop: start `launch(i, due)` at `rate` per second until the window ends, without
        waiting for earlier ones (a slow server builds a backlog instead of a pause)."""
        tasks = set()
        i = 0
        while (due := start + i / rate) < stop_at:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(launch(i, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if tasks:
            await asyncio.wait(tasks)

    if config["read_rate"]:
        read_streams = [open_loop_reads()]
    else:
        read_streams = [closed_loop_reader(n) for n in range(config["read_connections"])]
    await asyncio.gather(scheduled(config["create_rate"], one_create), *read_streams)
    create_latencies = [lat for lat, _, _ in creates]
    read_latencies = [lat for lat, _, _ in reads]
    bad_creates = [s for _, s, _ in creates if s != 201]
    in_window = sum(1 for _, _, finished in creates if finished <= stop_at)
    bad_reads = [s for _, s, _ in reads if s != 200]
    statuses: dict[str, int] = {}
    for status in bad_creates + bad_reads:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    by_kind: dict[str, int] = {}
    for _, _, kind in reads:
        by_kind[kind] = by_kind.get(kind, 0) + 1
    del rng
    return {
        "creates": len(creates),
        "creates_scheduled_per_s": round(len(creates) / config["duration"], 1),
        # Answered within the measured window: below the schedule when the server falls behind.
        "creates_per_s": round(in_window / config["duration"], 1),
        "create_backlog_drain_s": round(max((f for _, _, f in creates), default=stop_at)
                                        - stop_at, 1),
        "create_p50_ms": percentile_ms(create_latencies, 50),
        "create_p90_ms": percentile_ms(create_latencies, 90),
        "create_p99_ms": percentile_ms(create_latencies, 99),
        "create_max_ms": percentile_ms(create_latencies, 100),
        "status_reads": len(reads),
        "status_reads_per_s": round(len(reads) / config["duration"], 1),
        "read_p50_ms": percentile_ms(read_latencies, 50),
        "read_p99_ms": percentile_ms(read_latencies, 99),
        "reads_by_kind": by_kind,
        "errors": len(bad_creates) + len(bad_reads) + sum(transport_errors.values()),
        "error_statuses": statuses,
        "transport_errors": transport_errors,
        "requests_answered": completed["all"],
    }


def generator_process(config: dict, results: multiprocessing.Queue) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    started = time.process_time()
    summary = asyncio.run(generate(config))
    summary["generator_cpu_s"] = round(time.process_time() - started, 1)
    results.put(summary)


# -- setup: database, accounts, files, server ---------------------------------------------------

def seed_accounts(database_url: str, storage_dir: Path, n: int) -> list[dict]:
    """Pro accounts with credit, one key and one processed training file each."""
    import io

    from app.db.models import File
    from app.db.session import session_scope
    from app.domain.ids import new_id
    from app.services import accounts, billing
    from app.services.uploads import validate_jsonl
    from app.storage import keys
    from app.storage.local import LocalObjectStore

    store = LocalObjectStore(storage_dir)
    data = ("\n".join([CHAT_LINE] * 20) + "\n").encode()
    report = validate_jsonl(io.BytesIO(data), max_line_bytes=1 << 20,
                            model_store_dir=Path("/nonexistent"))
    seeded = []
    with session_scope(database_url) as session:
        for i in range(n):
            # pepper "": the server is started without CRMA_API_KEY_PEPPER (the default).
            account, key = accounts.create_account(session, name=f"load {i}", plan="pro",
                                                   pepper="")
            billing.add_credit(session, account_id=account.id, amount_micros=10**10, memo="load")
            file_id = new_id("file")
            storage_key = keys.file_key(account.id, file_id)
            info = store.put_bytes(storage_key, data)
            session.add(File(id=file_id, account_id=account.id, filename="train.jsonl",
                             purpose="fine-tune", bytes=info.bytes, sha256=info.sha256,
                             status="processed", format=report.format,
                             example_count=report.example_count,
                             token_counts=report.token_counts,
                             token_estimate_method=report.token_estimate_method,
                             errors=[], error_count=0, storage_key=storage_key))
            seeded.append({"key": key, "file": file_id, "jobs": []})
    return seeded


def start_server(env: dict[str, str], port: int, workers: int, log: Path) -> subprocess.Popen:
    import httpx

    process = subprocess.Popen(
        [sys.executable, "-m", "crma_cli.main", "serve", "--host", "127.0.0.1", "--port",
         str(port), "--workers", str(workers), "--no-migrate"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
        start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("server did not start:\n" + log.read_text(errors="replace")[-3000:])


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def prime_reads(port: int, accounts: list[dict]) -> None:
    """Two jobs per account before the run, so reads have targets from the first second."""
    import httpx

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for account in accounts:
            for _ in range(2):
                response = client.post(
                    "/v1/fine_tuning/jobs", headers={"Authorization": f"Bearer {account['key']}"},
                    json={"model": MODEL, "training_file": account["file"],
                          "hyperparameters": {"n_epochs": 1}})
                response.raise_for_status()
                account["jobs"].append(response.json()["id"])


def process_tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and its descendants (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        stats[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += stats.get(current, 0.0)
        todo += children.get(current, [])
    return total


def postgres_cpu_s() -> float:
    """User + system CPU seconds of every running PostgreSQL process (backends die with
    their connection, so compare readings taken while the same connections are open)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            name, rest = Path(f"/proc/{entry}/stat").read_text().split(" (", 1)[1].split(")", 1)
        except (OSError, ValueError):
            continue
        if name == "postgres":
            fields = rest.split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / ticks, sum(values[:8]) / ticks


class LoadSampler:
    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(5):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def run(args: argparse.Namespace) -> dict:
    from tests.conftest import free_port

    from app.db.migrate import upgrade
    from app.db.scratch import create_scratch_database, drop_scratch_database

    own_database = args.database_url is None
    database_url = args.database_url or create_scratch_database(PG_ADMIN_URL,
                                                                prefix="crma_load_")
    workdir = Path(tempfile.mkdtemp(prefix="crma-load-"))
    try:
        upgrade(database_url)
        accounts = seed_accounts(database_url, workdir / "objects", args.accounts)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRMA_")}
        env.update({
            "CRMA_DATABASE_URL": database_url, "CRMA_DATA_DIR": str(workdir / "data"),
            "CRMA_STORAGE_URL": (workdir / "objects").as_uri(), "PYTHONPATH": str(ROOT),
        })
        server = start_server(env, port, args.server_workers, workdir / "server.log")
        try:
            prime_reads(port, accounts)
            config = {
                "port": port, "accounts": accounts, "idempotency": not args.no_idempotency,
                "duration": args.duration, "warmup": args.warmup,
                "create_rate": args.create_rate, "read_connections": args.read_connections,
                "read_rate": args.read_rate,
                "create_connections": args.create_connections, "run_id": secrets.token_hex(4),
            }
            load_before = os.getloadavg()
            results: multiprocessing.Queue = multiprocessing.Queue()
            generator = multiprocessing.get_context("fork").Process(
                target=generator_process, args=(config, results))
            server_cpu_before = process_tree_cpu_s(server.pid)
            postgres_before, machine_before = postgres_cpu_s(), machine_cpu_s()
            with LoadSampler() as sampler:
                generator.start()
                summary = results.get(timeout=args.duration + args.warmup + 120)
                generator.join(timeout=30)
            server_cpu = process_tree_cpu_s(server.pid) - server_cpu_before
            postgres_cpu = postgres_cpu_s() - postgres_before
            machine_after = machine_cpu_s()
            load_after = os.getloadavg()
        finally:
            stop_server(server)
        log_tail = (workdir / "server.log").read_text(errors="replace")
        server_errors = sum(1 for line in log_tail.splitlines()
                            if '"level":"error"' in line or "Traceback" in line)
    finally:
        if own_database:
            drop_scratch_database(PG_ADMIN_URL, database_url)
    during = sampler.samples or [load_before[0]]
    return {
        **summary,
        "targets": {"create_rate_per_s": args.create_rate, "create_p99_ms_below": 50,
                    "status_reads_per_s_at_least": 1000, "errors": 0},
        "met": {"create_rate": summary["creates_per_s"] >= 0.98 * args.create_rate,
                "create_p99": summary["create_p99_ms"] < 50,
                "status_reads": summary["status_reads_per_s"] >= 1000,
                "errors": summary["errors"] == 0},
        "duration_s": args.duration, "warmup_s": args.warmup,
        "idempotency_key_on_creates": not args.no_idempotency,
        "server_workers": args.server_workers, "accounts": args.accounts,
        "read_connections": args.read_connections,
        "server_cpu_s": round(server_cpu, 1),
        "server_cpu_ms_per_request": round(server_cpu * 1000 / max(1, summary["requests_answered"]),
                                           2),
        "server_error_log_lines": server_errors,
        # Where the machine's CPU went during the generator's run (warm-up included).
        "cpu_seconds": {
            "api_server": round(server_cpu, 1), "postgres": round(postgres_cpu, 1),
            "load_generator": summary["generator_cpu_s"],
            "machine_busy": round(machine_after[0] - machine_before[0], 1),
            "machine_capacity": round(machine_after[1] - machine_before[1], 1),
        },
        "load_average": {"before_1m": round(load_before[0], 2),
                         "during_1m_mean": round(sum(during) / len(during), 2),
                         "during_1m_max": round(max(during), 2),
                         "after_1m": round(load_after[0], 2)},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def report(result: dict, args: argparse.Namespace) -> None:
    """Print the result; write it to `args.out` unless `args.no_write`."""
    text = json.dumps(result, indent=2)
    print(text)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report(run(args), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
