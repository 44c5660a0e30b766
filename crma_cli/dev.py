"""Operations commands: `crma serve` (the API), `crma migrate` (Alembic) and `crma openapi`
(print the OpenAPI document). The embedded all-in-one `crma dev` is crma_cli/embedded.py."""

from __future__ import annotations

import argparse
import json
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="run the HTTP API (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.add_argument("--data-dir", default=None, help="embedded installation root")
    serve.add_argument("--database-url", default=None)
    serve.add_argument("--no-migrate", action="store_true",
                       help="do not upgrade the database schema first")
    serve.set_defaults(func=run_serve)

    migrate = subparsers.add_parser("migrate", help="upgrade (or downgrade) the database schema")
    migrate.add_argument("revision", nargs="?", default="head",
                         help="target revision (default head); with --down, the one to go back to")
    migrate.add_argument("--down", action="store_true", help="downgrade to REVISION")
    migrate.add_argument("--data-dir", default=None)
    migrate.add_argument("--database-url", default=None)
    migrate.set_defaults(func=run_migrate)

    openapi = subparsers.add_parser("openapi", help="print the OpenAPI document (JSON)")
    openapi.set_defaults(func=run_openapi)


def apply_overrides(args: argparse.Namespace) -> None:
    """CLI flags become environment defaults before Settings is built (docs/dev/contracts.md)."""
    if getattr(args, "data_dir", None):
        os.environ["CRMA_DATA_DIR"] = os.path.abspath(args.data_dir)
    if getattr(args, "database_url", None):
        os.environ["CRMA_DATABASE_URL"] = args.database_url
    from app.settings import get_settings

    get_settings.cache_clear()


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    apply_overrides(args)
    from app.settings import get_settings

    settings = get_settings()
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    if not args.no_migrate:
        from app.db.migrate import upgrade

        upgrade(settings.resolved_database_url)
    uvicorn.run("app.main:create_server_app", factory=True, host=args.host, port=args.port,
                workers=args.workers, access_log=False, proxy_headers=True)
    return 0


def run_migrate(args: argparse.Namespace) -> int:
    apply_overrides(args)
    from app.db.migrate import downgrade, upgrade
    from app.settings import get_settings

    settings = get_settings()
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    if args.down:
        downgrade(settings.resolved_database_url, args.revision)
    else:
        upgrade(settings.resolved_database_url, args.revision)
    return 0


def openapi_document() -> dict:
    from app.main import create_app

    return create_app(store=_NO_STORE).openapi()


def render_openapi() -> str:
    return json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n"


def run_openapi(args: argparse.Namespace) -> int:
    sys.stdout.write(render_openapi())
    return 0


class _NoStore:
    """Generating the document must not create directories or open connections."""

    def __getattr__(self, name: str) -> None:
        raise RuntimeError("no object store while generating the OpenAPI document")


_NO_STORE = _NoStore()
