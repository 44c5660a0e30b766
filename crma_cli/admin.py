"""`crma admin ...`: operator commands (accounts, API keys, credit, webhook secret keys).

Every command runs the database migrations first, so `crma admin create-account` works on a
fresh embedded (SQLite) install. `--data-dir` / `--database-url` override CRMA_DATA_DIR /
CRMA_DATABASE_URL."""

from __future__ import annotations

import argparse
import json
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    admin = subparsers.add_parser("admin",
                                  help="operator commands: accounts, keys, credit, secrets")
    commands = admin.add_subparsers(dest="admin_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=None, help="embedded installation root")
    common.add_argument("--database-url", default=None, help="SQLAlchemy database URL")

    create = commands.add_parser("create-account", parents=[common],
                                 help="create an account and its first API key")
    create.add_argument("--name", required=True)
    create.add_argument("--plan", required=True, choices=("free", "pro"))
    create.add_argument("--json", action="store_true",
                        help='print {"account_id": ..., "api_key": ...}')
    create.set_defaults(func=create_account)

    revoke = commands.add_parser("revoke-key", parents=[common], help="revoke an API key")
    revoke.add_argument("key_id", metavar="KEY_ID")
    revoke.set_defaults(func=revoke_key)

    listing = commands.add_parser("list-accounts", parents=[common], help="list accounts")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=list_accounts)

    credit = commands.add_parser("add-credit", parents=[common],
                                 help="add prepaid credit (USD, e.g. 25 or 12.50)")
    credit.add_argument("account_id", metavar="ACCOUNT")
    credit.add_argument("usd", metavar="USD")
    credit.add_argument("--memo", default=None)
    credit.set_defaults(func=add_credit)

    key = commands.add_parser("new-secret-key",
                              help="print a new key for CRMA_WEBHOOK_SECRET_KEYS")
    key.set_defaults(func=new_secret_key)

    reseal = commands.add_parser(
        "reseal-webhook-secrets", parents=[common],
        help="seal every webhook secret with the first key of CRMA_WEBHOOK_SECRET_KEYS "
             "(after setting the keys, or after putting a new key first)")
    reseal.set_defaults(func=reseal_webhook_secrets)


def _database_url(args: argparse.Namespace) -> str:
    """Apply the overrides, build Settings once, migrate; returns the database URL."""
    if args.data_dir:
        os.environ["CRMA_DATA_DIR"] = os.path.abspath(args.data_dir)
    if args.database_url:
        os.environ["CRMA_DATABASE_URL"] = args.database_url
    from app.db.migrate import upgrade
    from app.settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    upgrade(url)
    return url


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def create_account(args: argparse.Namespace) -> int:
    from app.db.session import session_scope
    from app.domain.errors import DomainError
    from app.services import accounts

    from app.settings import get_settings

    url = _database_url(args)
    try:
        with session_scope(url) as session:
            account, key = accounts.create_account(session, name=args.name, plan=args.plan,
                                                   pepper=get_settings().api_key_pepper)
    except DomainError as error:
        return _fail(error.message)
    if args.json:
        print(json.dumps({"account_id": account.id, "api_key": key}))
    else:
        print(f"account: {account.id} ({account.plan})")
        print(f"api key: {key}")
        print("The key is shown only now; store it safely.")
    return 0


def revoke_key(args: argparse.Namespace) -> int:
    from app.db.session import session_scope
    from app.domain.errors import DomainError
    from app.services import accounts
    from app.services.auth import CACHE_TTL_S

    url = _database_url(args)
    try:
        with session_scope(url) as session:
            row = accounts.revoke_key(session, key_id=args.key_id)
    except DomainError as error:
        return _fail(error.message)
    print(f"revoked {row.id} ({row.prefix}...) of {row.account_id}; running API servers stop "
          f"accepting it within {int(CACHE_TTL_S)} s")
    return 0


def list_accounts(args: argparse.Namespace) -> int:
    from app.db.session import session_scope
    from app.domain.pricing import format_usd
    from app.services import accounts

    url = _database_url(args)
    with session_scope(url) as session:
        rows = accounts.list_accounts(session)
        keys = {a.id: accounts.list_keys(session, account_id=a.id) for a in rows}
    if args.json:
        print(json.dumps([
            {"account_id": a.id, "name": a.name, "plan": a.plan,
             "created_at": a.created_at.isoformat(),
             "credit_available": format_usd(a.credit_available_micros),
             "credit_held": format_usd(a.credit_held_micros),
             "keys": [{"key_id": k.id, "prefix": k.prefix, "revoked": k.revoked_at is not None}
                      for k in keys[a.id]]}
            for a in rows
        ], indent=2))
        return 0
    print(f"{'ACCOUNT':32} {'PLAN':5} {'AVAILABLE':>12} {'HELD':>10}  KEYS  NAME")
    for a in rows:
        active = ",".join(k.id for k in keys[a.id] if k.revoked_at is None) or "-"
        print(f"{a.id:32} {a.plan:5} {format_usd(a.credit_available_micros):>12} "
              f"{format_usd(a.credit_held_micros):>10}  {active}  {a.name}")
    return 0


def add_credit(args: argparse.Namespace) -> int:
    from app.db.models import Account
    from app.db.session import session_scope
    from app.domain.errors import DomainError
    from app.domain.pricing import format_usd, usd_to_micros
    from app.services import billing

    try:
        micros = usd_to_micros(args.usd)
    except ValueError as error:
        return _fail(str(error))
    if micros <= 0:
        return _fail("the amount must be positive")
    url = _database_url(args)
    try:
        with session_scope(url) as session:
            billing.add_credit(session, account_id=args.account_id, amount_micros=micros,
                               memo=args.memo or "operator credit (crma admin add-credit)")
            session.flush()
            balance = session.get(Account, args.account_id, populate_existing=True)
            available = balance.credit_available_micros
    except DomainError as error:
        return _fail(error.message)
    print(f"added ${format_usd(micros)} to {args.account_id}; available ${format_usd(available)}")
    return 0


def new_secret_key(args: argparse.Namespace) -> int:
    from app.domain.secret_box import new_key

    print(new_key())
    return 0


def reseal_webhook_secrets(args: argparse.Namespace) -> int:
    from app.db.session import session_scope
    from app.domain.errors import DomainError
    from app.domain.secret_box import SecretKeyError
    from app.services import webhooks
    from app.settings import get_settings

    url = _database_url(args)
    try:
        with session_scope(url) as session:
            resealed, current = webhooks.reseal_secrets(session, settings=get_settings())
    except DomainError as error:
        return _fail(error.message)
    except SecretKeyError as error:
        return _fail(f"{error}; nothing was changed")
    print(f"sealed {resealed} webhook secret(s) with the first key; {current} already were")
    return 0
