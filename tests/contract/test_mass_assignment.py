"""Mass assignment (OWASP API3): request bodies reject unknown fields. Every JSON request
body in openapi/openapi.json (operations enumerated from the document, so new ones are
covered) gets server-owned fields such as `status`, `account_id`, `trained_tokens` and cost
injected at the top level and into nested objects: always a 422 naming the field (a 400 on
the OpenAI-shaped inference routes, as OpenAI answers an unrecognized argument), and nothing
is created, held or charged. Every object schema a request body reaches is closed
(`additionalProperties: false`), except free-form `metadata` maps of strings and OpenAI's
`logit_bias` map of numbers."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db.models import ContinualRun, Job, LedgerTransaction
from app.db.session import session_scope
from tests.app.helpers import Tenant

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = json.loads((ROOT / "openapi" / "openapi.json").read_text())
SERVER_OWNED = {
    "status": "succeeded", "account_id": "acct-AAAAAAAAAAAAAAAAAAAAAAAA",
    "organization_id": "acct-AAAAAAAAAAAAAAAAAAAAAAAA", "trained_tokens": 10**9,
    "cost": "0.00", "cost_micros": 0, "hold_micros": 0, "id": "ftjob-mine",
    "attempt": 99, "created_at": 0, "finished_at": 0, "error": None,
    "fine_tuned_model": "x", "lease_owner": "me", "plan": "pro", "price_micros": 0,
}
# The inference routes' schemas carry no examples: a valid body to inject into. OpenAI's
# shape answers a bad argument with 400, not FastAPI's 422.
INFERENCE_BODIES = {
    "/v1/chat/completions": {"model": "smollm2-135m-instruct",
                             "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": "smollm2-135m-instruct", "prompt": "hi"},
}
# Free-form maps and the type their values must have.
TYPED_MAPS = {".metadata": "string", ".logit_bias": "number"}


def _resolve(schema: dict) -> dict:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = DOCUMENT["components"]["schemas"][name]
    return schema


def json_body_operations() -> list[tuple[str, str, dict]]:
    found = []
    for path, operations in DOCUMENT["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                found.append((method.upper(), path, _resolve(content["application/json"]["schema"])))
    return found


def _objects(schema: dict, where: str, seen: set[str]):  # noqa: ANN202
    """Every object schema reachable from `schema` (through $ref, anyOf, items, properties)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        if name in seen:
            return
        seen.add(name)
        yield from _objects(_resolve(schema), f"{where}->{name}", seen)
        return
    for key in ("anyOf", "oneOf", "allOf"):
        for i, option in enumerate(schema.get(key, [])):
            yield from _objects(option, f"{where}.{key}[{i}]", seen)
    if "items" in schema and schema.get("maxItems") != 0:  # an array that must stay empty
        yield from _objects(schema["items"], f"{where}[]", seen)
    if schema.get("type") == "object" or "properties" in schema:
        yield where, schema
        for name, sub in schema.get("properties", {}).items():
            yield from _objects(sub, f"{where}.{name}", seen)


def test_every_request_object_is_closed() -> None:
    operations = json_body_operations()
    assert len(operations) >= 5
    for method, path, schema in operations:
        for where, obj in _objects(schema, f"{method} {path}", set()):
            typed = next((t for name, t in TYPED_MAPS.items() if name in where), None)
            if typed is not None:  # a free-form map: values of one scalar type only
                assert obj["additionalProperties"].get("type") == typed, where
                continue
            assert obj.get("additionalProperties") is False, where


def _example(schema: dict) -> dict:
    examples = schema.get("examples") or []
    if examples:
        return copy.deepcopy(examples[0])
    return {}


def _nested_targets(body: dict) -> list[tuple[str, dict]]:
    """(param path prefix, the dict to inject into) for the body and its nested objects."""
    targets = [("", body)]
    for key in ("hyperparameters", "adapter"):
        if isinstance(body.get(key), dict):
            targets.append((f"{key}.", body[key]))
    if isinstance(body.get("domains"), list) and body["domains"]:
        targets.append(("domains[0].", body["domains"][0]))
    return targets


def _state(pg_url: str, account_id: str) -> tuple[int, int, int]:
    with session_scope(pg_url) as session:
        return (
            session.scalar(select(func.count()).select_from(Job).where(
                Job.account_id == account_id)),
            session.scalar(select(func.count()).select_from(ContinualRun).where(
                ContinualRun.account_id == account_id)),
            session.scalar(select(func.count()).select_from(LedgerTransaction).where(
                LedgerTransaction.account_id == account_id)),
        )


@pytest.mark.parametrize(("method", "path", "schema"), json_body_operations(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_server_owned_fields_are_422_and_change_nothing(
        client: TestClient, pg_url: str, tenant: Tenant, training_file: str, method: str,
        path: str, schema: dict) -> None:
    base = copy.deepcopy(INFERENCE_BODIES.get(path)) or _example(schema)
    expected_status = 400 if path in INFERENCE_BODIES else 422
    properties = schema.get("properties", {})
    if "domains" in properties and "domains" not in base:
        base["domains"] = [{"name": "extra", "training_file": "", "validation_file": ""}]
    for target in ("training_file", "validation_file"):
        if target in base:
            base[target] = training_file
    for domain in base.get("domains", []):
        domain["training_file"] = domain["validation_file"] = training_file
    if "model" in base:
        base["model"] = "smollm2-135m-instruct"
    url = path.replace("{job_id}", "ftjob-000000000000000000000000").replace(
        "{run_id}", "clrun-000000000000000000000000")
    before = _state(pg_url, tenant.account_id)
    checked = 0
    for index, (prefix, _) in enumerate(_nested_targets(base)):
        for field, value in SERVER_OWNED.items():
            injected = copy.deepcopy(base)
            _nested_targets(injected)[index][1][field] = value
            response = client.request(method, url, headers=tenant.headers, json=injected)
            assert response.status_code == expected_status, \
                (method, path, prefix + field, response.text)
            error = response.json()["error"]
            assert error["param"] == prefix + field, error
            assert error["code"] == "extra_forbidden", error
            checked += 1
    assert checked >= len(SERVER_OWNED)
    assert _state(pg_url, tenant.account_id) == before
