"""S3 object store (boto3). Works against AWS S3, MinIO and moto's server.

Uploads go through `upload_fileobj` (multipart above 8 MiB, streamed from the file object:
nothing is read whole into memory); downloads are streamed in chunks or handed out as
short-lived presigned GETs that force `Content-Disposition: attachment`."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from app.storage.base import CHUNK, ObjectInfo, StreamUploads

_SAFE_FILENAME = str.maketrans({c: "_" for c in '"\\\r\n;'})


class _DigestingReader(io.RawIOBase):
    """Counts and hashes what boto3 reads, so put_* returns the sha256 of what was sent."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.digest = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data


class S3ObjectStore(StreamUploads):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        client: Any = None,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=Config(
                signature_version="s3v4",
                connect_timeout=3,
                read_timeout=30,
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        )
        self.list_page_size = 1000  # the ListObjectsV2 maximum
        self.delete_batch_size = 1000  # the DeleteObjects maximum
        # Threads=False keeps a multipart upload's memory to one part at a time.
        self.transfer = TransferConfig(multipart_threshold=8 * CHUNK, multipart_chunksize=8 * CHUNK,
                                       use_threads=False)

    def _key(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"unsafe object key: {key!r}")
        return self.prefix + key

    def _unprefix(self, full_key: str) -> str:
        return full_key[len(self.prefix):]

    def put_stream(self, key: str, stream: BinaryIO) -> ObjectInfo:
        reader = _DigestingReader(stream)
        self.client.upload_fileobj(reader, self.bucket, self._key(key), Config=self.transfer)
        return ObjectInfo(key=key, bytes=reader.size, sha256=reader.digest.hexdigest())

    def get_to_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.bucket, self._key(key), str(path))
        except self.client.exceptions.ClientError as error:
            if _is_missing(error):
                raise FileNotFoundError(key) from error
            raise

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.NoSuchKey as error:
            raise FileNotFoundError(key) from error
        body = response["Body"]
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def head(self, key: str) -> ObjectInfo | None:
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.ClientError as error:
            if _is_missing(error):
                return None
            raise
        return ObjectInfo(key=key, bytes=int(response["ContentLength"]))

    def list_keys(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        keys: list[str] = []
        for page in paginator.paginate(
            Bucket=self.bucket, Prefix=self._key(prefix),
            PaginationConfig={"PageSize": self.list_page_size},
        ):
            keys.extend(self._unprefix(item["Key"]) for item in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        keys = self.list_keys(prefix)
        size = self.delete_batch_size
        for start in range(0, len(keys), size):
            batch = [{"Key": self._key(k)} for k in keys[start:start + size]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def presigned_get_url(self, key: str, *, ttl_s: int, filename: str) -> str | None:
        safe = filename.translate(_SAFE_FILENAME) or "download"
        return self.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self._key(key),
                "ResponseContentDisposition": f'attachment; filename="{safe}"',
            },
            ExpiresIn=ttl_s,
        )

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)


def _is_missing(error: Exception) -> bool:
    code = str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")
