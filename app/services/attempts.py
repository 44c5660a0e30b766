"""One attempt of a job, as a worker runs it: claim, heartbeat, progress events, checkpoints
and the ending (succeeded with its verified artifacts, cancelled, failed, or handed back to
the queue). Each step is its own transaction here; what a step changes is
app/services/job_lifecycle.py's (the transitions and what goes with them) and
app/services/leases.py's (the lease columns).

Fencing: every write of a running attempt first checks that the attempt still holds the
lease (`leases.holds_lease`, share-locked in the same transaction), so a stale attempt adds
no event and moves no checkpoint pointer. While the database is unreachable a write waits
and retries (an outage shorter than the lease must not cost the attempt); once no heartbeat
got through for a whole lease, the attempt presumes its lease lost and stops. Event dedupe
keys are per step (`metrics:step:<n>`), so an attempt that resumes from a checkpoint and
replays steps adds nothing twice."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db.base import db_now
from app.db.models import Checkpoint, File, Job, JobEvent
from app.db.session import session_scope
from app.domain.ids import new_id
from app.domain.job_settings import JobSettings, RecipeConfigs, load_job_settings, recipe_configs
from app.domain.job_state import ErrorCode, JobStatus
from app.services import job_lifecycle, job_sources, leases, training_events, worker_liveness
from app.services.events import record_event
from app.services.job_errors import classify
from app.services.job_lifecycle import job_error
from app.services.outages import database_unreachable
from app.services.publishing import insert_artifacts, upload_bundle
from app.settings import Settings
from app.storage import keys
from app.storage.base import ObjectStore, download_prefix, upload_directory
from app.storage.factory import open_store

log = logging.getLogger(__name__)

TIME_LIMIT_MESSAGE = "The job exceeded the worker's time limit; it will not be charged."
SHUTDOWN_MESSAGE = ("The job's worker shut down on its last allowed attempt; it will not be "
                    "charged.")


@dataclass(frozen=True)
class JobSpec:
    """What an attempt reads from the job row when it starts."""

    id: str
    account_id: str
    kind: str
    model: str
    queue: str
    seed: int
    job_settings: JobSettings
    token_budget: int | None
    training_key: str
    validation_key: str | None
    example_count: int
    last_checkpoint_step: int | None
    continual_run_id: str | None
    stage_index: int | None

    @property
    def artifact_owner(self) -> str:
        """A continual stage publishes into its run's artifacts."""
        return self.continual_run_id if self.kind == "continual_stage" else self.id


def claim(settings: Settings, *, job_id: str, worker_name: str) -> leases.Claim:
    """Take the lease (committed at once: a free account's claim holds its account row)."""
    owner = f"{worker_name or 'worker'}/{os.getpid()}"
    with session_scope(settings.resolved_database_url) as session:
        return leases.claim_job(session, job_id=job_id, owner=owner,
                                lease_ttl_s=settings.lease_ttl_s,
                                max_attempts=settings.max_attempts)


def reoffer_busy(settings: Settings, *, job_id: str) -> None:
    """A free account's other job is running: offer this one again in a little while. The
    conditional offer (none still pending) collapses duplicate deliveries into one row."""
    with session_scope(settings.resolved_database_url) as session:
        queue = session.scalar(select(Job.queue).where(Job.id == job_id))
        leases.offer_job(session, job_id=job_id, queue=queue or "small",
                         delay_s=settings.free_busy_retry_s,
                         only_if_offered_before=db_now(session))


def _load_spec(session: Session, job_id: str) -> tuple[JobSpec, bool]:
    job = session.execute(select(Job).where(Job.id == job_id)).scalar_one()
    training = session.execute(select(File).where(File.id == job.training_file_id)).scalar_one()
    validation_key = None
    if job.validation_file_id:
        validation_key = session.scalar(
            select(File.storage_key).where(File.id == job.validation_file_id))
    spec = JobSpec(
        id=job.id, account_id=job.account_id, kind=job.kind, model=job.model, queue=job.queue,
        seed=job.seed, job_settings=load_job_settings(job.settings),
        token_budget=job.token_budget, training_key=training.storage_key,
        validation_key=validation_key, example_count=training.example_count,
        last_checkpoint_step=job.last_checkpoint_step,
        continual_run_id=job.continual_run_id, stage_index=job.stage_index,
    )
    return spec, job.cancel_requested_at is not None


class Attempt:
    """Attempt `number` of a claimed job. `fenced`/`lost`/`cancel_requested` are what the
    heartbeat learnt; the training thread reads them before every step."""

    def __init__(self, *, settings: Settings, job_id: str, number: int,
                 worker_name: str) -> None:
        self.settings = settings
        self.number = number
        self.worker_name = worker_name
        self.store: ObjectStore = open_store(settings)
        self.fenced = False  # another attempt owns the job now
        self.lost = False  # no heartbeat got through for a whole lease: presume it lost
        self.trained_tokens = 0  # written by the training thread, sent with each heartbeat
        self._last_ok = time.monotonic()
        with session_scope(settings.resolved_database_url) as session:
            self.job, self.cancel_requested = _load_spec(session, job_id)
            job_lifecycle.start_job(session, job_id=job_id, attempt=number,
                                    continual_run_id=self.job.continual_run_id)
            worker_liveness.touch(session, worker_name=worker_name, current_job_id=job_id)

    def recipe_configs(self, *, has_validation: bool) -> RecipeConfigs:
        job, settings = self.job, self.settings
        return recipe_configs(
            job.job_settings, seed=job.seed, token_budget=job.token_budget,
            example_count=job.example_count, has_validation=has_validation,
            device=settings.worker_device, checkpoint_every_steps=settings.checkpoint_every_steps,
            checkpoint_every_s=settings.checkpoint_every_s,
            memory_budget_mb=settings.worker_memory_budget_mb)

    # -- the lease -------------------------------------------------------------------------
    def beat(self) -> bool:
        """One heartbeat: extend the lease, send the trained tokens so far (a cancel or a
        budget stop bills what was trained), read the cancel flag, refresh this worker's
        liveness. False when this attempt no longer owns the job."""
        try:
            with session_scope(self.settings.resolved_database_url) as session:
                beat = leases.heartbeat(
                    session, job_id=self.job.id, attempt=self.number,
                    lease_ttl_s=self.settings.lease_ttl_s, trained_tokens=self.trained_tokens)
                if beat is not None:
                    worker_liveness.touch(session, worker_name=self.worker_name,
                                          current_job_id=self.job.id)
        except Exception:  # noqa: BLE001 - a database blip must not kill training
            log.warning("heartbeat of %s attempt %d failed", self.job.id, self.number,
                        exc_info=True)
            if time.monotonic() - self._last_ok > self.settings.lease_ttl_s:
                # The reaper may already have handed the job to another attempt.
                self.lost = True
            return not self.lost
        if beat is None:
            log.warning("job %s attempt %d was fenced out; stopping", self.job.id, self.number)
            self.fenced = True
            return False
        self._last_ok = time.monotonic()
        self.cancel_requested = beat.cancel_requested
        return True

    def fenced_write(self, write: Callable[[Session], None]) -> bool:
        """Run `write` if this attempt still holds the lease, retrying while the database is
        unreachable until the lease is presumed lost."""
        delay = 0.2
        while True:
            try:
                with session_scope(self.settings.resolved_database_url) as session:
                    if not leases.holds_lease(session, job_id=self.job.id, attempt=self.number):
                        self.fenced = True
                        return False
                    write(session)
                return True
            except Exception as error:
                if not database_unreachable(error):
                    raise
                if self.fenced or self.lost:
                    return False
                log.warning("job %s attempt %d: database unreachable (%s); retrying in %.1fs",
                            self.job.id, self.number, type(error).__name__, delay)
                time.sleep(delay)
                delay = min(2 * delay, max(0.2, self.settings.heartbeat_s))

    def _event(self, session: Session, *, message: str, dedupe_key: str,
               data: dict[str, Any] | None = None, type: str = "message") -> None:  # noqa: A002
        record_event(session, job_id=self.job.id, message=message, type=type, data=data,
                     dedupe_key=dedupe_key, attempt=self.number)

    # -- progress --------------------------------------------------------------------------
    def record_step(self, metrics, *, total_steps: int | None) -> None:  # noqa: ANN001
        """A training step's metrics event (crma_core.StepMetrics)."""
        self.trained_tokens = metrics.trained_tokens
        self.record(training_events.step_event(metrics, total_steps=total_steps))

    def record_eval(self, metrics) -> None:  # noqa: ANN001 - crma_core.EvalMetrics
        self.record(training_events.eval_event(metrics))

    def record(self, event: training_events.TrainingEvent | None) -> None:
        """One training event (app/services/training_events.py)."""
        if event is None:
            return
        self.fenced_write(lambda s: record_event(
            s, job_id=self.job.id, message=event.message, level=event.level, type=event.type,
            data=event.data, dedupe_key=event.dedupe_key, attempt=self.number))

    def record_resumed(self, step: int) -> None:
        """The resume event. Steps an earlier attempt reported past the checkpoint are trained
        again without new events (each step is reported once), so the event says up to which
        step the job will be quiet rather than let it look stalled."""

        def write(session: Session) -> None:
            reported = _last_reported_step(session, self.job.id)
            again = reported is not None and reported > step
            self._event(
                session, dedupe_key=f"resumed:{self.number}",
                data={"step": step, "attempt": self.number,
                      "retraining_until_step": reported if again else None},
                message=f"Resumed from the checkpoint at step {step} (attempt {self.number})"
                        + (f"; steps {step + 1}-{reported} were reported before and are "
                           f"trained again without new step events" if again else ""))

        self.fenced_write(write)

    def download_start(self, target: Path) -> Path | None:
        """A continued job's starting adapter (app/services/job_sources.py) in `target`;
        None when the job starts fresh."""
        start = self.job.job_settings.start_from
        if start is None:
            return None
        return job_sources.download_start(
            self.store, database_url=self.settings.resolved_database_url,
            account_id=self.job.account_id, start=start, target=target)

    def record_started_from(self, info: dict[str, Any]) -> None:
        """The event that says where a continued job's adapter came from."""
        start = self.job.job_settings.start_from
        where = (f"the checkpoint at step {start.checkpoint_step} of {start.job_id}"
                 if start.checkpoint_step is not None
                 else f"the final adapter of {start.job_id}")
        data = {"model": start.name, "job_id": start.job_id,
                "checkpoint_step": start.checkpoint_step, **info}
        self.fenced_write(lambda s: self._event(
            s, dedupe_key="started_from", data=data,
            message=f"Started from {start.name} ({where}; LoRA"
                    f"{' and CRMA' if info.get('crma') else ''} weights, fresh optimizer)"))

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self, step: int, directory: Path, *, metrics: dict[str, Any]) -> bool:
        """Upload a checkpoint directory and move the job's resume pointer to it. The objects
        go under an attempt-specific prefix, so a stale attempt can never overwrite the files
        a newer attempt's pointer refers to. `metrics` holds at least `trained_tokens`."""
        if self.fenced or self.lost:
            return False
        prefix = (f"{keys.checkpoint_prefix(self.job.account_id, self.job.id, step)}"
                  f"attempt-{self.number}/")
        upload_directory(self.store, directory, prefix)
        metrics = {"step": step, **metrics}
        tokens = metrics["trained_tokens"]

        def write(session: Session) -> None:
            if not leases.record_checkpoint_step(session, job_id=self.job.id,
                                                 attempt=self.number, step=step,
                                                 trained_tokens=tokens):
                return
            insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" \
                else sqlite.insert
            session.execute(insert(Checkpoint).values(
                id=new_id("checkpoint"), job_id=self.job.id, step=step, attempt=self.number,
                storage_prefix=prefix, metrics=metrics, created_at=db_now(session),
            ).on_conflict_do_nothing())
            self._event(session, dedupe_key=f"checkpoint:step:{step}",
                        data={"step": step, "trained_tokens": tokens},
                        message=f"Checkpoint saved at step {step}")

        return self.fenced_write(write)

    def download_checkpoint(self, target: Path) -> Path | None:
        """The checkpoint to resume from, downloaded into `target`; None for a fresh start."""
        step = self.job.last_checkpoint_step
        if step is None:
            return None
        with session_scope(self.settings.resolved_database_url) as session:
            prefix = session.scalar(select(Checkpoint.storage_prefix).where(
                Checkpoint.job_id == self.job.id, Checkpoint.step == step))
        if prefix is None:
            log.warning("job %s: no checkpoint row for step %s; starting over", self.job.id, step)
            return None
        download_prefix(self.store, prefix, target)
        return target

    # -- endings ---------------------------------------------------------------------------
    def succeed(self, *, bundle_dir: Path, stop_reason: str, trained_tokens: int,
                result: dict[str, Any] | None) -> str:
        """Publish the bundle (uploaded and verified first), then in one fenced transaction
        insert its artifact rows and finish the job as succeeded. "succeeded", or "fenced"
        with nothing written."""
        owner = self.job.artifact_owner
        files = upload_bundle(store=self.store, account_id=self.job.account_id, owner_id=owner,
                              bundle_dir=bundle_dir, attempt=self.number)
        with session_scope(self.settings.resolved_database_url) as session:
            if not leases.holds_lease(session, job_id=self.job.id, attempt=self.number):
                return "fenced"
            insert_artifacts(session, account_id=self.job.account_id, owner_id=owner,
                             files=files)
            if stop_reason == "budget":
                self._event(session, dedupe_key="budget_stop",
                            data={"trained_tokens": trained_tokens,
                                  "token_budget": self.job.token_budget},
                            message="Stopped at the job's token budget; publishing the adapter "
                                    "trained so far")
            if not self._finish(session, JobStatus.SUCCEEDED, values={
                    "trained_tokens": trained_tokens, "result": result,
                    "stop_reason": stop_reason}):
                session.rollback()  # no artifact rows without the transition
                return "fenced"
        return "succeeded"

    def cancel(self, *, trained_tokens: int | None) -> str:
        values: dict[str, Any] = {"stop_reason": "cancelled"}
        if trained_tokens is not None:
            values["trained_tokens"] = trained_tokens
        with session_scope(self.settings.resolved_database_url) as session:
            self._finish(session, JobStatus.CANCELLED, values=values)
        return "cancelled"

    def fail(self, error: BaseException) -> str:
        """The job failed with `error` (mapped to a code and a message without internals)."""
        code, message = classify(error)
        log.error("job %s attempt %d failed (%s)", self.job.id, self.number, code.value,
                  exc_info=error)
        with session_scope(self.settings.resolved_database_url) as session:
            self._finish(session, JobStatus.FAILED, error=job_error(code, message),
                         values={"trained_tokens": self.trained_tokens, "stop_reason": "error"})
        return "failed"

    def hand_back(self, *, reason: str) -> str:
        """Back to the queue after a checkpoint; the next attempt resumes from it. At the
        last allowed attempt there is no next one, so the job fails (and costs nothing)."""
        with session_scope(self.settings.resolved_database_url) as session:
            if self.number >= self.settings.max_attempts:
                code, message = ((ErrorCode.INTERNAL_ERROR, TIME_LIMIT_MESSAGE)
                                 if reason == "time_limit" else
                                 (ErrorCode.WORKER_LOST, SHUTDOWN_MESSAGE))
                self._finish(session, JobStatus.FAILED, error=job_error(code, message),
                             values={"stop_reason": reason})
                return "failed"
            job_lifecycle.hand_back(
                session, job_id=self.job.id, attempt=self.number, queue=self.job.queue,
                message=f"Attempt {self.number} stopped ({reason}) after a checkpoint; the "
                        "job will resume from it")
        return "requeued"

    def _finish(self, session: Session, to: JobStatus, *, values: dict[str, Any],
                error: dict[str, Any] | None = None) -> bool:
        return job_lifecycle.finish_job(
            session, job_id=self.job.id, attempt=self.number, to=to, error=error,
            values=values, prices=self.settings.prices_micros_per_mtok)

    def release_worker(self) -> None:
        """This worker runs no job any more (liveness bookkeeping only)."""
        try:
            with session_scope(self.settings.resolved_database_url) as session:
                worker_liveness.touch(session, worker_name=self.worker_name,
                                      current_job_id=None, clear_job=True)
        except Exception:  # noqa: BLE001 - liveness bookkeeping only
            log.warning("could not clear the worker's current job", exc_info=True)


def _last_reported_step(session: Session, job_id: str) -> int | None:
    """The step of the job's latest step-metrics event (training_events.step_event)."""
    key = session.execute(
        select(JobEvent.dedupe_key)
        .where(JobEvent.job_id == job_id, JobEvent.dedupe_key.like("metrics:step:%"))
        .order_by(JobEvent.seq.desc()).limit(1)).scalar_one_or_none()
    return int(key.rsplit(":", 1)[1]) if key else None
