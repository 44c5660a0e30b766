"""The dashboard: the static files of app/web served under /dashboard.

Plain files, no build step and no template: the pages call the same /v1 routes as any
client, with the API key the user typed (kept in the tab, sent as the bearer header). Every
response carries a strict Content-Security-Policy: scripts and styles only from this
origin, no inline script or style, so a string that slipped into the page unescaped still
could not run."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
PREFIX = "/dashboard"

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    # data: for inline SVG icons in CSS, blob: for images fetched with the bearer header.
    "img-src 'self' data: blob:",
    "connect-src 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "form-action 'self'",
])
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    # Revalidate every time (ETag): an upgraded server never runs yesterday's modules.
    "cache-control": "no-cache",
}


class DashboardFiles(StaticFiles):
    """StaticFiles with the security headers on every answer."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def mount_dashboard(app: FastAPI) -> None:
    """Serve app/web at /dashboard/ (a GET of /dashboard redirects there)."""
    app.mount(PREFIX, DashboardFiles(directory=WEB_DIR, html=True), name="dashboard")
