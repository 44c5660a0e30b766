"""The object-store interface. Two backends: S3 (boto3; MinIO or moto speak it too) and a
local directory. Keys come from app/storage/keys.py only, never from user-supplied names."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    bytes: int
    sha256: str | None = None


class ObjectStore(Protocol):
    def put_file(self, key: str, path: Path) -> ObjectInfo: ...

    def put_stream(self, key: str, stream: BinaryIO) -> ObjectInfo: ...

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo: ...

    def get_to_file(self, key: str, path: Path) -> None: ...

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def list_keys(self, prefix: str) -> list[str]: ...

    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> None: ...

    def presigned_get_url(self, key: str, *, ttl_s: int, filename: str) -> str | None:
        """A short-lived download URL, or None when the backend cannot sign (the API then
        streams the object itself)."""
        ...

    def ping(self) -> None:
        """Raise if the store is unreachable (used by /readyz)."""
        ...


class StreamUploads:
    """`put_file` and `put_bytes` of every backend, through its `put_stream`."""

    def put_stream(self, key: str, stream: BinaryIO) -> ObjectInfo:
        raise NotImplementedError

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        with open(path, "rb") as stream:
            return self.put_stream(key, stream)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        return self.put_stream(key, io.BytesIO(data))


def sha256_of_chunks(chunks: Iterator[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def verify_object(store: ObjectStore, key: str, *, sha256: str, size: int) -> bool:
    """Read the stored object back and compare size and digest: an artifact counts as stored
    only when this passes."""
    info = store.head(key)
    if info is None or info.bytes != size:
        return False
    digest, read = sha256_of_chunks(store.iter_chunks(key))
    return digest == sha256 and read == size


def download_prefix(store: ObjectStore, prefix: str, directory: Path) -> list[Path]:
    """Every object under `prefix` into `directory`, keeping the relative paths."""
    paths = []
    for key in store.list_keys(prefix):
        relative = key[len(prefix):]
        if not relative or relative.startswith("/") or ".." in relative.split("/"):
            continue
        target = directory / relative
        store.get_to_file(key, target)
        paths.append(target)
    return paths


def upload_directory(store: ObjectStore, directory: Path, prefix: str) -> list[ObjectInfo]:
    """Every file of `directory` under `prefix` (keys keep the relative paths)."""
    return [store.put_file(prefix + path.relative_to(directory).as_posix(), path)
            for path in sorted(p for p in directory.rglob("*") if p.is_file())]
