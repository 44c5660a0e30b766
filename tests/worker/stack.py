"""A real worker stack for integration tests: `crma worker` subprocesses (Celery over Redis
under a private key prefix), the outbox relay and the reaper (the same loops `crma relay` /
`crma reaper` run, in threads of the test process), PostgreSQL, a local-directory object
store and a model store holding a tiny random-weight model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from app.db.models import File, Job, JobEvent, LedgerTransaction
from app.db.session import session_scope
from app.domain.ids import new_id
from app.domain.job_settings import AdapterSettings, Hyperparameters, JobSettings
from app.services.tokens import TokenEstimator
from app.settings import Settings
from app.storage import keys
from app.storage.factory import open_store
from tests.factories import insert_job, make_account

ROOT = Path(__file__).resolve().parents[2]
MODEL_ID = "smollm2-135m-instruct"  # a catalog id; its weights here are a tiny random model
TERMINAL = ("succeeded", "failed", "cancelled")


def chat_examples(n: int) -> list[dict]:
    topics = ["the sea", "a fox", "paris", "numbers", "python", "the moon", "rain", "tea"]
    return [
        {"messages": [
            {"role": "user", "content": f"Tell me about {topics[i % len(topics)]} #{i}."},
            {"role": "assistant", "content": f"Here is a short note {i} on "
                                             f"{topics[(i * 3) % len(topics)]}: it is fine."},
        ]}
        for i in range(n)
    ]


@dataclass
class WorkerProcess:
    process: subprocess.Popen
    log_path: Path
    name: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self) -> None:
        wait_for(lambda: "ready." in self.log() or self.process.poll() is not None, 120,
                 what=f"worker {self.name} to be ready")
        assert self.process.poll() is None, self.log()

    def kill(self) -> None:
        """SIGKILL the whole worker (parent and pool children), like a container kill."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Stack:
    settings: Settings
    env: dict[str, str]
    tmp: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    # -- processes ---------------------------------------------------------------------------
    def start_worker(self, *, wait: bool = True, extra_env: dict[str, str] | None = None,
                     pool: str = "prefork") -> WorkerProcess:
        name = f"test-{len(self.workers)}-{new_id('job')[-6:]}@localhost"
        log_path = self.tmp / f"worker-{len(self.workers)}.log"
        env = {**self.env, **(extra_env or {})}
        process = subprocess.Popen(
            [sys.executable, "-m", "crma_cli.main", "worker", "--queues", "small,large",
             "--name", name, "--pool", pool],
            cwd=ROOT, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        worker = WorkerProcess(process=process, log_path=log_path, name=name)
        self.workers.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    def start_workers(self, n: int) -> list[WorkerProcess]:
        """Start `n` workers at once (their imports overlap) and wait until all consume."""
        workers = [self.start_worker(wait=False) for _ in range(n)]
        for worker in workers:
            worker.wait_ready()
        return workers

    def live_workers(self) -> list[WorkerProcess]:
        return [w for w in self.workers
                if w.process.poll() is None and w.name not in ("relay", "reaper")]

    def ensure_workers(self, n: int) -> list[WorkerProcess]:
        """Start workers until `n` are alive, and wait until all of them consume."""
        missing = n - len(self.live_workers())
        if missing > 0:
            self.start_workers(missing)
        for worker in self.live_workers():
            worker.wait_ready()
        return self.live_workers()

    def worker_named(self, name: str) -> WorkerProcess:
        return next(w for w in self.workers if w.name == name)

    def start_loop_processes(self) -> None:
        """`crma relay` and `crma reaper` as processes (what `crma dev` and compose run)."""
        for command in ("relay", "reaper"):
            log_path = self.tmp / f"{command}.log"
            process = subprocess.Popen(
                [sys.executable, "-m", "crma_cli.main", command], cwd=ROOT, env=self.env,
                stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
            self.workers.append(WorkerProcess(process=process, log_path=log_path, name=command))

    def start_relay_and_reaper(self) -> None:
        from worker.celery_app import create_app
        from worker.reaper import run_reaper_loop
        from worker.relay import run_relay_loop

        celery = create_app(self.settings)
        for target in (run_relay_loop, run_reaper_loop):
            thread = threading.Thread(
                target=target, kwargs={"settings": self.settings, "celery": celery,
                                       "stop": self._stop}, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._stop.set()
        for worker in self.workers:
            worker.kill()
        for thread in self._threads:
            thread.join(timeout=10)

    # -- data --------------------------------------------------------------------------------
    def session(self):
        return session_scope(self.settings.resolved_database_url)

    def upload_file(self, account_id: str, examples: list[dict]) -> str:
        store = open_store(self.settings)
        file_id = new_id("file")
        data = "".join(json.dumps(e) + "\n" for e in examples).encode()
        info = store.put_bytes(keys.file_key(account_id, file_id), data)
        # Counted as an upload counts them (the test model's tokenizer where installed), so a
        # job's estimate and token budget are what the API would give it.
        estimator = TokenEstimator(self.settings.model_store_dir)
        for example in examples:
            estimator.add(example, "chat")
        token_counts, methods, lengths = estimator.totals()
        with self.session() as s:
            s.add(File(id=file_id, account_id=account_id, filename="train.jsonl",
                       purpose="fine-tune", bytes=info.bytes, sha256=info.sha256,
                       status="processed", format="chat", example_count=len(examples),
                       token_counts=token_counts, token_estimate_method=methods,
                       token_lengths=lengths or None, errors=[], error_count=0,
                       storage_key=keys.file_key(account_id, file_id)))
        return file_id

    def submit(self, *, plan: str = "pro", account_id: str | None = None, examples: int = 24,
               n_epochs: int = 1, batch_size: int = 2, seed: int = 7,
               estimated_tokens: int = 200_000, offer: bool = True,
               **job_values: Any) -> tuple[str, str]:
        """Create an account (unless given) and a job exactly as the API does: job row,
        admission, `created` event and outbox row in one transaction."""
        from app.services.events import record_event

        if account_id is None:
            with self.session() as s:
                account_id = make_account(s, plan=plan, credit_micros=50_000_000)
        file_id = job_values.pop("training_file_id", None) or \
            self.upload_file(account_id, chat_examples(examples))
        with self.session() as s:
            job_id = insert_job(
                s, account_id=account_id, training_file_id=file_id, model=MODEL_ID,
                job_settings=JobSettings(
                    hyperparameters=Hyperparameters(n_epochs=n_epochs, batch_size=batch_size),
                    adapter=AdapterSettings(lora_r=4, lora_alpha=8)),
                seed=seed, admit=True, offer=offer, estimated_tokens=estimated_tokens,
                **job_values).id
            record_event(s, job_id=job_id, message="Created fine-tuning job", type="status",
                         data={"status": "queued"}, dedupe_key="created")
        return account_id, job_id

    def job(self, job_id: str) -> Job:
        with self.session() as s:
            return s.execute(select(Job).where(Job.id == job_id)).scalar_one()

    def events(self, job_id: str) -> list[JobEvent]:
        with self.session() as s:
            return list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id)
                                  .order_by(JobEvent.seq)))

    def step_losses(self, job_id: str) -> dict[int, float]:
        return {e.data["step"]: e.data["train_loss"] for e in self.events(job_id)
                if e.dedupe_key and e.dedupe_key.startswith("metrics:step:")}

    def last_step(self, job_id: str) -> int:
        return max(self.step_losses(job_id), default=0)

    def captures(self, job_id: str) -> list[LedgerTransaction]:
        with self.session() as s:
            return list(s.scalars(select(LedgerTransaction).where(
                LedgerTransaction.source_id == job_id, LedgerTransaction.kind == "capture")))

    def wait_status(self, job_id: str, statuses: tuple[str, ...], timeout: float) -> Job:
        wait_for(lambda: self.job(job_id).status in statuses, timeout,
                 what=f"job {job_id} to reach {statuses}", diagnose=lambda: self._diagnose(job_id))
        return self.job(job_id)

    def _diagnose(self, job_id: str) -> str:
        job = self.job(job_id)
        tail = "\n".join(f"--- {w.name} ({w.log_path})\n" + w.log()[-6000:] for w in self.workers)
        return f"status={job.status} attempt={job.attempt} error={job.error}\n{tail}"


def wait_for(predicate: Callable[[], bool], timeout: float, *, what: str,
             diagnose: Callable[[], str] | None = None, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    detail = diagnose() if diagnose else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{detail}")


def stack_settings(*, pg_url: str, redis_url: str, prefix: str, tmp: Path,
                   model_store: Path, **overrides: Any) -> tuple[Settings, dict[str, str]]:
    """Settings for the test process and the same values as CRMA_* variables for workers."""
    values: dict[str, Any] = {
        "data_dir": str(tmp / "data"), "database_url": pg_url, "broker_url": redis_url,
        "broker_key_prefix": prefix, "storage_url": (tmp / "objects").as_uri(),
        "model_store_dir": str(model_store), "worker_cache_dir": str(tmp / "cache"),
        # Short reliability constants so a test sees expiry and recovery in seconds.
        "lease_ttl_s": 3.0, "heartbeat_s": 1.0, "reaper_interval_s": 1.0, "max_attempts": 3,
        "stale_queued_s": 30.0, "relay_interval_s": 0.2, "worker_ping_interval_s": 3.0,
        "checkpoint_every_steps": 4, "checkpoint_every_s": 3600.0,
        "worker_step_delay_s": 0.15, "free_busy_retry_s": 2.0,
    }
    values.update(overrides)
    settings = Settings(**values)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMA_")}
    env.update({f"CRMA_{k.upper()}": str(v) for k, v in values.items()})
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    # Keep each worker to one intra-op thread: two cores are shared with the test process.
    env["OMP_NUM_THREADS"] = "1"
    return settings, env
