"""API-key hygiene: a `pg_dump` of the database holds no full key (nor any long piece of
one) after keys were created, used, replayed through Idempotency-Key and revoked; and a
revoked key, an unknown key and a malformed key all get the same 401 body."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from fastapi.testclient import TestClient

from app.db.session import session_scope
from app.services import accounts, auth
from tests.app.helpers import create_tenant, upload_id

pytestmark = pytest.mark.integration

# The display prefix (sk-crma- + 4 characters) is stored on purpose; anything longer is not.
WINDOW = 12


def _fragments(key: str) -> set[str]:
    body = key[len("sk-crma-"):]
    return {body[i:i + WINDOW] for i in range(0, len(body) - WINDOW + 1)}


def _pg_dump(url: str) -> str:
    if shutil.which("pg_dump") is None:
        pytest.skip("pg_dump not installed")
    result = subprocess.run(["pg_dump", "--no-owner", "--data-only", url], capture_output=True,
                            text=True, timeout=120, check=True)
    return result.stdout


def test_a_database_dump_holds_no_key(client: TestClient, pg_url: str) -> None:
    tenants = [create_tenant(pg_url, plan=plan, credit_micros=5_000_000)
               for plan in ("free", "pro", "pro")]
    extra_keys = []
    for tenant in tenants:
        with session_scope(pg_url) as session:
            _, key = accounts.create_api_key(session, account_id=tenant.account_id, name="ci",
                                             pepper="")
        extra_keys.append(key)
    for tenant in tenants:
        # Used: last_used_at, files, an idempotent create (its stored response), the ledger.
        file_id = upload_id(client, tenant)
        body = {"model": "smollm2-135m-instruct", "training_file": file_id}
        headers = {**tenant.headers, "Idempotency-Key": f"dump-{tenant.account_id}"}
        for _ in range(2):
            assert client.post("/v1/fine_tuning/jobs", headers=headers, json=body).status_code \
                in (201, 402, 429)
        assert client.get("/v1/billing/ledger", headers=tenant.headers).status_code == 200
    with session_scope(pg_url) as session:
        key_id = accounts.list_keys(session, account_id=tenants[1].account_id)[0].id
        accounts.revoke_key(session, key_id=key_id)

    dump = _pg_dump(pg_url)
    assert "COPY public.api_keys" in dump and tenants[0].account_id in dump  # a real dump
    for key in [t.key for t in tenants] + extra_keys:
        assert key not in dump
        leaked = [f for f in _fragments(key) if f in dump]
        assert leaked == [], f"{len(leaked)} pieces of a key are in the dump"
        assert key[:len("sk-crma-") + 4] in dump  # only the display prefix is kept


def test_revoked_unknown_and_malformed_keys_get_the_same_401(client: TestClient,
                                                              pg_url: str) -> None:
    tenant = create_tenant(pg_url)
    assert client.get("/v1/files", headers=tenant.headers).status_code == 200  # now cached
    with session_scope(pg_url) as session:
        key_id = accounts.list_keys(session, account_id=tenant.account_id)[0].id
        accounts.revoke_key(session, key_id=key_id)
    # Revocation through the service drops the key from this process' cache at once (another
    # API process stops accepting it within auth.CACHE_TTL_S).
    assert auth.CACHE_TTL_S <= 60
    cases = {
        "revoked": tenant.key,
        "unknown": "sk-crma-" + "Q" * 40,
        "unknown_other_shape": "sk-crma-" + "x_-9" * 10,
        "malformed": "sk-crma-short",
        "not_ours": "sk-proj-" + "a" * 40,
        "empty_bearer": "",
    }
    answers = {}
    for case, key in cases.items():
        response = client.get("/v1/files", headers={"Authorization": f"Bearer {key}"})
        answers[case] = (response.status_code, response.content,
                         response.headers.get("www-authenticate"))
    bodies = {body for _, body, _ in answers.values() if body}
    statuses = {status for status, _, _ in answers.values()}
    assert statuses == {401}, answers
    # Every failure with a key says exactly the same thing (no hint a key ever existed).
    keyed = {answers[c][1] for c in cases if c != "empty_bearer"}
    assert len(keyed) == 1, keyed
    assert all(a[2] == "Bearer" for a in answers.values())
    text = keyed.pop().decode()
    assert tenant.key not in text and "revoked" not in text.lower()
    assert len(bodies) <= 2  # the empty bearer may say "no key provided"
