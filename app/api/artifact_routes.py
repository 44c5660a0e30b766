"""The artifact routes of an owner (a fine-tuning job, a continual run): list the published
files with their download URLs, and download one (a redirect to S3, or streamed). Written
once; each router adds them for its own owner.

No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations, and
`OwnerId` is local to `add_artifact_routes`."""

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import RedirectResponse, StreamingResponse
from sqlalchemy.orm import Session

from app.api.deps import PrincipalDep, ReadSessionDep, SettingsDep, StoreDep
from app.api.downloads import artifact_response
from app.schemas.common import error_responses
from app.schemas.jobs import ArtifactList, ArtifactPublic
from app.services import artifacts

# (session, account_id, the id in the path) -> the owner's id, or NotFound
OwnerLookup = Callable[[Session, str, str], str]


def add_artifact_routes(
    router: APIRouter, *, id_param: str, owner: OwnerLookup, list_doc: str, download_doc: str,
) -> None:
    """GET {router prefix}/{id_param}/artifacts and .../artifacts/{name}."""
    OwnerId = Annotated[str, Path(alias=id_param)]

    def list_artifacts(
        owner_ref: OwnerId, principal: PrincipalDep, session: ReadSessionDep,
        settings: SettingsDep, store: StoreDep,
    ) -> ArtifactList:
        owner_id = owner(session, principal.account_id, owner_ref)
        rows = artifacts.list_artifacts(session, account_id=principal.account_id,
                                        owner_id=owner_id)
        links = artifacts.links(store, rows, api_path=f"{router.prefix}/{owner_id}/artifacts",
                                ttl_s=settings.presign_ttl_s)
        return ArtifactList(data=[ArtifactPublic(**vars(link)) for link in links])

    def download_artifact(
        owner_ref: OwnerId, name: str, principal: PrincipalDep, session: ReadSessionDep,
        settings: SettingsDep, store: StoreDep,
    ) -> StreamingResponse | RedirectResponse:
        owner_id = owner(session, principal.account_id, owner_ref)
        row = artifacts.get_artifact(session, account_id=principal.account_id,
                                     owner_id=owner_id, name=name)
        return artifact_response(store, row, ttl_s=settings.presign_ttl_s)

    list_artifacts.__doc__, download_artifact.__doc__ = list_doc, download_doc
    router.add_api_route(f"/{{{id_param}}}/artifacts", list_artifacts, methods=["GET"],
                         response_model=ArtifactList, responses=error_responses(401, 404))
    router.add_api_route(
        f"/{{{id_param}}}/artifacts/{{name:path}}", download_artifact, methods=["GET"],
        response_class=StreamingResponse, response_model=None,
        responses={200: {"content": {"application/octet-stream": {}}},
                   307: {"description": "Redirect to a presigned download URL (S3)"},
                   **error_responses(401, 404)},
    )
