"""Files API against PostgreSQL and a local object store: upload, list, retrieve, download,
delete; every invalid upload is a clean 4xx naming the lines, and nothing is stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db.models import File
from app.db.session import session_scope
from tests.app.helpers import CHAT_LINE, Tenant, jsonl, upload, upload_id
from tests.factories import insert_job

pytestmark = pytest.mark.integration


def _stored_files(pg_url: str, account_id: str) -> int:
    with session_scope(pg_url) as session:
        return session.scalar(select(func.count()).where(File.account_id == account_id))


def test_upload_reports_format_examples_and_tokens(client: TestClient, tenant: Tenant) -> None:
    response = upload(client, tenant, jsonl(7), filename="../../etc/passwd.jsonl")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["object"] == "file" and body["id"].startswith("file-")
    assert (body["status"], body["format"], body["example_count"]) == ("processed", "chat", 7)
    assert body["filename"] == "passwd.jsonl"  # display metadata only, never a key
    assert set(body["token_estimates"]) == {"llama", "mistral", "gemma2"}
    assert all(v > 7 for v in body["token_estimates"].values())
    assert body["token_estimate_method"]["llama"].startswith("heuristic:")
    assert response.headers["location"] == f"/v1/files/{body['id']}"
    assert client.get(f"/v1/files/{body['id']}", headers=tenant.headers).json() == body


def test_download_streams_the_exact_bytes(client: TestClient, tenant: Tenant) -> None:
    data = jsonl(2000)
    file_id = upload_id(client, tenant, data)
    response = client.get(f"/v1/files/{file_id}/content", headers=tenant.headers)
    assert response.status_code == 200 and response.content == data
    assert response.headers["content-disposition"].startswith("attachment")


def test_list_is_newest_first_with_cursor(client: TestClient, pg_url: str) -> None:
    from tests.app.helpers import create_tenant

    owner = create_tenant(pg_url)
    ids = [upload_id(client, owner) for _ in range(5)]
    first = client.get("/v1/files?limit=2", headers=owner.headers).json()
    assert [f["id"] for f in first["data"]] == ids[::-1][:2] and first["has_more"] is True
    rest = client.get(f"/v1/files?limit=10&after={first['data'][-1]['id']}",
                      headers=owner.headers).json()
    assert [f["id"] for f in rest["data"]] == ids[::-1][2:] and rest["has_more"] is False
    bad = client.get("/v1/files?after=file-nope", headers=owner.headers)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "after"
    assert client.get("/v1/files?limit=1000", headers=owner.headers).status_code == 422


def test_delete_removes_row_and_object(client: TestClient, tenant: Tenant,
                                       api_settings) -> None:
    file_id = upload_id(client, tenant)
    objects = Path(api_settings.storage_url.removeprefix("file://"))
    assert list(objects.rglob(f"{file_id}.jsonl"))
    response = client.delete(f"/v1/files/{file_id}", headers=tenant.headers)
    assert response.json() == {"id": file_id, "object": "file", "deleted": True}
    assert not list(objects.rglob(f"{file_id}.jsonl"))
    for path in (f"/v1/files/{file_id}", f"/v1/files/{file_id}/content"):
        assert client.get(path, headers=tenant.headers).status_code == 404
    assert client.delete(f"/v1/files/{file_id}", headers=tenant.headers).status_code == 404


def test_a_file_used_by_an_unfinished_job_cannot_be_deleted(
    client: TestClient, tenant: Tenant, pg_url: str
) -> None:
    file_id = upload_id(client, tenant)
    with session_scope(pg_url) as session:
        insert_job(session, account_id=tenant.account_id, training_file_id=file_id)
    response = client.delete(f"/v1/files/{file_id}", headers=tenant.headers)
    assert response.status_code == 409 and response.json()["error"]["code"] == "file_in_use"


def test_idempotent_upload_replays(client: TestClient, tenant: Tenant, pg_url: str) -> None:
    before = _stored_files(pg_url, tenant.account_id)
    headers = {"Idempotency-Key": "upload-1"}
    first = upload(client, tenant, jsonl(3), headers=headers)
    again = upload(client, tenant, jsonl(3), headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() and again.headers["idempotent-replayed"] == "true"
    assert _stored_files(pg_url, tenant.account_id) == before + 1
    different = upload(client, tenant, jsonl(4), headers=headers)
    assert different.status_code == 422


BAD_FILES = {
    "malformed_json": (CHAT_LINE + "\n" + '{"messages": [\n', [(2, "invalid_json")]),
    "wrong_role": (
        CHAT_LINE + "\n" + CHAT_LINE.replace('"user"', '"human"') + "\n",
        [(2, "invalid_role")],
    ),
    "empty_completion": (
        '{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": "  "}\n',
        [(2, "empty_completion")],
    ),
    "invalid_utf8": (
        (CHAT_LINE + "\n").encode() + b'{"text": "caf\xe9"}\n', [(2, "invalid_utf8")],
    ),
    "mixed_formats": (
        CHAT_LINE + '\n{"text": "hello"}\n', [(2, "mixed_formats")],
    ),
    "not_an_object": ("[1, 2]\n", [(1, "not_an_object")]),
    "unknown_field": ('{"text": "x", "label": 1}\n', [(1, "unknown_field")]),
    "no_assistant": (
        '{"messages": [{"role": "user", "content": "hi"}]}\n', [(1, "no_assistant_message")],
    ),
    "empty_file": (b"", [(None, "empty_file")]),
    "only_blank_lines": (b"\n\n  \n", [(None, "empty_file")]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_invalid_files_are_rejected_with_line_numbers(
    client: TestClient, tenant: Tenant, pg_url: str, case: str
) -> None:
    content, expected = BAD_FILES[case]
    data = content.encode() if isinstance(content, str) else content
    before = _stored_files(pg_url, tenant.account_id)
    response = upload(client, tenant, data)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "invalid_file", "file", "invalid_request_error")
    assert [(e["line"], e["code"]) for e in error["errors"]] == expected
    assert error["error_count"] == len(expected)
    for line, _ in expected:
        if line is not None:
            assert f"line {line}" in error["message"]
    assert _stored_files(pg_url, tenant.account_id) == before


def test_a_ten_megabyte_line_is_reported_not_loaded(client: TestClient, tenant: Tenant) -> None:
    huge = json.dumps({"text": "x" * (10 * 1024 * 1024)})
    data = (CHAT_LINE + "\n" + huge + "\n" + CHAT_LINE + "\n").encode()
    response = upload(client, tenant, data)
    assert response.status_code == 400
    errors = response.json()["error"]["errors"]
    assert [(e["line"], e["code"]) for e in errors] == [(2, "line_too_long")]


def test_errors_are_capped_but_counted(client: TestClient, tenant: Tenant) -> None:
    data = b"{bad\n" * 250
    error = upload(client, tenant, data).json()["error"]
    assert len(error["errors"]) == 100 and error["error_count"] == 250
    assert error["errors"][-1]["line"] == 100
    assert "and 245 more" in error["message"]


def test_upload_request_errors(client: TestClient, tenant: Tenant) -> None:
    wrong_purpose = client.post("/v1/files", headers=tenant.headers, data={"purpose": "batch"},
                                files={"file": ("t.jsonl", jsonl(), "application/jsonl")})
    assert wrong_purpose.status_code == 400
    assert wrong_purpose.json()["error"]["param"] == "purpose"
    no_file = client.post("/v1/files", headers=tenant.headers, data={"purpose": "fine-tune"},
                          files={"other": ("t.jsonl", b"x", "text/plain")})
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    as_json = client.post("/v1/files", headers=tenant.headers, json={"purpose": "fine-tune"})
    assert as_json.status_code == 400
    unauthenticated = client.post("/v1/files", data={"purpose": "fine-tune"},
                                  files={"file": ("t.jsonl", jsonl(), "application/jsonl")})
    assert unauthenticated.status_code == 401


def test_oversize_uploads_get_413(tmp_path: Path, pg_url: str, tenant: Tenant) -> None:
    from app.main import MULTIPART_SLACK_BYTES, create_app
    from tests.app.helpers import make_settings

    settings = make_settings(tmp_path, pg_url, max_upload_bytes=256 * 1024)
    with TestClient(create_app(settings), raise_server_exceptions=False) as small:
        # Declared too large: refused before a byte is read.
        declared = upload(small, tenant, jsonl(3000))
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "payload_too_large"
        assert declared.headers["x-request-id"]

        def chunks():  # chunked transfer: no Content-Length at all
            boundary = b"--b0undary\r\n"
            yield boundary + b'Content-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            yield (boundary + b'Content-Disposition: form-data; name="file"; '
                   b'filename="t.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n')
            line = (CHAT_LINE + "\n").encode()
            for _ in range((2 * settings.max_upload_bytes + MULTIPART_SLACK_BYTES) // len(line)):
                yield line
            yield b"\r\n--b0undary--\r\n"

        chunked = small.post("/v1/files", content=chunks(), headers={
            **tenant.headers, "content-type": "multipart/form-data; boundary=b0undary"})
        assert chunked.status_code == 413, chunked.text
        assert chunked.json()["error"]["code"] == "payload_too_large"
