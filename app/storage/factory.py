"""Pick the object-store backend from a URL: file:///dir or s3://bucket[/prefix]."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from app.settings import Settings
from app.storage.base import ObjectStore
from app.storage.local import LocalObjectStore


def open_store(settings: Settings) -> ObjectStore:
    url = settings.resolved_storage_url
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalObjectStore(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        from app.storage.s3 import S3ObjectStore  # boto3 is only imported when used

        return S3ObjectStore(
            bucket=parsed.netloc,
            prefix=parsed.path.lstrip("/"),
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
        )
    raise ValueError(f"unsupported storage URL: {url!r} (use file:///... or s3://bucket)")
