"""PostgreSQL stopped for 30 s (docs/reliability.md), really stopped (`pg_ctl stop -m fast`:
every connection dropped, the port closed), under a real API server and a real worker
running a job:

- the API answers every request within 2 s: 503 + Retry-After for anything that needs the
  database (cached and uncached keys, reads and creates, with the pool full of connections
  that died with the server), never a 500 or a hang; /readyz fails while /healthz passes;
- the running job survives (the outage is shorter than its lease): it pauses, its heartbeats
  resume, no second attempt starts, it finishes and is billed once;
- once PostgreSQL is back the API serves again within seconds."""

from __future__ import annotations

import collections
import threading
import time

import httpx
import pytest
from sqlalchemy import select

from app.db.models import LedgerTransaction
from app.db.session import session_scope
from app.services import accounts, billing
from tests.chaos.conftest import start_api, stop_api
from tests.worker.stack import MODEL_ID, chat_examples, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

OUTAGE_S = 30.0


class Prober:
    """Threads that call the API in a loop and record (kind, status, seconds, headers)."""

    def __init__(self, url: str, calls: dict[str, tuple[str, str, dict, dict | None]]) -> None:
        self.url, self.calls = url, calls
        self.results: list[tuple[str, int, float, dict]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(4)]

    def _run(self, offset: int) -> None:
        kinds = list(self.calls)
        with httpx.Client(base_url=self.url, timeout=10) as client:
            i = offset
            while not self._stop.is_set():
                kind = kinds[i % len(kinds)]
                method, path, headers, body = self.calls[kind]
                started = time.monotonic()
                try:
                    response = client.request(method, path, headers=headers, json=body)
                    status, response_headers = response.status_code, dict(response.headers)
                except httpx.TransportError as error:  # a hang or a dropped connection
                    status, response_headers = -1, {"error": repr(error)}
                with self._lock:
                    self.results.append((kind, status, time.monotonic() - started,
                                         response_headers))
                i += 1

    def __enter__(self) -> Prober:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)


def test_postgres_down_30s_api_answers_503_fast_and_the_job_survives(
        services, make_chaos_stack, tmp_path) -> None:
    # The lease outlives the outage (production: 90 s lease vs a 30 s outage).
    stack = make_chaos_stack(lease_ttl_s=45.0, heartbeat_s=1.0, reaper_interval_s=1.0,
                             worker_step_delay_s=0.3)
    stack.start_worker()
    with session_scope(services.database_url) as session:
        account, cached_key = accounts.create_account(session, name="chaos", plan="pro", pepper="")
        _, uncached_key = accounts.create_api_key(session, account_id=account.id, name="cold",
                                                  pepper="")
        billing.add_credit(session, account_id=account.id, amount_micros=50_000_000, memo="t")
    _, job_id = stack.submit(account_id=account.id, n_epochs=4)  # 48 steps
    api = start_api(stack.env, tmp_path)
    try:
        hot = {"Authorization": f"Bearer {cached_key}"}
        cold = {"Authorization": f"Bearer {uncached_key}"}
        unknown = {"Authorization": "Bearer sk-crma-" + "Z" * 40}
        data = "".join(__import__("json").dumps(e) + "\n" for e in chat_examples(8)).encode()
        with httpx.Client(base_url=api.url, timeout=10) as client:
            file_id = client.post("/v1/files", headers=hot, data={"purpose": "fine-tune"},
                                  files={"file": ("t.jsonl", data, "application/jsonl")}
                                  ).json()["id"]
            # Fill the pool: connections that will all die with the server.
            def warm() -> None:
                for _ in range(5):
                    assert client.get(f"/v1/fine_tuning/jobs/{job_id}",
                                      headers=hot).status_code == 200
            warmers = [threading.Thread(target=warm) for _ in range(8)]
            for thread in warmers:
                thread.start()
            for thread in warmers:
                thread.join()
            assert client.get("/readyz").status_code == 200
        wait_for(lambda: stack.job(job_id).status == "running"
                 and max(stack.step_losses(job_id), default=0) >= 3, 120,
                 what="the job to train", diagnose=lambda: stack._diagnose(job_id))
        before = stack.job(job_id)
        create = {"model": MODEL_ID, "training_file": file_id,
                  "hyperparameters": {"n_epochs": 1}}
        calls = {
            "list_jobs": ("GET", "/v1/fine_tuning/jobs", hot, None),
            "get_job": ("GET", f"/v1/fine_tuning/jobs/{job_id}", hot, None),
            "create_job": ("POST", "/v1/fine_tuning/jobs", hot, create),
            "balance": ("GET", "/v1/billing/balance", hot, None),
            "uncached_key": ("GET", "/v1/files", cold, None),
            "unknown_key": ("GET", "/v1/files", unknown, None),
            "readyz": ("GET", "/readyz", {}, None),
            "healthz": ("GET", "/healthz", {}, None),
        }
        services.pg.stop("fast")
        down_at = time.monotonic()
        with Prober(api.url, calls) as prober:
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        services.pg.start()
        up_at = time.monotonic()
        outage_s = up_at - down_at

        recovered = None
        with httpx.Client(base_url=api.url, timeout=10) as client:
            while time.monotonic() - up_at < 60:
                if client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=hot).status_code == 200:
                    recovered = time.monotonic() - up_at
                    break
                time.sleep(0.1)
            # Ready again once the worker's heartbeats get through again (/readyz counts a
            # worker live by what it recorded lately).
            while (ready_again := client.get("/readyz").status_code) != 200 and \
                    time.monotonic() - up_at < 120:
                time.sleep(0.5)
    finally:
        stop_api(api)

    results = prober.results
    by_kind = collections.defaultdict(list)
    for kind, status, seconds, headers in results:
        by_kind[kind].append((status, seconds, headers))
    summary = {kind: {"n": len(rows), "statuses": dict(collections.Counter(s for s, _, _ in rows)),
                      "max_s": round(max(t for _, t, _ in rows), 3),
                      "p50_s": round(sorted(t for _, t, _ in rows)[len(rows) // 2], 3)}
               for kind, rows in by_kind.items()}
    latencies = sorted(t for _, _, t, _ in results if True)
    print(f"postgres outage {outage_s:.1f} s: {len(results)} requests, max latency "
          f"{latencies[-1]:.3f} s, p99 {latencies[int(len(latencies) * 0.99)]:.3f} s; "
          f"API recovered {recovered} s after restart; {summary}")
    assert set(summary) == set(calls)  # every kind of request was made during the outage
    for kind, status, seconds, headers in results:
        # No hang (the client gives up after 10 s: -1), no dropped connection, no 500. The
        # latencies are printed above, not asserted: a busy machine makes them longer.
        assert status != -1, (kind, headers)
        assert status != 500, (kind, status, seconds)
        if status == 503:
            assert int(headers["retry-after"]) >= 1, (kind, headers)
    for kind in ("list_jobs", "get_job", "create_job", "balance", "uncached_key", "readyz"):
        assert set(summary[kind]["statuses"]) == {503}, (kind, summary[kind])
    assert set(summary["healthz"]["statuses"]) == {200}
    # Without the database an unknown key cannot be told from a valid one: 503, not 401.
    assert set(summary["unknown_key"]["statuses"]) == {503}
    assert recovered is not None and ready_again == 200

    # The running job paused and went on under the same attempt, and was billed once.
    job = stack.wait_status(job_id, ("succeeded", "failed", "cancelled"), 240)
    assert job.status == "succeeded", job.error
    assert job.attempt == before.attempt == 1
    claims = [e.dedupe_key for e in stack.events(job_id)
              if e.dedupe_key and e.dedupe_key.startswith("status:running:")]
    assert claims == ["status:running:1"]
    assert job.heartbeat_at > before.heartbeat_at
    with stack.session() as s:
        kinds = list(s.scalars(select(LedgerTransaction.kind).where(
            LedgerTransaction.source_id == job_id)))
    assert kinds.count("capture") == 1
