"""OWASP API1: every route that takes an `{id}` (enumerated from the app, so new routes are
covered automatically) answers another tenant exactly as it answers a missing id, changes
nothing, and hands out no download URL. The store is S3, so a leaked presigned URL would show."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db.base import utcnow
from app.db.models import (
    Artifact,
    ContinualRun,
    File,
    Job,
    JobEvent,
    ModelExport,
    OutboxMessage,
    WebhookDelivery,
    WebhookEndpoint,
)
from app.db.session import session_scope
from app.domain.ids import new_id
from app.services.webhooks import create_endpoint
from app.storage import keys
from app.storage.factory import open_store
from tests.app.helpers import Tenant, create_tenant, make_settings, upload_id
from tests.factories import insert_job

pytestmark = pytest.mark.integration

# Path parameters that name a tenant-owned object, and the object of tenant A to aim at.
OWNED = {"file_id", "job_id", "run_id", "name", "webhook_id", "export_id"}
GLOBAL = {"model_id"}  # the model catalog is the same for everyone
MISSING = {"file_id": "file-000000000000000000000000", "job_id": "ftjob-000000000000000000000000",
           "run_id": "clrun-000000000000000000000000", "webhook_id": "wh-000000000000000000000000",
           "export_id": "ftexp-000000000000000000000000"}


def id_routes(app) -> list[tuple[str, str]]:
    routes = []
    for path, operations in app.openapi()["paths"].items():
        params = set(re.findall(r"{(\w+)", path))
        if not params:
            continue
        unknown = params - OWNED - GLOBAL
        assert not unknown, f"teach this test about {unknown} in {path}"
        if params & GLOBAL:
            continue
        routes.extend((method.upper(), path) for method in operations)
    return routes


def _fill(path: str, values: dict[str, str]) -> str:
    return re.sub(r"{(\w+)(:path)?}", lambda m: values[m.group(1)], path)


def _snapshot(pg_url: str, account_id: str, store) -> dict:
    with session_scope(pg_url) as session:
        jobs = session.execute(select(Job.id, Job.status, Job.cancel_requested_at, Job.cost_micros)
                               .where(Job.account_id == account_id).order_by(Job.id)).all()
        return {
            "jobs": [tuple(r) for r in jobs],
            "files": [tuple(r) for r in session.execute(
                select(File.id, File.deleted_at).where(File.account_id == account_id)
                .order_by(File.id)).all()],
            "runs": [tuple(r) for r in session.execute(
                select(ContinualRun.id, ContinualRun.status).where(
                    ContinualRun.account_id == account_id).order_by(ContinualRun.id)).all()],
            "events": session.scalar(select(func.count()).select_from(JobEvent)),
            "webhooks": [tuple(r) for r in session.execute(
                select(WebhookEndpoint.id, WebhookEndpoint.status).where(
                    WebhookEndpoint.account_id == account_id).order_by(WebhookEndpoint.id))],
            "deliveries": session.scalar(select(func.count()).select_from(WebhookDelivery)),
            "exports": session.scalar(select(func.count()).select_from(ModelExport)),
            "outbox": session.scalar(select(func.count()).select_from(OutboxMessage)),
            "objects": store.list_keys(keys.tenant_prefix(account_id)),
        }


def test_every_id_route_hides_other_tenants_objects(
    tmp_path: Path, pg_url: str, s3_endpoint: str, s3_bucket: str
) -> None:
    from app.main import create_app

    settings = make_settings(tmp_path, pg_url, storage_url=f"s3://{s3_bucket}/iso",
                             s3_endpoint_url=s3_endpoint, s3_access_key_id="testing",
                             s3_secret_access_key="testing")
    store = open_store(settings)
    owner = create_tenant(pg_url, credit_micros=10**8)
    intruder = create_tenant(pg_url, credit_micros=10**8)
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        file_id = upload_id(client, owner)
        job_id = client.post("/v1/fine_tuning/jobs", headers=owner.headers, json={
            "model": "tinyllama-1.1b-chat", "training_file": file_id}).json()["id"]
        domain = {"name": "a", "training_file": file_id,
                  "validation_file": upload_id(client, owner)}
        run_id = client.post("/v1/continual/runs", headers=owner.headers, json={
            "model": "tinyllama-1.1b-chat", "domains": [domain]}).json()["id"]
        name = "lora/adapter_config.json"
        export_id = new_id("export")
        with session_scope(pg_url) as session:
            webhook_id = create_endpoint(session, account_id=owner.account_id,
                                         url="https://hooks.example.com/x", event_types=None,
                                         description=None, settings=settings)[0].id
            session.add(ModelExport(id=export_id, account_id=owner.account_id, job_id=job_id,
                                    format="merged", dtype="bfloat16", status="succeeded",
                                    created_at=utcnow()))
            for owner_id in (job_id, run_id, export_id):
                key = keys.artifact_key(owner.account_id, owner_id, name)
                store.put_bytes(key, b"{}")
                session.add(Artifact(owner_id=owner_id, account_id=owner.account_id, name=name,
                                     bytes=2, sha256=hashlib.sha256(b"{}").hexdigest(),
                                     storage_key=key, created_at=utcnow()))
        # The intruder's own files, so a body they send is valid except for whose id it names.
        their_domain = {"name": "b", "training_file": upload_id(client, intruder),
                        "validation_file": upload_id(client, intruder)}
        bodies = {"/v1/continual/runs/{run_id}/domains": {"domains": [their_domain]}}
        targets = {"file_id": file_id, "job_id": job_id, "run_id": run_id, "name": name,
                   "webhook_id": webhook_id, "export_id": export_id}
        missing = {**MISSING, "name": name}

        routes = id_routes(app)
        covered = {path for _, path in routes}
        assert {"/v1/files/{file_id}", "/v1/fine_tuning/jobs/{job_id}/cancel",
                "/v1/fine_tuning/jobs/{job_id}/artifacts/{name}",
                "/v1/continual/runs/{run_id}/artifacts"} <= covered
        before = _snapshot(pg_url, owner.account_id, store)
        for method, path in routes:
            kwargs = {"json": bodies[path]} if path in bodies else {}
            theirs = client.request(method, _fill(path, targets), headers=intruder.headers,
                                    follow_redirects=False, **kwargs)
            absent = client.request(method, _fill(path, missing), headers=intruder.headers,
                                    follow_redirects=False, **kwargs)
            label = f"{method} {path}"
            assert theirs.status_code == 404, (label, theirs.status_code, theirs.text)
            assert absent.status_code == 404, (label, absent.text)
            leaked = theirs.text
            for param, value in targets.items():
                if param != "name":
                    leaked = leaked.replace(value, missing[param])
            assert leaked == absent.text, label
            assert "X-Amz" not in theirs.text and "location" not in theirs.headers, label
        assert _snapshot(pg_url, owner.account_id, store) == before

        # The owner still sees everything (the fixture objects were real).
        for method, path in routes:
            if method == "GET" and "content" not in path:
                response = client.get(_fill(path, targets), headers=owner.headers,
                                      follow_redirects=False)
                assert response.status_code in (200, 307), (path, response.text)
