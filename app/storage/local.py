"""Local-directory object store for the embedded dev mode. Writes go to a temp file and are
renamed into place, so a reader never sees half an object."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from app.storage.base import CHUNK, ObjectInfo, StreamUploads


class LocalObjectStore(StreamUploads):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"key escapes the store: {key!r}")
        return path

    def put_stream(self, key: str, stream: BinaryIO) -> ObjectInfo:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return ObjectInfo(key=key, bytes=size, sha256=digest.hexdigest())

    def get_to_file(self, key: str, path: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise FileNotFoundError(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        source = self._path(key)
        if not source.is_file():
            raise FileNotFoundError(key)
        with open(source, "rb") as stream:
            while chunk := stream.read(chunk_size):
                yield chunk

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        if not path.is_file():
            return None
        return ObjectInfo(key=key, bytes=path.stat().st_size)

    def list_keys(self, prefix: str) -> list[str]:
        base = self.root / prefix
        scan = base if base.is_dir() else base.parent
        if not scan.exists():
            return []
        keys = (
            p.relative_to(self.root).as_posix()
            for p in scan.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )
        return sorted(k for k in keys if k.startswith(prefix))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        for key in self.list_keys(prefix):
            self.delete(key)

    def presigned_get_url(self, key: str, *, ttl_s: int, filename: str) -> str | None:
        return None

    def ping(self) -> None:
        if not self.root.is_dir():
            raise OSError(f"object store directory missing: {self.root}")
