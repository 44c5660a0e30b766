"""Training files: validate an upload, store it under the tenant's prefix, list, read, delete.

Validation happens before anything is stored: an invalid file is a 400 (`invalid_file`, the
line-numbered errors in the envelope) and leaves no row and no object behind, so every stored
file is `processed` and usable by a job."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO, TypeVar

from pydantic import BaseModel
from sqlalchemy import Row, bindparam, func, select, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Account, File, Job
from app.domain.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge
from app.domain.files import PURPOSES, USABLE_STATUS, InvalidFile, safe_filename
from app.domain.id_format import is_id
from app.domain.ids import new_id
from app.domain.job_state import TERMINAL
from app.services.pagination import find_owned, page, scoped_select
from app.services.uploads import FILE_TOO_LARGE, ValidationReport, summarize_errors
from app.storage import keys
from app.storage.base import ObjectStore


def check_purpose(purpose: str | None) -> str:
    if purpose not in PURPOSES:
        raise InvalidRequest(
            f"purpose must be one of {', '.join(PURPOSES)}; got {purpose!r}.", param="purpose",
            code="invalid_purpose",
        )
    return purpose


def check_report(report: ValidationReport, *, max_bytes: int) -> None:
    """Raise InvalidFile (400) or PayloadTooLarge (413) for what validation found."""
    if any(e["code"] == FILE_TOO_LARGE for e in report.errors):
        raise PayloadTooLarge(f"The file is larger than the limit of {max_bytes} bytes.",
                              param="file")
    if not report.ok:
        raise InvalidFile(summarize_errors(report), errors=report.errors,
                          error_count=report.error_count)


def create_file(
    session: Session, *, account_id: str, store: ObjectStore, stream: BinaryIO,
    report: ValidationReport, filename: str | None, purpose: str,
) -> File:
    """Insert the file row and store the bytes (last, so a failed insert stores nothing)."""
    file_id = new_id("file")
    key = keys.file_key(account_id, file_id)
    row = File(
        id=file_id, account_id=account_id, filename=safe_filename(filename), purpose=purpose,
        bytes=report.bytes, sha256=report.sha256, status=USABLE_STATUS, format=report.format,
        example_count=report.example_count, token_counts=report.token_counts,
        token_estimate_method=report.token_estimate_method,
        token_lengths=report.token_lengths or None, errors=[], error_count=0,
        storage_key=key, created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    stream.seek(0)
    info = store.put_stream(key, stream)
    if info.bytes != report.bytes or (info.sha256 and info.sha256 != report.sha256):
        store.delete(key)
        raise Conflict("The upload changed while it was being stored; retry.",
                       code="upload_changed")
    return row


def get_file(session: Session, *, account_id: str, file_id: str) -> File:
    row = find_owned(session, File, account_id, file_id, File.deleted_at.is_(None))
    if row is None:
        raise NotFound(f"No such file: {file_id!r}.", param="file_id")
    return row


def list_files(
    session: Session, *, account_id: str, after: str | None, limit: int, purpose: str | None = None
) -> tuple[list[File], bool]:
    statement = scoped_select(File, account_id).where(File.deleted_at.is_(None))
    if purpose is not None:
        statement = statement.where(File.purpose == purpose)
    return page(session, statement, File, after=after, limit=limit)


def delete_file(session: Session, *, account_id: str, file_id: str, store: ObjectStore) -> File:
    """Delete a file no unfinished job needs (409 `file_in_use` otherwise)."""
    row = get_file(session, account_id=account_id, file_id=file_id)
    in_use = session.scalar(
        select(func.count()).select_from(Job).where(
            Job.account_id == account_id,
            (Job.training_file_id == file_id) | (Job.validation_file_id == file_id),
            Job.status.notin_([s.value for s in TERMINAL]),
        )
    )
    if in_use:
        raise Conflict(f"File {file_id} is used by {in_use} unfinished job(s).",
                       code="file_in_use", param="file_id")
    session.execute(update(File).where(File.id == row.id).values(deleted_at=utcnow()))
    if row.storage_key:
        store.delete(row.storage_key)
    return row


def open_content(
    session: Session, *, account_id: str, file_id: str, store: ObjectStore
) -> tuple[File, Iterator[bytes]]:
    """The file row and an iterator over its bytes (checked to exist before streaming)."""
    row = get_file(session, account_id=account_id, file_id=file_id)
    if not row.storage_key or store.head(row.storage_key) is None:
        raise NotFound(f"The content of file {file_id!r} is no longer available.",
                       param="file_id")
    return row, store.iter_chunks(row.storage_key)


# Built once (Core on the tables): every job creation looks up its files. The columns are
# what a job needs and what the 400s below report, plus the owner's plan, which admission
# needs next (read here, it costs no query of its own).
_files, _accounts = File.__table__, Account.__table__
_USABLE_FILE = (
    select(_files.c.id, _files.c.purpose, _files.c.status, _files.c.example_count,
           _files.c.token_counts, _files.c.token_lengths, _files.c.errors,
           _files.c.error_count,
           _accounts.c.plan.label("account_plan"))
    .join(_accounts, _accounts.c.id == _files.c.account_id)
    .where(_files.c.id == bindparam("b_id"), _files.c.account_id == bindparam("b_account_id"),
           _files.c.deleted_at.is_(None))
)


def require_usable_file(
    session: Session, *, account_id: str, file_id: str, param: str
) -> Row[Any]:
    """The account's file a job may train or validate on, as a row of `_USABLE_FILE`'s
    columns; 400 naming `param` otherwise (another tenant's file is simply not found)."""
    row = session.execute(
        _USABLE_FILE, {"b_id": file_id, "b_account_id": account_id}
    ).first() if is_id(file_id) else None
    if row is None:
        raise InvalidRequest(f"{param} {file_id!r} does not exist.", param=param,
                             code="file_not_found")
    if row.purpose != "fine-tune":
        raise InvalidRequest(f"{param} {file_id!r} was not uploaded with purpose=fine-tune.",
                             param=param, code="invalid_file_purpose")
    if row.status != USABLE_STATUS:
        lines = ", ".join(str(e.get("line")) for e in (row.errors or [])[:10])
        raise InvalidRequest(
            f"{param} {file_id!r} failed validation ({row.error_count} errors; lines {lines}).",
            param=param, code="invalid_training_file",
        )
    return row


FILE_FIELDS = ("training_file", "validation_file")
Spec = TypeVar("Spec", bound=BaseModel)


def with_file_ids(session: Session, *, account_id: str, spec: Spec) -> Spec:
    """`spec` (a job or run body) with each training/validation file given by filename
    replaced by the id of the caller's newest file of that name, in nested domains too. An id,
    or a name that matches none, is left as it is (the usual 400 then names it). So the
    OpenAPI example, which names the README's example files, works once they are uploaded."""
    update: dict[str, Any] = {}
    for name in FILE_FIELDS:
        value = getattr(spec, name, None)
        if isinstance(value, str) and not is_id(value):
            update[name] = _newest_named(session, account_id=account_id, filename=value) or value
    domains = getattr(spec, "domains", None)
    if isinstance(domains, list):
        update["domains"] = [with_file_ids(session, account_id=account_id, spec=d)
                             for d in domains]
    return spec.model_copy(update=update) if update else spec


def _newest_named(session: Session, *, account_id: str, filename: str) -> str | None:
    return session.scalar(
        select(File.id).where(File.account_id == account_id, File.filename == filename,
                              File.deleted_at.is_(None), File.status == USABLE_STATUS)
        .order_by(File.created_at.desc(), File.id.desc()).limit(1))
