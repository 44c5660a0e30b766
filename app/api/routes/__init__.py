"""Every router, in the order main.py includes them. Append new routers to ALL_ROUTERS;
more specific paths must come before the routers whose `{id}` routes could shadow them
(e.g. POST /v1/fine_tuning/jobs/estimate before the jobs router)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.routes import billing, continual, estimates, files, health, jobs, models

ALL_ROUTERS: list[APIRouter] = [
    health.router,
    models.router,
    files.router,
    estimates.router,  # POST .../jobs/estimate, .../runs/estimate: before the {id} routes
    jobs.router,
    continual.router,
    billing.router,
]
