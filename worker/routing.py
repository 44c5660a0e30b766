"""Task names and queues: what crosses the broker. The relay publishes `RUN_JOB` messages
written to the outbox by app/services (whose `outbox.RUN_JOB_TASK` is this name); the
maintenance tasks are the relay, the reaper and the liveness ping."""

from __future__ import annotations

from app.services.exports import EXPORT_TASK
from app.services.outbox import RUN_JOB_TASK

TRAINING_QUEUES = ("small", "large")
MAINTENANCE_QUEUE = "maintenance"

RUN_JOB = RUN_JOB_TASK  # "crma.run_job"
EXPORT_JOB = EXPORT_TASK  # "crma.export_job": a merged-weights export, on the job's queue
RELAY_OUTBOX = "crma.relay_outbox"
REAP = "crma.reap"
PING = "crma.worker_ping"
