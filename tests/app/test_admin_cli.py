"""`crma admin`: accounts, keys and credit, on a fresh SQLite install (the real entry point in
a subprocess) and on PostgreSQL (in process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db.models import Account, ApiKey
from app.db.session import session_scope
from app.settings import get_settings
from crma_cli.main import main
from tests.app.helpers import make_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Iterator:
    # The CLI writes CRMA_* into os.environ; register them so they are restored afterwards.
    for name in ("CRMA_DATA_DIR", "CRMA_DATABASE_URL"):
        monkeypatch.setenv(name, os.environ.get(name, ""))
        monkeypatch.delenv(name)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield run
    get_settings.cache_clear()


def test_fresh_sqlite_install_through_the_entry_point(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMA_")}
    data_dir = tmp_path / "fresh"
    result = subprocess.run(
        [sys.executable, "-m", "crma_cli.main", "admin", "create-account", "--name", "Ada",
         "--plan", "free", "--json", "--data-dir", str(data_dir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert set(created) == {"account_id", "api_key"}
    assert created["api_key"].startswith("sk-crma-")
    url = f"sqlite:///{data_dir / 'crma.sqlite'}"
    with session_scope(url) as session:
        account = session.get(Account, created["account_id"])
        assert (account.name, account.plan) == ("Ada", "free")
        digests = session.scalars(select(ApiKey.digest)).all()
    assert created["api_key"] not in digests and len(digests) == 1


def test_create_list_credit_revoke_on_postgresql(cli, pg_url: str, tmp_path: Path) -> None:
    from app.main import create_app

    code, out, _ = cli("admin", "create-account", "--name", "Grace", "--plan", "pro", "--json",
                       "--database-url", pg_url)
    assert code == 0
    created = json.loads(out)
    code, out, _ = cli("admin", "add-credit", created["account_id"], "12.50",
                       "--database-url", pg_url)
    assert code == 0 and "$12.50" in out
    with session_scope(pg_url) as session:
        assert session.get(Account, created["account_id"]).credit_available_micros == 12_500_000
    code, out, _ = cli("admin", "list-accounts", "--json", "--database-url", pg_url)
    listed = {a["account_id"]: a for a in json.loads(out)}[created["account_id"]]
    assert (listed["plan"], listed["credit_available"]) == ("pro", "12.50")
    key_id = listed["keys"][0]["key_id"]
    assert code == 0 and listed["keys"][0]["revoked"] is False

    headers = {"Authorization": f"Bearer {created['api_key']}"}
    with TestClient(create_app(make_settings(tmp_path, pg_url))) as client:
        assert client.get("/v1/files", headers=headers).status_code == 200  # cached now
        code, out, _ = cli("admin", "revoke-key", key_id, "--database-url", pg_url)
        assert code == 0 and key_id in out
        # Same process: the cache entry is dropped at once.
        assert client.get("/v1/files", headers=headers).status_code == 401
    code, out, _ = cli("admin", "list-accounts", "--database-url", pg_url)
    assert created["account_id"] in out


@pytest.mark.parametrize(
    "argv",
    [("admin", "add-credit", "acct-nope", "5"), ("admin", "add-credit", "acct-x", "-5"),
     ("admin", "add-credit", "acct-x", "1.0000001"), ("admin", "add-credit", "acct-x", "abc"),
     ("admin", "revoke-key", "key-nope")],
)
def test_operator_mistakes_are_reported(cli, pg_url: str, argv: tuple[str, ...]) -> None:
    code, out, err = cli(*argv, "--database-url", pg_url)
    assert code == 2 and err.startswith("error:") and out == ""


def test_plan_is_checked_by_argparse(cli) -> None:
    with pytest.raises(SystemExit):
        cli("admin", "create-account", "--name", "x", "--plan", "gold")


def test_webhook_secrets_are_sealed_then_rotated(cli, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint registered while no key was set is sealed by `reseal-webhook-secrets`
    once one is; a new key put first reseals it; a sealed secret none of the keys opens
    stops the command with nothing changed."""
    from app.db.models import WebhookEndpoint
    from app.domain.secret_box import SecretBox
    from app.services import webhooks

    data = tmp_path / "install"
    code, out, _ = cli("admin", "create-account", "--name", "Hooks", "--plan", "pro", "--json",
                       "--data-dir", str(data))
    assert code == 0
    account_id = json.loads(out)["account_id"]
    url = f"sqlite:///{data / 'crma.sqlite'}"
    with session_scope(url) as session:
        endpoint, secret = webhooks.create_endpoint(
            session, account_id=account_id, url="https://hooks.example.com/in",
            event_types=None, description=None, settings=make_settings(tmp_path, url))
        endpoint_id = endpoint.id

    def stored() -> str:
        with session_scope(url) as session:
            return session.get(WebhookEndpoint, endpoint_id).secret

    assert stored() == secret  # no key: unsealed
    keys = []
    for _ in range(2):
        code, out, _ = cli("admin", "new-secret-key")
        assert code == 0
        keys.append(out.strip())
    first, second = keys
    monkeypatch.setenv("CRMA_WEBHOOK_SECRET_KEYS", first)
    code, out, _ = cli("admin", "reseal-webhook-secrets", "--data-dir", str(data))
    assert (code, out.strip()) == (0, "sealed 1 webhook secret(s) with the first key; "
                                      "0 already were")
    assert secret not in stored() and SecretBox((first,)).open(stored()) == secret

    monkeypatch.setenv("CRMA_WEBHOOK_SECRET_KEYS", f"{second},{first}")
    assert cli("admin", "reseal-webhook-secrets", "--data-dir", str(data))[0] == 0
    assert SecretBox((second,)).open(stored()) == secret
    code, out, _ = cli("admin", "reseal-webhook-secrets", "--data-dir", str(data))
    assert "sealed 0 webhook secret(s) with the first key; 1 already were" in out

    before = stored()
    monkeypatch.setenv("CRMA_WEBHOOK_SECRET_KEYS", first)  # `second`, which sealed it, is gone
    code, _, err = cli("admin", "reseal-webhook-secrets", "--data-dir", str(data))
    assert code == 2 and "none of the keys" in err and "nothing was changed" in err
    assert stored() == before
    monkeypatch.delenv("CRMA_WEBHOOK_SECRET_KEYS")
    code, _, err = cli("admin", "reseal-webhook-secrets", "--data-dir", str(data))
    assert code == 2 and "CRMA_WEBHOOK_SECRET_KEYS is not set" in err
