"""Contract fuzzing (docs/reliability.md): schemathesis (CLI, every phase: examples, coverage,
fuzzing, stateful) over the committed openapi/openapi.json against a real uvicorn server on
PostgreSQL. Every check runs (status codes, content types, headers, response schemas,
schema-violating requests rejected, auth, resource lifecycles) plus one of ours: no response
carries another tenant's id. The server's own access log is the independent count: zero 5xx,
and jobs really went create -> get -> cancel through the OpenAPI links.

Not run: `positive_data_acceptance` (a schema-valid body may still name a file that does not
exist, an unknown cursor or a start_date after end_date: business rules a JSON Schema cannot
express, answered 400/404/422 on purpose).

Knobs: CRMA_CONTRACT_MAX_EXAMPLES (default 100 per operation), CRMA_CONTRACT_SEED."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.db.models import WorkerHeartbeat
from app.db.session import session_scope
from app.services.health import retire_workers
from tests.app.helpers import create_tenant, jsonl
from tests.factories import insert_job
from tests.conftest import free_port, wait_until_healthy

pytestmark = [pytest.mark.contract, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
MAX_EXAMPLES = int(os.environ.get("CRMA_CONTRACT_MAX_EXAMPLES", "100"))
SEED = os.environ.get("CRMA_CONTRACT_SEED", "20261128")
JOB_PATH = re.compile(r"^/v1/fine_tuning/jobs/(ftjob-[A-Za-z0-9]+)(/cancel)?$")


@pytest.fixture
def server(tmp_path: Path, pg_url: str) -> Iterator[tuple[str, Path]]:
    port = free_port()
    log = tmp_path / "server.log"
    env = {
        **os.environ,
        "CRMA_DATABASE_URL": pg_url, "CRMA_DATA_DIR": str(tmp_path / "data"),
        "CRMA_STORAGE_URL": (tmp_path / "objects").as_uri(),
        # The per-key limit is tested on its own (tests/security/test_rate_limit.py); here it
        # would only turn the second half of the run into 429s.
        "CRMA_RATE_LIMIT_PER_MINUTE": "1000000",
        "CRMA_MAX_UPLOAD_BYTES": str(4 * 1024 * 1024),
        # /readyz counts a worker live for three ping intervals after it was last seen: the
        # one recorded below stays live for the whole run (there is no real worker here).
        "CRMA_WORKER_PING_INTERVAL_S": "3600",
    }
    worker = f"contract-{port}@localhost"
    with session_scope(pg_url) as session:
        session.add(WorkerHeartbeat(worker_id=worker, queues="large,maintenance,small",
                                    device="cpu"))
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host",
         "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url, process, 60, describe=log.read_text)
    yield url, log
    process.terminate()
    process.wait(timeout=15)
    retire_workers(pg_url, worker_ids=[worker])


def _access_log(log: Path) -> list[dict]:
    entries = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("logger") == "app.access":
            entries.append(entry)
    return entries


def test_schemathesis_finds_no_5xx_and_no_contract_violation(
        server: tuple[str, Path], pg_url: str, tmp_path: Path) -> None:
    url, log = server
    tenant = create_tenant(pg_url, plan="pro", credit_micros=10**10)
    victim = create_tenant(pg_url, plan="pro", credit_micros=10**9)
    with httpx.Client(base_url=url, timeout=30) as client:
        files = {"file": ("train.jsonl", jsonl(20), "application/jsonl")}
        good = client.post("/v1/files", headers=tenant.headers, data={"purpose": "fine-tune"},
                           files=files)
        assert good.status_code == 201, good.text
        theirs = client.post("/v1/files", headers=victim.headers, data={"purpose": "fine-tune"},
                             files=files)
        assert theirs.status_code == 201, theirs.text
    with session_scope(pg_url) as session:
        victim_job = insert_job(session, account_id=victim.account_id,
                                training_file_id=theirs.json()["id"]).id
    report_dir = tmp_path / "report"
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "SCHEMATHESIS_HOOKS": "tests.contract.schemathesis_hooks",
           "CRMA_CONTRACT_FILE_ID": good.json()["id"],
           "CRMA_CONTRACT_FOREIGN_IDS": ",".join(
               [victim.account_id, theirs.json()["id"], victim_job])}
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "run",
        str(ROOT / "openapi" / "openapi.json"), "--url", url,
        "-H", f"Authorization: Bearer {tenant.key}",
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--max-examples", str(MAX_EXAMPLES), "--seed", SEED, "--workers", "1",
        "--request-timeout", "10", "--no-color", "--suppress-health-check", "all",
        "--report", "json", "--report-dir", str(report_dir),
    ]
    started = time.monotonic()
    # cwd: schemathesis keeps a crash cache (.schemathesis/) in its working directory.
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)
    elapsed = time.monotonic() - started
    output = run.stdout + run.stderr
    report = json.loads(next(report_dir.glob("*.json")).read_text())

    entries = _access_log(log)
    statuses = collections.Counter(e["status"] for e in entries)
    per_operation = collections.Counter((e["method"], e["path"]) for e in entries)
    created = sum(1 for e in entries if e["method"] == "POST"
                  and e["path"] == "/v1/fine_tuning/jobs" and e["status"] == 201)
    retrieved = sum(1 for e in entries if e["method"] == "GET" and e["status"] == 200
                    and (m := JOB_PATH.match(e["path"])) and not m.group(2))
    cancelled = sum(1 for e in entries if e["method"] == "POST" and e["status"] == 200
                    and (m := JOB_PATH.match(e["path"])) and m.group(2))
    links = re.search(r"API Links:\s+(\d+) covered / (\d+) selected", output)
    summary = {
        "seconds": round(elapsed, 1), "test_cases": report["test_cases"],
        "operations": report["operations"], "requests": len(entries),
        "statuses": dict(sorted(statuses.items())), "jobs_created": created,
        "create_statuses": dict(collections.Counter(
            e["status"] for e in entries
            if e["method"] == "POST" and e["path"] == "/v1/fine_tuning/jobs")),
        "jobs_retrieved": retrieved, "jobs_cancelled": cancelled,
        "links_covered": links.group(0) if links else None,
        "phases": {k: v["status"] for k, v in report["phases"].items()},
    }
    print("schemathesis:", json.dumps(summary))
    assert not [s for s in statuses if s >= 500], (summary, output[-20000:])
    assert run.returncode == 0, output[-30000:]
    assert report["operations"]["tested"] == report["operations"]["total"] >= 30
    assert report["test_cases"]["generated"] >= 10 * report["operations"]["total"]
    assert all(v["status"] == "success" for v in report["phases"].values()), summary
    # The stateful links really chained real jobs: create -> retrieve -> cancel.
    assert created > 0 and retrieved > 0 and cancelled > 0, summary
    assert len(per_operation) > 30  # many distinct concrete paths were reached
