"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.api.deps import SettingsDep, StoreDep
from app.services.health import readiness

router = APIRouter(tags=["ops"])

READY_RETRY_AFTER_S = 5


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up (no dependency is checked)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "A dependency is unreachable, "
                             "or no live worker consumes a training queue (`checks` says which "
                             "and why)"}})
def readyz(settings: SettingsDep, store: StoreDep) -> JSONResponse:
    """The service can run a job end to end: database, broker and object storage reachable,
    and a live worker consuming each training queue (`small`, `large`)."""
    checks = readiness(settings, store)
    ready = all(v == "ok" for v in checks.values())
    body = Readiness(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503,
                        headers={} if ready else {"Retry-After": str(READY_RETRY_AFTER_S)})
