"""Publishing an adapter bundle: upload every file, read each back (size + sha256), and only
then insert the Artifact rows, in the transaction that moves the job to `succeeded` (a job is
never `succeeded` before its files are verifiably stored: docs/reliability.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db.base import db_now
from app.db.models import Artifact
from app.storage import keys
from app.storage.base import ObjectStore, verify_object


class ArtifactVerificationError(Exception):
    """An uploaded artifact did not read back with the size and sha256 it was written with."""


@dataclass(frozen=True)
class StoredFile:
    name: str  # the path inside the bundle, e.g. lora/adapter_config.json
    bytes: int
    sha256: str
    storage_key: str


def upload_bundle(*, store: ObjectStore, account_id: str, owner_id: str, bundle_dir: Path,
                  attempt: int) -> list[StoredFile]:
    """Upload and verify every file of `bundle_dir`. The keys carry the attempt, so a stale
    attempt can never overwrite objects that a newer attempt's rows point to."""
    from crma_core.io import sha256_file

    stored = []
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        name = path.relative_to(bundle_dir).as_posix()
        key = keys.artifact_key(account_id, owner_id, f"attempt-{attempt}/{name}")
        digest, size = sha256_file(path), path.stat().st_size
        store.put_file(key, path)
        if not verify_object(store, key, sha256=digest, size=size):
            raise ArtifactVerificationError(f"artifact {name} did not verify after upload")
        stored.append(StoredFile(name=name, bytes=size, sha256=digest, storage_key=key))
    if not stored:
        raise ArtifactVerificationError("the adapter bundle is empty")
    return stored


def insert_artifacts(session: Session, *, account_id: str, owner_id: str,
                     files: list[StoredFile]) -> None:
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    now = db_now(session)
    statement = insert(Artifact).values([
        {"owner_id": owner_id, "account_id": account_id, "name": f.name, "bytes": f.bytes,
         "sha256": f.sha256, "storage_key": f.storage_key, "created_at": now}
        for f in files
    ])
    session.execute(statement.on_conflict_do_update(
        index_elements=[Artifact.owner_id, Artifact.name],
        set_={c: statement.excluded[c] for c in ("bytes", "sha256", "storage_key", "created_at")},
    ))
