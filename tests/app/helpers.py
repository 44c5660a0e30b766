"""Helpers shared by the API tests: tenants, settings, uploads, a live server (row factories:
tests/factories.py)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from app.db.session import session_scope
from app.settings import Settings
from tests.conftest import free_port
from tests.factories import create_account


@dataclass
class Tenant:
    account_id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def create_tenant(database_url: str, *, plan: str = "pro", credit_micros: int = 0) -> Tenant:
    with session_scope(database_url) as session:
        account_id, key = create_account(session, plan=plan, credit_micros=credit_micros,
                                         name=f"{plan} tenant")
    return Tenant(account_id, key)


def make_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "storage_url": (tmp_path / "objects").as_uri(),
        "broker_url": f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}",
    }
    values.update(overrides)
    return Settings(**values)


CHAT_LINE = (
    '{"messages": [{"role": "system", "content": "You are terse."}, '
    '{"role": "user", "content": "Capital of France?"}, '
    '{"role": "assistant", "content": "Paris."}]}'
)


def jsonl(lines: int = 10, line: str = CHAT_LINE) -> bytes:
    return ("\n".join([line] * lines) + "\n").encode()


def upload(client: TestClient, tenant: Tenant, data: bytes | None = None,
           filename: str = "train.jsonl", headers: dict[str, str] | None = None):
    return client.post(
        "/v1/files", headers={**tenant.headers, **(headers or {})},
        data={"purpose": "fine-tune"},
        files={"file": (filename, jsonl() if data is None else data, "application/jsonl")},
    )


def upload_id(client: TestClient, tenant: Tenant, data: bytes | None = None) -> str:
    response = upload(client, tenant, data)
    assert response.status_code == 201, response.text
    return response.json()["id"]


class LiveServer:
    """A real uvicorn server on a free loopback port, in a thread of this process."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False,
            lifespan="off",
        ))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
