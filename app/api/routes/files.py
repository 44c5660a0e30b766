"""Files: upload (multipart, validated while streaming), list, retrieve, download, delete."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.orm import Session

from app.api.deps import PrincipalDep, ReadSessionDep, SessionDep, SettingsDep, StoreDep
from app.api.idempotent import IdempotencyKey, respond_idempotently
from app.api.presenters import file_public
from app.api.uploads import receive_upload
from app.db.transactions import ThreadTransactions
from app.schemas.common import AfterParam, error_responses
from app.schemas.files import FileDeleted, FileList, FilePublic
from app.services import files

router = APIRouter(prefix="/v1/files", tags=["files"])

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["purpose", "file"],
                    "properties": {
                        "purpose": {"type": "string", "enum": ["fine-tune"],
                                    "default": "fine-tune"},
                        "file": {"type": "string", "format": "binary",
                                 "description": "JSONL: one example per line, chat "
                                 '{"messages": [...]}, {"prompt", "completion"} or {"text"}.'},
                    },
                }
            }
        },
    }
}


@router.post(
    "", status_code=201, response_model=FilePublic, openapi_extra=_UPLOAD_BODY,
    responses=error_responses(400, 401, 413, 422, 503),
)
async def create_file(
    request: Request, principal: PrincipalDep, settings: SettingsDep, store: StoreDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Upload a JSONL training file (validated line by line; errors name the lines).

    The file is validated while it is received: strict UTF-8, one JSON object per line, one
    format for the whole file (chat `messages`, `prompt`/`completion`, or `text`), at most
    `max_line_bytes` per line and `max_upload_bytes` in all. A valid file is stored and
    returned with status `processed`, its format, example count and token estimates per
    model family. An invalid file is **not stored**: the answer is 400 with code
    `invalid_file`, the first problems (with line numbers) in `error.message`, and
    `error.errors` = the first 100 `{line, field, code, message}` plus `error.error_count`.
    So a stored file can always start a job. Too large: 413.
    """
    # Read only now (authentication ran first), and validated while it is received.
    async with receive_upload(
        request, checks=request.app.state.upload_checks, max_bytes=settings.max_upload_bytes,
        max_line_bytes=settings.max_line_bytes,
        model_store_dir=settings.resolved_model_store_dir,
    ) as upload:
        report = upload.report
        files.check_report(report, max_bytes=settings.max_upload_bytes)

        def create(session: Session) -> tuple[FilePublic, dict[str, str]]:
            row = files.create_file(session, account_id=principal.account_id, store=store,
                                    stream=upload.file, report=report,
                                    filename=upload.filename, purpose=upload.purpose)
            return file_public(row), {}

        # Storing the upload is blocking I/O, so this transaction runs in a worker thread
        # (not on the event loop, as job creation's does).
        in_thread = ThreadTransactions(settings.resolved_database_url, settings.db_timeout_s)
        return await respond_idempotently(
            request, transactions=in_thread, principal=principal,
            key=idempotency_key, create=create, location=lambda file_id: f"/v1/files/{file_id}",
            body={"purpose": upload.purpose, "filename": upload.filename,
                  "sha256": report.sha256},
        )


@router.get("", response_model=FileList, responses=error_responses(400, 401))
def list_files(
    principal: PrincipalDep, session: ReadSessionDep, after: AfterParam = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    purpose: Annotated[Literal["fine-tune"] | None,
                       Query(description="Only files with this purpose.")] = None,
) -> FileList:
    """List your files, newest first."""
    rows, has_more = files.list_files(session, account_id=principal.account_id, after=after,
                                      limit=limit, purpose=purpose)
    return FileList(data=[file_public(r) for r in rows], has_more=has_more)


@router.get("/{file_id}", response_model=FilePublic, responses=error_responses(401, 404))
def retrieve_file(file_id: str, principal: PrincipalDep, session: ReadSessionDep) -> FilePublic:
    """Retrieve a file's metadata and validation results."""
    return file_public(files.get_file(session, account_id=principal.account_id, file_id=file_id))


@router.get(
    "/{file_id}/content", response_class=StreamingResponse, response_model=None,
    responses={200: {"content": {"application/octet-stream": {}}}, **error_responses(401, 404)},
)
def download_file(
    file_id: str, principal: PrincipalDep, session: ReadSessionDep, store: StoreDep
) -> StreamingResponse:
    """Download the file's bytes (streamed)."""
    row, chunks = files.open_content(session, account_id=principal.account_id,
                                     file_id=file_id, store=store)
    return StreamingResponse(
        chunks, media_type="application/octet-stream",
        headers={"content-disposition": f'attachment; filename="{row.id}.jsonl"',
                 "content-length": str(row.bytes)},
    )


@router.delete("/{file_id}", response_model=FileDeleted, responses=error_responses(401, 404, 409))
def delete_file(
    file_id: str, principal: PrincipalDep, session: SessionDep, store: StoreDep
) -> FileDeleted:
    """Delete a file that no unfinished job uses."""
    row = files.delete_file(session, account_id=principal.account_id, file_id=file_id,
                            store=store)
    return FileDeleted(id=row.id)
