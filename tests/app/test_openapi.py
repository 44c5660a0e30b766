"""The committed openapi/openapi.json is what the app generates (regenerate with
`python -m crma_cli.main openapi > openapi/openapi.json`), and the document is usable from
Swagger alone: every route listed, summaries, Bearer auth, operation ids `{tag}-{name}`."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fastapi.routing import iter_route_contexts

from crma_cli.dev import openapi_document, render_openapi

ROOT = Path(__file__).resolve().parents[2]
DOCS_ROUTES = {"/openapi.json", "/docs", "/docs/assets"}


def test_committed_document_matches_the_app() -> None:
    committed = (ROOT / "openapi" / "openapi.json").read_text()
    assert committed == render_openapi(), (
        "openapi/openapi.json is stale: run `python -m crma_cli.main openapi > "
        "openapi/openapi.json`")


def test_every_route_is_documented() -> None:
    from app.main import create_app

    app = create_app(store=object())  # type: ignore[arg-type]
    documented = {(path, method.upper()) for path, ops in app.openapi()["paths"].items()
                  for method in ops}
    for context in iter_route_contexts(app.router.routes):
        path = re.sub(r":\w+}", "}", context.path)
        if path in DOCS_ROUTES:
            continue
        for method in set(context.methods or ()) - {"HEAD"}:
            assert (path, method) in documented, (method, path)


def test_operations_are_self_explanatory() -> None:
    document = openapi_document()
    assert document["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["HTTPBearer"]["description"]}
    seen = set()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            tag = operation["tags"][0]
            assert re.fullmatch(rf"{re.escape(tag)}-[a-z_]+", operation["operationId"])
            assert operation["operationId"] not in seen
            seen.add(operation["operationId"])
            assert operation.get("summary") and not operation["summary"][0].islower(), path
            if path.startswith("/v1/"):
                assert operation.get("security") == [{"HTTPBearer": []}], path
                assert "401" in operation["responses"], path
            for code, response in operation["responses"].items():
                if code.startswith(("4", "5")) and "content" in response:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema.get("$ref", "").endswith(("ErrorResponse", "Readiness")), (
                        path, code)
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    for name in ("JobCreate", "ContinualRunCreate", "HyperparametersIn", "AdapterIn",
                 "DomainIn", "DomainsAppend"):
        assert schemas[name]["additionalProperties"] is False, name
    assert schemas["JobCreate"]["examples"][0]["model"] == "smollm2-135m-instruct"
    upload = document["paths"]["/v1/files"]["post"]["requestBody"]["content"]
    assert upload["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"


def test_swagger_ui_is_served() -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(store=object())) as client:  # type: ignore[arg-type]
        page = client.get("/docs")
        assert page.status_code == 200 and "swagger-ui" in page.text
        assert json.loads(client.get("/openapi.json").text)["info"]["title"]
