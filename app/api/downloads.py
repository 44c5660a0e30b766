"""Download responses for artifacts: a redirect to a presigned URL when the store signs
(S3), else the bytes streamed through the API (local directory)."""

from __future__ import annotations

from fastapi.responses import RedirectResponse, StreamingResponse

from app.db.models import Artifact
from app.services import artifacts
from app.storage.base import ObjectStore


def artifact_response(
    store: ObjectStore, row: Artifact, *, ttl_s: int
) -> StreamingResponse | RedirectResponse:
    filename = row.name.rsplit("/", 1)[-1].replace('"', "_")
    signed = store.presigned_get_url(row.storage_key, ttl_s=ttl_s, filename=filename)
    if signed:
        return RedirectResponse(signed, status_code=307)
    return StreamingResponse(
        artifacts.open_artifact(store, row), media_type="application/octet-stream",
        headers={"content-disposition": f'attachment; filename="{filename}"',
                 "content-length": str(row.bytes)},
    )
