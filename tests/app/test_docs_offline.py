"""/docs works with no network: the page and everything it references come from this service
(swagger-ui-dist vendored with its licence), and the prefilled examples validate against their
own schemas and succeed on the installation serving them ("Try it out -> Execute")."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from app.api.docs import SWAGGER_UI_DIR
from app.schemas.common import EXAMPLE_MODEL
from app.settings import Settings
from tests.app.helpers import Tenant, make_settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
ORIGIN = "http://testserver"


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href", "action") and v]
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.scripts.append(data)


def _same_origin(url: str) -> bool:
    return urlsplit(urljoin(ORIGIN + "/docs", url)).netloc == urlsplit(ORIGIN).netloc


@pytest.fixture
def docs_client(tmp_path: Path) -> TestClient:
    from app.main import create_app

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'docs.sqlite'}")
    return TestClient(create_app(settings))


def test_docs_reference_nothing_on_another_host(docs_client: TestClient) -> None:
    page = docs_client.get("/docs")
    assert page.status_code == 200
    parsed = _References()
    parsed.feed(page.text)
    assert parsed.urls, "the page references no assets"
    assert [u for u in parsed.urls if not _same_origin(u)] == []
    # The inline script: the spec URL is ours and the validator badge (an image loaded from
    # validator.swagger.io by default) is off.
    script = "\n".join(parsed.scripts)
    config_urls = re.findall(r"""url:\s*['"]([^'"]+)""", script)
    assert config_urls == ["/openapi.json"]
    assert '"validatorUrl": null' in script
    assert not re.search(r"(https?:)?//[\w.-]+\.\w+", script)
    for url in parsed.urls:
        asset = docs_client.get(url)
        assert asset.status_code == 200, url
    css = docs_client.get("/docs/assets/swagger-ui.css").text
    assert "@import" not in css
    css_urls = re.findall(r"url\(\s*['\"]?([^'\")]+)", css)
    assert css_urls and all(u.startswith("data:") or _same_origin(u) for u in css_urls)
    bundle = docs_client.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.headers["content-type"].startswith(("text/javascript",
                                                      "application/javascript"))
    assert bundle.content == (SWAGGER_UI_DIR / "swagger-ui-bundle.js").read_bytes()
    assert docs_client.get("/redoc").status_code == 404  # FastAPI's would load a CDN


def test_vendored_swagger_ui_carries_its_licence_and_version() -> None:
    package = json.loads((SWAGGER_UI_DIR / "package.json").read_text())
    assert package["name"] == "swagger-ui-dist" and package["license"] == "Apache-2.0"
    assert "Apache License" in (SWAGGER_UI_DIR / "LICENSE").read_text()
    assert (SWAGGER_UI_DIR / "swagger-ui-bundle.js.LICENSE.txt").is_file()
    note = (SWAGGER_UI_DIR / "VENDORED.md").read_text()
    assert note.startswith(f"# swagger-ui-dist {package['version']}\n")


def _schema_nodes(node: Any, pointer: str = "") -> list[tuple[str, Any]]:
    """(JSON pointer, example) for every `examples` list of a schema in the document."""
    found = []
    if isinstance(node, dict):
        examples = node.get("examples")
        if isinstance(examples, list) and any(k in node for k in (
                "type", "$ref", "anyOf", "oneOf", "allOf", "properties", "const", "enum")):
            found += [(pointer, example) for example in examples]
        for key, value in node.items():
            found += _schema_nodes(value, f"{pointer}/{key.replace('~', '~0').replace('/', '~1')}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _schema_nodes(value, f"{pointer}/{i}")
    return found


def test_every_example_validates_against_its_own_schema() -> None:
    document = json.loads((ROOT / "openapi" / "openapi.json").read_text())
    registry = Registry().with_resource("urn:openapi", Resource.opaque(document))
    examples = _schema_nodes(document)
    assert len(examples) >= 10
    pointers = {p for p, _ in examples}
    assert "/components/schemas/JobCreate" in pointers
    assert "/components/schemas/ContinualRunCreate" in pointers
    failures = []
    for pointer, example in examples:
        validator = Draft202012Validator({"$ref": f"urn:openapi#{pointer}"}, registry=registry)
        failures += [(pointer, example, e.message) for e in validator.iter_errors(example)]
    assert failures == []


def _upload_examples(client: TestClient, tenant: Tenant, *names: str) -> dict[str, str]:
    ids = {}
    for name in names:
        path = EXAMPLES / name
        response = client.post("/v1/files", headers=tenant.headers, data={"purpose": "fine-tune"},
                               files={"file": (path.name, path.read_bytes(), "application/jsonl")})
        assert response.status_code == 201, response.text
        ids[path.name] = response.json()["id"]
    return ids


def _example(client: TestClient, schema: str) -> dict:
    document = client.get("/openapi.json").json()
    return document["components"]["schemas"][schema]["examples"][0]


@pytest.mark.integration
def test_the_prefilled_job_example_executes_after_uploading_the_readme_files(
        client: TestClient, tenant: Tenant) -> None:
    example = _example(client, "JobCreate")
    # Before the files exist, the example fails with a 400 that names the missing file.
    missing = client.post("/v1/fine_tuning/jobs", headers=tenant.headers, json=example)
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "training_file"
    ids = _upload_examples(client, tenant, "capitals_train.jsonl", "capitals_valid.jsonl")
    estimate = client.post("/v1/fine_tuning/jobs/estimate", headers=tenant.headers, json=example)
    assert estimate.status_code == 200, estimate.text
    created = client.post("/v1/fine_tuning/jobs", headers=tenant.headers, json=example)
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["model"] == EXAMPLE_MODEL
    assert job["training_file"] == ids["capitals_train.jsonl"]
    assert job["validation_file"] == ids["capitals_valid.jsonl"]


@pytest.mark.integration
def test_the_prefilled_continual_example_executes_after_uploading_its_files(
        client: TestClient, tenant: Tenant) -> None:
    example = _example(client, "ContinualRunCreate")
    names = [f"continual/{d[k]}" for d in example["domains"]
             for k in ("training_file", "validation_file")]
    ids = _upload_examples(client, tenant, *names)
    assert client.post("/v1/continual/runs/estimate", headers=tenant.headers,
                       json=example).status_code == 200
    created = client.post("/v1/continual/runs", headers=tenant.headers, json=example)
    assert created.status_code == 201, created.text
    stages = created.json()["stages"]
    assert [s["training_file"] for s in stages] == [
        ids[d["training_file"]] for d in example["domains"]]


@pytest.mark.integration
def test_a_filename_names_the_callers_newest_processed_file_only(
        client: TestClient, tenant: Tenant, other_tenant: Tenant) -> None:
    body = {"model": EXAMPLE_MODEL, "training_file": "capitals_train.jsonl"}
    theirs = _upload_examples(client, other_tenant, "capitals_train.jsonl")
    mine = client.post("/v1/fine_tuning/jobs/estimate", headers=tenant.headers, json=body)
    assert mine.status_code == 400  # another tenant's file of that name is not found
    assert "capitals_train.jsonl" in mine.json()["error"]["message"]
    older = _upload_examples(client, tenant, "capitals_train.jsonl")
    newer = _upload_examples(client, tenant, "capitals_train.jsonl")
    created = client.post("/v1/fine_tuning/jobs", headers=tenant.headers, json=body)
    assert created.json()["training_file"] == newer["capitals_train.jsonl"]
    assert created.json()["training_file"] not in (older["capitals_train.jsonl"],
                                                   theirs["capitals_train.jsonl"])
    # By id, as before.
    by_id = client.post("/v1/fine_tuning/jobs", headers=tenant.headers,
                        json={**body, "training_file": older["capitals_train.jsonl"]})
    assert by_id.json()["training_file"] == older["capitals_train.jsonl"]


def _install_marker(settings: Settings, model_id: str) -> None:
    directory = settings.resolved_model_store_dir / model_id
    directory.mkdir(parents=True)
    (directory / "store.json").write_text("{}")  # what makes a model "installed"


@pytest.mark.parametrize(("installed", "named"), [
    ([], EXAMPLE_MODEL),
    (["tinyllama-1.1b-chat"], "tinyllama-1.1b-chat"),
    (["tinyllama-1.1b-chat", EXAMPLE_MODEL], EXAMPLE_MODEL),
])
def test_served_examples_name_a_model_this_installation_has(
        tmp_path: Path, installed: list[str], named: str) -> None:
    from app.main import create_app

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'docs.sqlite'}")
    for model_id in installed:
        _install_marker(settings, model_id)
    with TestClient(create_app(settings)) as client:
        document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert schemas["JobCreate"]["examples"][0]["model"] == named
    assert schemas["ContinualRunCreate"]["examples"][0]["model"] == named
    assert schemas["JobCreate"]["properties"]["model"]["examples"] == [named]
    if named != EXAMPLE_MODEL:
        assert EXAMPLE_MODEL not in json.dumps(schemas["JobCreate"])
