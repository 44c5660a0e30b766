"""`crma` entry point. Each subcommand module exposes `register(subparsers)` and sets `func`;
modules are imported lazily by name so `crma --help` stays fast and a command only pays for
what it imports."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Must be set before torch loads libgomp. Busy-waiting OpenMP threads collapse throughput when
# the CPU is shared (the API, a worker and the relay on one small machine): measured 28 s vs
# 1 s per SmolLM2-135M step on 2 loaded cores. GPU workers are unaffected.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# module name -> subcommands it registers (for the lazy import)
COMMAND_MODULES = {
    "crma_cli.admin": ("admin",),
    "crma_cli.models": ("models",),
    "crma_cli.train": ("train",),
    "crma_cli.worker": ("worker", "reaper", "relay"),
    "crma_cli.dev": ("serve", "openapi", "migrate"),
    "crma_cli.embedded": ("dev",),
    "crma_cli.engine": ("engine",),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crma", description="CRMA fine-tuning service")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name, commands in COMMAND_MODULES.items():
        if only is not None and only not in commands:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:  # that command is not part of this build yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    wanted = argv[0] if argv and not argv[0].startswith("-") else None
    known = {c for commands in COMMAND_MODULES.values() for c in commands}
    parser = build_parser(wanted if wanted in known else None)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
