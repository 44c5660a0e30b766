"""Fine-tuning jobs (OpenAI-compatible): create, list, retrieve, cancel, events (JSON or
server-sent events), checkpoints and the trained adapter's files."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse
from starlette.types import Scope

from app.api.deps import (
    PrincipalDep,
    ReadSessionDep,
    SessionDep,
    SettingsDep,
    open_read_session,
)
from app.api.artifact_routes import add_artifact_routes
from app.api.direct_routes import DirectRoute, cursor, page_limit
from app.api.idempotent import IdempotencyKey, respond_idempotently
from app.api.presenters import checkpoint_public, event_public, job_public, json_response
from app.db.reader import Reader
from app.schemas.common import AfterParam, error_responses
from app.schemas.jobs import (
    CheckpointList,
    EventList,
    JobCreate,
    JobList,
    JobPublic,
)
from app.services import checkpoints, event_stream, files, job_creation, job_reads, jobs
from app.services.quotas import quota_headers

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])

Limit = Annotated[int, Query(ge=1, le=100, description="Page size (1-100).")]


@router.post(
    "", status_code=201, response_model=JobPublic,
    responses=error_responses(400, 401, 402, 409, 422, 429, 503),
)
async def create_job(
    body: JobCreate, request: Request, principal: PrincipalDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Create a fine-tuning job from an uploaded training file."""
    state = request.app.state

    def create(session: Session) -> tuple[JobPublic, dict[str, str]]:
        spec = files.with_file_ids(session, account_id=principal.account_id, spec=body)
        job, admitted = job_creation.create_job(session, account_id=principal.account_id,
                                                spec=spec, settings=state.settings)
        public = job_public(job, throughput=state.settings.throughput_tokens_per_s)
        return public, quota_headers(admitted.quota)

    return await respond_idempotently(
        request, transactions=state.transactions, principal=principal, key=idempotency_key,
        body=body.model_dump(mode="json"), create=create,
        location=lambda job_id: f"/v1/fine_tuning/jobs/{job_id}",
    )


# The three routes a client polls are `async` and read through the async Reader
# (app/db/reader.py): no worker-thread hop, no ORM; see docs/benchmarks.md, API load.
def _hot_read_state(request: Request) -> tuple[Reader, dict[str, int]]:
    """The reader and the throughput table (for estimated_finish), from the app state:
    not dependencies, which cost FastAPI ~0.05 ms of CPU each per request."""
    state = request.app.state
    return state.reader, state.settings.throughput_tokens_per_s


@router.get("", response_model=JobList, responses=error_responses(400, 401))
async def list_jobs(
    request: Request, principal: PrincipalDep, after: AfterParam = None, limit: Limit = 20,
) -> Response:
    """List your fine-tuning jobs, newest first."""
    reader, throughput = _hot_read_state(request)
    rows, has_more = await job_reads.list_jobs(reader, account_id=principal.account_id,
                                               after=after, limit=limit)
    return json_response(JobList(data=[job_public(j, throughput=throughput) for j in rows],
                                 has_more=has_more))


@router.get("/{job_id}", response_model=JobPublic, responses=error_responses(401, 404))
async def retrieve_job(job_id: str, request: Request, principal: PrincipalDep) -> Response:
    """Retrieve a job: status, progress, cost."""
    reader, throughput = _hot_read_state(request)
    job = await job_reads.get_job(reader, account_id=principal.account_id, job_id=job_id)
    return json_response(job_public(job, throughput=throughput))


def direct_routes() -> list[DirectRoute]:
    """The polled routes above, dispatched without FastAPI's dependency solving when a
    request needs none of its validation (app/api/direct_routes.py); main.py puts them in
    front of this router."""
    polled = {route.name: route for route in router.routes if route.name in (
        "retrieve_job", "list_jobs", "list_events")}
    page = {"after": cursor, "limit": page_limit}
    return [
        DirectRoute(polled["retrieve_job"]),
        DirectRoute(polled["list_jobs"], query=page),
        DirectRoute(polled["list_events"], query=page, declines=_streams_or_resumes),
    ]


def _streams_or_resumes(scope: Scope) -> bool:
    """Event requests for the live stream (or resuming one) go through FastAPI."""
    for name, value in scope["headers"]:
        if name == b"last-event-id" or (name == b"accept" and b"text/event-stream" in value):
            return True
    return False


@router.post("/{job_id}/cancel", response_model=JobPublic,
             responses=error_responses(401, 404, 409))
def cancel_job(
    job_id: str, principal: PrincipalDep, session: SessionDep, settings: SettingsDep
) -> JobPublic:
    """Cancel a job: a queued job at once, a running one within a heartbeat."""
    job = jobs.cancel_job(session, account_id=principal.account_id, job_id=job_id,
                          settings=settings)
    return job_public(job, throughput=settings.throughput_tokens_per_s)


@router.get(
    "/{job_id}/events", response_model=EventList,
    responses={200: {"content": {"text/event-stream": {}}}, **error_responses(400, 401, 404)},
)
async def list_events(
    job_id: str, request: Request, principal: PrincipalDep,
    after: AfterParam = None, limit: Limit = 20,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
    last_event_id: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """Job events, newest first; with `Accept: text/event-stream`, a live stream."""
    reader, _ = _hot_read_state(request)
    job = await job_reads.get_job(reader, account_id=principal.account_id, job_id=job_id)
    cursor = after or last_event_id
    seq = None
    if cursor is not None:
        seq = await job_reads.event_seq(reader, job_id=job.id, event_id=cursor)
    if accept and "text/event-stream" in accept:
        stream = event_stream.follow(
            session_factory=lambda: open_read_session(request.app.state.settings),
            job_id=job.id,
            after_seq=seq if last_event_id else None,
            render=lambda e: {"id": e.id, "event": "fine_tuning.job.event",
                              "data": event_public(e).model_dump_json()},
        )
        return EventSourceResponse(stream, ping=15)
    rows, has_more = await job_reads.list_events(reader, job_id=job.id, before_seq=seq,
                                                 limit=limit)
    return json_response(EventList(data=[event_public(e) for e in rows], has_more=has_more))


@router.get("/{job_id}/checkpoints", response_model=CheckpointList,
            responses=error_responses(400, 401, 404))
def list_checkpoints(
    job_id: str, principal: PrincipalDep, session: ReadSessionDep,
    after: AfterParam = None, limit: Limit = 10,
) -> CheckpointList:
    """Checkpoints saved during training, latest step first.

    Each carries OpenAI's metrics object; `best` marks the one with the lowest validation
    loss."""
    job = jobs.get_job(session, account_id=principal.account_id, job_id=job_id)
    rows, has_more = checkpoints.list_checkpoints(session, job_id=job.id, after=after,
                                                  limit=limit)
    best = checkpoints.best_step(session, job_id=job.id)
    data = [checkpoint_public(c, job, best_step=best) for c in rows]
    return CheckpointList(data=data, has_more=has_more,
                          first_id=data[0].id if data else None,
                          last_id=data[-1].id if data else None)


add_artifact_routes(
    router, id_param="job_id",
    owner=lambda session, account_id, job_id: jobs.get_job(
        session, account_id=account_id, job_id=job_id).id,
    list_doc="The trained adapter's files, each with a download URL.",
    download_doc="Download one adapter file (a redirect to S3, or streamed).",
)
