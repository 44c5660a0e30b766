"""All tables; importing this package registers every model on Base.metadata."""

from app.db.models.accounts import Account, ApiKey
from app.db.models.billing import IdempotencyRecord, LedgerEntry, LedgerTransaction
from app.db.models.continual import ContinualRun, ContinualStage
from app.db.models.exports import ModelExport
from app.db.models.files import File
from app.db.models.inference import InferenceAllowance, InferenceRequest
from app.db.models.jobs import Artifact, Checkpoint, Job, JobEvent
from app.db.models.model_installs import ModelInstall
from app.db.models.outbox import OutboxMessage, WorkerHeartbeat
from app.db.models.webhooks import WebhookDelivery, WebhookEndpoint, WebhookEvent

__all__ = [
    "Account",
    "ApiKey",
    "Artifact",
    "Checkpoint",
    "ContinualRun",
    "ContinualStage",
    "File",
    "IdempotencyRecord",
    "InferenceAllowance",
    "InferenceRequest",
    "Job",
    "JobEvent",
    "LedgerEntry",
    "LedgerTransaction",
    "ModelExport",
    "ModelInstall",
    "OutboxMessage",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
    "WorkerHeartbeat",
]
