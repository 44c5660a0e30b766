"""All tables; importing this package registers every model on Base.metadata."""

from app.db.models.accounts import Account, ApiKey
from app.db.models.billing import IdempotencyRecord, LedgerEntry, LedgerTransaction
from app.db.models.continual import ContinualRun, ContinualStage
from app.db.models.files import File
from app.db.models.jobs import Artifact, Checkpoint, Job, JobEvent
from app.db.models.outbox import OutboxMessage, WorkerHeartbeat

__all__ = [
    "Account",
    "ApiKey",
    "Artifact",
    "Checkpoint",
    "ContinualRun",
    "ContinualStage",
    "File",
    "IdempotencyRecord",
    "Job",
    "JobEvent",
    "LedgerEntry",
    "LedgerTransaction",
    "OutboxMessage",
    "WorkerHeartbeat",
]
