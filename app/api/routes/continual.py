"""Continual-learning runs: domains trained in order, drift measured on each holdout."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from app.api.artifact_routes import add_artifact_routes
from app.api.deps import PrincipalDep, ReadSessionDep, SessionDep, SettingsDep
from app.api.idempotent import IdempotencyKey, respond_idempotently
from app.api.presenters import run_public
from app.schemas.common import AfterParam, error_responses
from app.schemas.continual import (
    ContinualRunCreate,
    ContinualRunList,
    ContinualRunPublic,
    DomainsAppend,
)
from app.services import continual_runs, files
from app.services.quotas import quota_headers

router = APIRouter(prefix="/v1/continual/runs", tags=["continual"])


@router.post("", status_code=201, response_model=ContinualRunPublic,
             responses=error_responses(400, 401, 402, 409, 422, 429, 503))
async def create_run(
    body: ContinualRunCreate, request: Request, principal: PrincipalDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Start a continual run: one stage per domain, trained in order."""

    def create(session: Session) -> tuple[ContinualRunPublic, dict[str, str]]:
        spec = files.with_file_ids(session, account_id=principal.account_id, spec=body)
        view, admitted = continual_runs.create_run(session, account_id=principal.account_id,
                                                   spec=spec, settings=request.app.state.settings)
        return run_public(view), quota_headers(admitted.quota if admitted else None)

    return await respond_idempotently(
        request, transactions=request.app.state.transactions, principal=principal,
        key=idempotency_key,
        body=body.model_dump(mode="json"), create=create,
        location=lambda run_id: f"/v1/continual/runs/{run_id}",
    )


@router.post("/{run_id}/domains", status_code=201, response_model=ContinualRunPublic,
             responses=error_responses(400, 401, 402, 404, 409, 422, 429))
async def append_domains(
    run_id: str, body: DomainsAppend, request: Request, principal: PrincipalDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Add domains to a run whose stages all succeeded."""

    def create(session: Session) -> tuple[ContinualRunPublic, dict[str, str]]:
        spec = files.with_file_ids(session, account_id=principal.account_id, spec=body)
        view, admitted = continual_runs.append_domains(
            session, account_id=principal.account_id, run_id=run_id, domains=spec.domains,
            settings=request.app.state.settings)
        return run_public(view), quota_headers(admitted.quota if admitted else None)

    return await respond_idempotently(
        request, transactions=request.app.state.transactions, principal=principal,
        key=idempotency_key,
        body=body.model_dump(mode="json"), create=create,
    )


@router.get("", response_model=ContinualRunList, responses=error_responses(400, 401))
def list_runs(
    principal: PrincipalDep, session: ReadSessionDep, after: AfterParam = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ContinualRunList:
    """List your continual runs, newest first."""
    views, has_more = continual_runs.list_runs(session, account_id=principal.account_id,
                                               after=after, limit=limit)
    return ContinualRunList(data=[run_public(v) for v in views], has_more=has_more)


@router.get("/{run_id}", response_model=ContinualRunPublic, responses=error_responses(401, 404))
def retrieve_run(
    run_id: str, principal: PrincipalDep, session: ReadSessionDep
) -> ContinualRunPublic:
    """Retrieve a run: stages, status and the drift report."""
    return run_public(continual_runs.load_run(session, account_id=principal.account_id,
                                              run_id=run_id))


@router.post("/{run_id}/cancel", response_model=ContinualRunPublic,
             responses=error_responses(401, 404, 409))
def cancel_run(
    run_id: str, principal: PrincipalDep, session: SessionDep, settings: SettingsDep
) -> ContinualRunPublic:
    """Cancel every unfinished stage of a run."""
    return run_public(continual_runs.cancel_run(session, account_id=principal.account_id,
                                                run_id=run_id, settings=settings))


add_artifact_routes(
    router, id_param="run_id",
    owner=lambda session, account_id, run_id: continual_runs.load_run(
        session, account_id=account_id, run_id=run_id).run.id,
    list_doc="The run's published files (adapters, drift report), each with a download URL.",
    download_doc="Download one of the run's files (a redirect to S3, or streamed).",
)
