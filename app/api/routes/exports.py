"""Merged-weights exports of a fine-tuning job: create (built by a worker), list, retrieve
with the folder's files, download a file."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from sqlalchemy.orm import Session

from app.api.deps import PrincipalDep, ReadSessionDep, SettingsDep, StoreDep
from app.api.downloads import artifact_response
from app.api.idempotent import IdempotencyKey, respond_idempotently
from app.api.presenters import unix
from app.db.models import ModelExport
from app.domain.pricing import format_usd
from app.schemas.common import AfterParam, LimitParam, error_responses
from app.schemas.exports import ExportCreate, ExportList, ExportPublic
from app.schemas.jobs import ArtifactPublic, JobErrorPublic
from app.services import artifacts, exports
from app.settings import Settings
from app.storage.base import ObjectStore

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])


def export_public(session: Session, export: ModelExport, *, store: ObjectStore,
                  settings: Settings) -> ExportPublic:
    files = []
    if export.status == "succeeded":
        rows = exports.export_files(session, account_id=export.account_id, export_id=export.id)
        files = [ArtifactPublic(**vars(link)) for link in artifacts.links(
            store, rows, api_path=f"{router.prefix}/{export.job_id}/exports/{export.id}/files",
            ttl_s=settings.presign_ttl_s)]
    return ExportPublic(
        id=export.id, job_id=export.job_id, format=export.format, dtype=export.dtype,
        status=export.status, error=JobErrorPublic(**export.error) if export.error else None,
        price=format_usd(export.price_micros), cost=format_usd(export.cost_micros),
        bytes=export.bytes, created_at=unix(export.created_at),
        finished_at=unix(export.finished_at), files=files)


@router.post("/{job_id}/exports", status_code=201, response_model=ExportPublic,
             responses=error_responses(400, 401, 402, 404, 409, 422, 429))
async def create_export(job_id: str, request: Request, principal: PrincipalDep,
                        body: ExportCreate | None = None,
                        idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Export the job's weights as one model folder, the LoRA merged into the base.

    A worker builds it; poll the export until `succeeded`. Without a body: `merged`,
    `bfloat16`. The same format and dtype again return the same export (200) unless it
    failed."""
    state = request.app.state
    body = body or ExportCreate()
    created_flag: list[bool] = []

    def create(session: Session) -> tuple[ExportPublic, dict[str, str]]:
        export, created = exports.create_export(
            session, account_id=principal.account_id, job_id=job_id, format=body.format,
            dtype=body.dtype, settings=state.settings)
        created_flag.append(created)
        return export_public(session, export, store=state.store, settings=state.settings), {}

    response = await respond_idempotently(
        request, transactions=state.transactions, principal=principal, key=idempotency_key,
        body={"job_id": job_id, **body.model_dump(mode="json")}, create=create,
        location=lambda export_id: f"{router.prefix}/{job_id}/exports/{export_id}")
    if created_flag == [False]:
        response.status_code = 200
    return response


@router.get("/{job_id}/exports", response_model=ExportList,
            responses=error_responses(400, 401, 404))
def list_exports(job_id: str, principal: PrincipalDep, session: ReadSessionDep,
                 settings: SettingsDep, store: StoreDep, after: AfterParam = None,
                 limit: LimitParam = 20) -> ExportList:
    """The job's exports, newest first."""
    rows, has_more = exports.list_exports(session, account_id=principal.account_id,
                                          job_id=job_id, after=after, limit=limit)
    return ExportList(data=[export_public(session, e, store=store, settings=settings)
                            for e in rows], has_more=has_more)


@router.get("/{job_id}/exports/{export_id}", response_model=ExportPublic,
            responses=error_responses(401, 404))
def retrieve_export(job_id: str, export_id: str, principal: PrincipalDep,
                    session: ReadSessionDep, settings: SettingsDep,
                    store: StoreDep) -> ExportPublic:
    """One export: status, and once succeeded its files with sha256 and download URLs."""
    export = exports.get_export(session, account_id=principal.account_id, job_id=job_id,
                                export_id=export_id)
    return export_public(session, export, store=store, settings=settings)


@router.get("/{job_id}/exports/{export_id}/files/{name:path}",
            response_class=StreamingResponse, response_model=None,
            responses={200: {"content": {"application/octet-stream": {}}},
                       307: {"description": "Redirect to a presigned download URL (S3)"},
                       **error_responses(401, 404)})
def download_export_file(job_id: str, export_id: str, name: str, principal: PrincipalDep,
                         session: ReadSessionDep, settings: SettingsDep,
                         store: StoreDep) -> StreamingResponse | RedirectResponse:
    """Download one file of the exported folder (a redirect to S3, or streamed)."""
    export = exports.get_export(session, account_id=principal.account_id, job_id=job_id,
                                export_id=export_id)
    row = artifacts.get_artifact(session, account_id=principal.account_id, owner_id=export.id,
                                 name=name)
    return artifact_response(store, row, ttl_s=settings.presign_ttl_s)
