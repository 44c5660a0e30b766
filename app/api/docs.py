"""Swagger UI at /docs from this service's own files, and the OpenAPI document it reads.

Nothing on the page comes from another host: the swagger-ui-dist files are vendored under
app/web/vendor/swagger-ui-dist/ (version and licence there) and served at /docs/assets/;
Swagger UI's online validator badge (an image from validator.swagger.io) is turned off.
FastAPI's own /docs would load them from a CDN: a blank page on an offline installation.

The document served at /openapi.json is the committed one (openapi/openapi.json), except that
its examples name a base model this installation can train: `EXAMPLE_MODEL` when it is
installed, else the first available catalog model, so "Try it out -> Execute" on a prefilled
body works here. The examples' training files are the README's example files, referenced by
filename (app/services/files.py resolves a filename to the caller's newest such file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from app.schemas.common import EXAMPLE_MODEL
from app.services import models

SWAGGER_UI_DIR = Path(__file__).resolve().parents[1] / "web" / "vendor" / "swagger-ui-dist"
ASSETS_PATH = "/docs/assets"
OPENAPI_PATH = "/openapi.json"
SWAGGER_UI_PARAMETERS = {
    "persistAuthorization": True,
    "tryItOutEnabled": True,
    # The default shows a badge loaded from validator.swagger.io.
    "validatorUrl": None,
}


def install_docs(app: FastAPI) -> None:
    """/docs, its assets and /openapi.json (the app is built with FastAPI's own off)."""
    app.mount(ASSETS_PATH, StaticFiles(directory=SWAGGER_UI_DIR), name="swagger-ui")
    rendered: dict[str, bytes] = {}

    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + OPENAPI_PATH, title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon-32x32.png",
            oauth2_redirect_url=None, swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )

    def openapi(request: Request) -> Response:
        # Sync on purpose: availability may ask the object store (cached, but blocking).
        settings, store = request.app.state.settings, request.app.state.store
        model = example_model(models.list_models(
            model_store_dir=settings.resolved_model_store_dir, store=store,
            prices=settings.prices_micros_per_mtok))
        if model not in rendered:
            document = with_example_model(app.openapi(), model)
            rendered[model] = json.dumps(document, ensure_ascii=False).encode()
        return Response(rendered[model], media_type="application/json")

    app.add_api_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_api_route(OPENAPI_PATH, openapi, methods=["GET"], include_in_schema=False)


def example_model(offers: list[models.ModelOffer]) -> str:
    """The model the examples name: EXAMPLE_MODEL if available, else the first available
    one; EXAMPLE_MODEL when none is (the examples then fail with a clear model_unavailable)."""
    available = [offer.model.id for offer in offers if offer.available]
    if EXAMPLE_MODEL in available or not available:
        return EXAMPLE_MODEL
    return available[0]


def with_example_model(document: dict[str, Any], model: str) -> dict[str, Any]:
    """A copy of `document` whose example values EXAMPLE_MODEL read `model` instead."""
    if model == EXAMPLE_MODEL:
        return document

    def rewrite(node: Any, in_example: bool) -> Any:
        if isinstance(node, dict):
            return {k: rewrite(v, in_example or k in ("example", "examples"))
                    for k, v in node.items()}
        if isinstance(node, list):
            return [rewrite(v, in_example) for v in node]
        return model if in_example and node == EXAMPLE_MODEL else node

    return rewrite(document, False)
