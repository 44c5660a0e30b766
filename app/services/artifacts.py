"""Published adapter files of a job or continual run, and how to download them.

Ownership is checked before anything else (the owner must be the caller's); a download URL
is minted only after that scoped lookup. S3 gives a short-lived presigned GET (attachment);
the local backend gives an API path that streams the bytes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Artifact
from app.domain.errors import NotFound
from app.domain.id_format import is_artifact_name
from app.storage.base import ObjectStore


@dataclass(frozen=True)
class ArtifactLink:
    name: str
    bytes: int
    sha256: str
    url: str


def list_artifacts(session: Session, *, account_id: str, owner_id: str) -> list[Artifact]:
    return list(session.scalars(
        select(Artifact)
        .where(Artifact.account_id == account_id, Artifact.owner_id == owner_id)
        .order_by(Artifact.name)
    ))


def get_artifact(session: Session, *, account_id: str, owner_id: str, name: str) -> Artifact:
    row = session.scalars(select(Artifact).where(
        Artifact.account_id == account_id, Artifact.owner_id == owner_id, Artifact.name == name,
    )).first() if is_artifact_name(name) else None
    if row is None:
        raise NotFound(f"No artifact {name!r}.", param="name")
    return row


def download_url(store: ObjectStore, artifact: Artifact, *, api_path: str, ttl_s: int) -> str:
    """A presigned URL when the store can sign, else the API path that streams it."""
    filename = artifact.name.rsplit("/", 1)[-1]
    signed = store.presigned_get_url(artifact.storage_key, ttl_s=ttl_s, filename=filename)
    return signed or f"{api_path}/{artifact.name}"


def links(
    store: ObjectStore, artifacts: list[Artifact], *, api_path: str, ttl_s: int
) -> list[ArtifactLink]:
    return [
        ArtifactLink(name=a.name, bytes=a.bytes, sha256=a.sha256,
                     url=download_url(store, a, api_path=api_path, ttl_s=ttl_s))
        for a in artifacts
    ]


def open_artifact(store: ObjectStore, artifact: Artifact) -> Iterator[bytes]:
    if store.head(artifact.storage_key) is None:
        raise NotFound(f"The artifact {artifact.name!r} is no longer stored.", param="name")
    return store.iter_chunks(artifact.storage_key)
