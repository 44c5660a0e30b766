"""A real `crma dev` (tiny random-weight model under the SmolLM2 catalog id, short reliability
constants): kill -9 its worker mid-job and the supervisor restarts it, /readyz says why it is
not ready until the new worker consumes, the job resumes from its checkpoint and succeeds,
billed once; kill -9 `crma dev` itself and no child is left after the grace period."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app.db.models import Checkpoint, Job, JobEvent, LedgerTransaction
from app.db.session import session_scope
from tests.cli.test_dev_children import alive, dev_processes, wait_for, wait_gone
from tests.conftest import free_port, wait_until_healthy

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODEL_ID = "smollm2-135m-instruct"  # the catalog id; the weights are a tiny random Llama
SHUTDOWN_GRACE_S = 5.0  # CRMA_WORKER_SHUTDOWN_GRACE_S; crma dev adds its 30 s margin


@dataclass
class Dev:
    process: subprocess.Popen
    url: str
    data_dir: Path
    log: Path
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def database(self) -> str:
        return f"sqlite:///{self.data_dir / 'crma.sqlite'}"

    def worker_pid(self) -> int | None:
        for pid in dev_processes(self.data_dir):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"worker" in cmdline and pid != self.process.pid:
                return pid
        return None

    def said(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def dev(tmp_path: Path, tiny_model_store: Path) -> Iterator[Dev]:
    data_dir = tmp_path / "dev-data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMA_")}
    env.update({
        "CRMA_MODEL_STORE_DIR": str(tiny_model_store),
        # Seconds, not minutes, for expiry and recovery; a job long enough to kill mid-way.
        "CRMA_LEASE_TTL_S": "4", "CRMA_HEARTBEAT_S": "1", "CRMA_REAPER_INTERVAL_S": "1",
        "CRMA_WORKER_PING_INTERVAL_S": "2", "CRMA_RELAY_INTERVAL_S": "0.2",
        "CRMA_CHECKPOINT_EVERY_STEPS": "2", "CRMA_WORKER_STEP_DELAY_S": "0.3",
        "CRMA_WORKER_SHUTDOWN_GRACE_S": str(SHUTDOWN_GRACE_S),
        "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
    })
    log = tmp_path / "dev.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "crma_cli.main", "dev", "--data-dir", str(data_dir),
         "--port", str(port), "--no-model-install"],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process, 180, describe=lambda: log.read_text()[-3000:])
        key = json.loads((data_dir / "dev-account.json").read_text())["api_key"]
        yield Dev(process=process, url=url, data_dir=data_dir, log=log, key=key)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
        for pid in dev_processes(data_dir):
            os.killpg(pid, signal.SIGKILL)


class ReadinessLog:
    """Every /readyz answer, polled in a thread (a restart can be quicker than a test's
    sequential checks)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[float, int, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.wait(0.2):
                response = client.get(self.url + "/readyz")
                self.answers.append((time.monotonic(), response.status_code, response.json()))

    def __enter__(self) -> ReadinessLog:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _chat_file(n: int) -> bytes:
    lines = [json.dumps({"messages": [
        {"role": "user", "content": f"Question {i}: what is {i} plus {i}?"},
        {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}) for i in range(n)]
    return ("\n".join(lines) + "\n").encode()


def test_a_killed_worker_is_restarted_and_its_job_resumes_billed_once(dev: Dev) -> None:
    client = httpx.Client(base_url=dev.url, headers=dev.headers, timeout=30)
    wait_for(lambda: client.get("/readyz").status_code == 200, 180, "the worker to consume")
    upload = client.post("/v1/files", data={"purpose": "fine-tune"},
                         files={"file": ("t.jsonl", _chat_file(40), "application/jsonl")})
    assert upload.status_code == 201, upload.text
    created = client.post("/v1/fine_tuning/jobs", json={
        "model": MODEL_ID, "training_file": upload.json()["id"],
        "hyperparameters": {"n_epochs": 1, "batch_size": 2}})
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]

    def checkpointed() -> bool:
        return bool(client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"])

    wait_for(checkpointed, 180, "the job's first checkpoint")
    worker = dev.worker_pid()
    assert worker is not None
    with ReadinessLog(dev.url) as readiness:
        killed_at = time.monotonic()
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: dev.worker_pid() not in (None, worker), 60, "a new worker process")
        wait_for(lambda: any(t > killed_at and code == 200 for t, code, _ in readiness.answers),
                 180, "readiness after the restart")
    after = [(code, body) for t, code, body in readiness.answers if t > killed_at]
    first_down = next(i for i, (code, _) in enumerate(after) if code == 503)
    reason = after[first_down][1]["checks"]
    # Not ready, saying why, while no worker consumed; ready again once the new one did.
    assert reason["workers"].startswith("error: no live worker consumes queue small, large")
    assert reason["database"] == reason["broker"] == reason["storage"] == "ok"
    assert any(code == 200 for code, _ in after[first_down:]), after
    print("readiness after the kill:", [code for code, _ in after])
    assert f"worker (pid {worker}) was killed by SIGKILL" in dev.said()
    assert "worker restarted" in dev.said()

    wait_for(lambda: client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"]
             in ("succeeded", "failed", "cancelled"), 300, "the job to finish")
    job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job
    with session_scope(dev.database) as session:
        row = session.scalars(select(Job).where(Job.id == job_id)).one()
        assert row.attempt == 2
        first_attempt = session.scalars(select(Checkpoint.step).where(
            Checkpoint.job_id == job_id, Checkpoint.attempt == 1)).all()
        resumed = session.scalars(select(JobEvent).where(
            JobEvent.job_id == job_id, JobEvent.dedupe_key == "resumed:2")).all()
        assert resumed and resumed[0].data["step"] == max(first_attempt) >= 2
        kinds = sorted(session.scalars(select(LedgerTransaction.kind).where(
            LedgerTransaction.source_id == job_id)).all())
    assert kinds.count("capture") == 1 and kinds.count("hold") == 1, kinds

    # kill -9 of crma dev itself: every child ends (the idle worker on its parent-death
    # SIGTERM; anything stuck, SIGKILLed by its own watcher after the grace period).
    children = [pid for pid in dev_processes(dev.data_dir) if pid != dev.process.pid]
    assert len(children) >= 3
    dev.process.kill()
    dev.process.wait()
    assert wait_gone(children, SHUTDOWN_GRACE_S + 30 + 60) == [], [
        Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children if alive(pid)]
