"""The API hop: what the product's /v1/chat/completions adds over calling the engine directly.

A real `crma engine` process and a real API server (`crma serve` at its defaults: one uvicorn
worker, the default settings, its engine at CRMA_ENGINE_URL) on a scratch PostgreSQL database,
with a pro account holding credit and a succeeded job whose adapter (random LoRA + CRMA
weights, written as a worker publishes a bundle) lives in the object store the engine reads.
The same small request, max_tokens 1 so generation does not dominate, goes

- A: through the API (`POST /v1/chat/completions`: authentication, rate limit, resolving the
  model, admission with a hold, the engine call as a stream, settlement), and
- B: straight to the engine (`POST /generate` with the adapter spec the API sends),

alternated A B B A per round from one keep-alive httpx client each; the hop is the per-round
difference. Streamed, the same for the time to the first token (the API's first content chunk
vs the engine's first delta). The engine runs a tiny random Llama named
smollm2-135m-instruct (so the catalog prices and bounds it), where a request computes for a
few milliseconds; on SmolLM2 itself compute swings by more than the hop on this shared
machine (bench/inference.py's engine_http_hop vs engine_http_hop_tiny_model).

    .venv/bin/python bench/inference_api_hop.py [--rounds 200]      (prints the section)
    .venv/bin/python bench/inference.py --only api_hop               (merges it into the JSON)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

PG_ADMIN_URL = os.environ.get("CRMA_BENCH_PG_ADMIN_URL",
                              "postgresql://postgres@127.0.0.1:5432/postgres")
MODEL = "smollm2-135m-instruct"
MESSAGES = [{"role": "user", "content": "Hello"}]
TARGET_P50_MS = 5.0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(url: str, process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            raise SystemExit(f"{url} did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def _seed(database_url: str, settings: Any, model_dir: Path, work: Path) -> tuple[str, str, dict]:
    """A pro account with credit and a succeeded job with a published adapter: (key, the
    job's fine_tuned_model, the engine fields the API resolves it to)."""
    from app.db.base import utcnow
    from app.db.session import session_scope
    from app.domain.job_options import fine_tuned_model_name
    from app.services import accounts, billing, inference_targets
    from app.services.publishing import insert_artifacts, upload_bundle
    from app.storage.factory import open_store
    from serving.testing import write_random_adapter
    from tests.factories import insert_job

    adapter = write_random_adapter(model_dir, work / "adapter", seed=11, crma=True, rank=16)
    store = open_store(settings)
    with session_scope(database_url) as session:
        # pepper "": the server runs without CRMA_API_KEY_PEPPER (the default).
        account, key = accounts.create_account(session, name="hop", plan="pro", pepper="")
        billing.add_credit(session, account_id=account.id, amount_micros=10**10, memo="hop")
        job = insert_job(session, account_id=account.id, status="succeeded", suffix="hop",
                         finished_at=utcnow(), attempt=1)
        files = upload_bundle(store=store, account_id=account.id, owner_id=job.id,
                              bundle_dir=adapter, attempt=1)
        insert_artifacts(session, account_id=account.id, owner_id=job.id, files=files)
        name = fine_tuned_model_name(model=MODEL, account_id=account.id, suffix="hop",
                                     job_id=job.id)
        session.flush()
        target = inference_targets.resolve(session, account_id=account.id, model=name,
                                           store=store)
    return key, name, target.engine_fields()


def _timed_json(client: httpx.Client, path: str, body: dict) -> float:
    started = time.perf_counter()
    response = client.post(path, json=body)
    response.raise_for_status()
    response.content  # noqa: B018 - the whole body
    return (time.perf_counter() - started) * 1000


def _timed_first(client: httpx.Client, path: str, body: dict, api: bool) -> float:
    """Milliseconds to the first generated text: the API's first chunk with content (its
    first chat chunk is the role), the engine's first delta. The stream is read to its end."""
    started = time.perf_counter()
    first = None
    with client.stream("POST", path, json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is not None or not line.startswith("data:") or line == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            if api:
                choices = event.get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    first = time.perf_counter()
            elif event.get("type") == "delta":
                first = time.perf_counter()
    return ((first or time.perf_counter()) - started) * 1000


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def _summary(values: list[float]) -> dict[str, float]:
    return {"p10": _percentile(values, 0.1), "p50": round(statistics.median(values), 3),
            "p90": _percentile(values, 0.9), "mean": round(statistics.fmean(values), 3)}


def measure(api_url: str, engine_url: str, key: str, model: str, engine_fields: dict,
            rounds: int, warmup: int) -> dict[str, Any]:
    api_body = {"model": model, "messages": MESSAGES, "max_tokens": 1, "temperature": 0}
    engine_body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 1, "temperature": 0,
                   **engine_fields}
    stream_api = dict(api_body, max_tokens=2, stream=True)
    stream_engine = dict(engine_body, max_tokens=2, stream=True)
    with httpx.Client(base_url=api_url, timeout=60,
                      headers={"Authorization": f"Bearer {key}"}) as api, \
            httpx.Client(base_url=engine_url, timeout=60) as engine:
        arms = {
            "api_json": lambda: _timed_json(api, "/v1/chat/completions", api_body),
            "engine_json": lambda: _timed_json(engine, "/generate", engine_body),
            "api_stream_first_token": lambda: _timed_first(api, "/v1/chat/completions",
                                                           stream_api, True),
            "engine_stream_first_token": lambda: _timed_first(engine, "/generate",
                                                              stream_engine, False),
        }
        for _ in range(warmup):
            for arm in arms.values():
                arm()
        samples: dict[str, list[float]] = {name: [] for name in arms}
        names = list(arms)
        for index in range(rounds):
            for name in names if index % 2 == 0 else reversed(names):
                samples[name].append(arms[name]())
    added = [a - e for a, e in zip(samples["api_json"], samples["engine_json"], strict=True)]
    added_first = [a - e for a, e in zip(samples["api_stream_first_token"],
                                         samples["engine_stream_first_token"], strict=True)]
    return {"request_ms": {name: _summary(values) for name, values in samples.items()},
            "added_ms": _summary(added), "added_ms_first_token": _summary(added_first),
            "added_ms_p50": round(statistics.median(added), 3),
            "added_ms_p50_first_token": round(statistics.median(added_first), 3),
            "rounds": rounds}


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its children (Linux /proc)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = path.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid_here, parent, session = int(path.parent.name), int(fields[1]), int(fields[3])
        if pid_here == pid or session == pid or parent == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def api_hop_section(rounds: int = 200, warmup: int = 10, threads: int = 1,
                    work: Path | None = None) -> dict[str, Any]:
    from app.db.migrate import upgrade
    from app.db.scratch import create_scratch_database, drop_scratch_database
    from app.settings import Settings
    from crma_core.testing import make_tiny_model_dir

    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="crma-api-hop-", dir=work))
    database_url = create_scratch_database(PG_ADMIN_URL, prefix="crma_hop_")
    processes: list[subprocess.Popen] = []
    try:
        upgrade(database_url)
        objects = work / "objects"
        objects.mkdir()
        settings = Settings(data_dir=work / "data", database_url=database_url,
                            storage_url=objects.as_uri())
        model_dir = make_tiny_model_dir(work / "tiny-llama", "llama")
        key, model, fields = _seed(database_url, settings, model_dir, work)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("CRMA_")}
        base_env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads),
                        CRMA_STORAGE_URL=objects.as_uri())
        engine_port, api_port = _free_port(), _free_port()
        engine_log, api_log = work / "engine.log", work / "api.log"
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "crma_cli.main", "engine", "--model-dir", str(model_dir),
             "--model", MODEL, "--port", str(engine_port), "--threads", str(threads),
             "--log-level", "warning"],
            cwd=ROOT, env=dict(base_env, CRMA_DATA_DIR=str(work / "engine-data")),
            stdout=subprocess.DEVNULL, stderr=engine_log.open("wb"), start_new_session=True))
        engine_url = f"http://127.0.0.1:{engine_port}"
        _wait(engine_url + "/health", processes[-1], engine_log)
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "crma_cli.main", "serve", "--host", "127.0.0.1", "--port",
             str(api_port), "--no-migrate"],
            cwd=ROOT, env=dict(base_env, CRMA_DATABASE_URL=database_url,
                               CRMA_DATA_DIR=str(work / "data"), CRMA_ENGINE_URL=engine_url),
            stdout=subprocess.DEVNULL, stderr=api_log.open("wb"), start_new_session=True))
        api_url = f"http://127.0.0.1:{api_port}"
        _wait(api_url + "/healthz", processes[-1], api_log)
        load_before = [round(x, 2) for x in os.getloadavg()]
        api_cpu = _process_cpu_s(processes[-1].pid)
        result = measure(api_url, engine_url, key, model, fields, rounds, warmup)
        api_cpu = _process_cpu_s(processes[-1].pid) - api_cpu
        requests = 2 * (rounds + warmup)
        result.update(
            target_p50_ms=TARGET_P50_MS, met=result["added_ms_p50"] <= TARGET_P50_MS,
            api_server_cpu_ms_per_request=round(api_cpu * 1000 / requests, 3),
            load_average_before=load_before,
            load_average_after=[round(x, 2) for x in os.getloadavg()],
            setup={"api": "crma serve at its defaults (1 uvicorn worker, default settings) "
                          "on PostgreSQL over loopback, CRMA_ENGINE_URL to the engine",
                   "engine": "crma engine at its defaults, tiny random Llama named "
                             f"{MODEL}, adapters from the object store",
                   "model": "a succeeded job's fine_tuned_model (LoRA r 16 + CRMA, random "
                            "weights), pro account with credit: a hold per request",
                   "request": "chat, one user message, temperature 0, max_tokens 1 (JSON) "
                              "and 2 (stream)",
                   "client": "httpx, one keep-alive connection per server, A B B A per "
                             "round, warm-up rounds first",
                   "torch_threads": threads})
        return result
    finally:
        for process in reversed(processes):
            _stop(process)
        drop_scratch_database(PG_ADMIN_URL, database_url)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    print(json.dumps(api_hop_section(args.rounds, args.warmup, args.threads), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
