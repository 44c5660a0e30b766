"""Every router, in the order main.py includes them. More specific paths must come before the
routers whose `{id}` routes could shadow them (e.g. POST /v1/fine_tuning/jobs/estimate before
the jobs router). Otherwise the most requested first: FastAPI tries the routers in order on
every request, and each router it passes costs CPU (the jobs router serves the status polls)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.routes import (
    billing,
    continual,
    estimates,
    exports,
    files,
    health,
    inference,
    jobs,
    models,
    webhooks,
)

ALL_ROUTERS: list[APIRouter] = [
    estimates.router,  # POST .../jobs/estimate, .../runs/estimate: before the {id} routes
    jobs.router,
    inference.router,
    exports.router,
    continual.router,
    files.router,
    billing.router,
    models.router,
    webhooks.router,
    health.router,
]
