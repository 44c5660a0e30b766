"""Public ids carry a type prefix and 24 random characters (never sequential: ids are not
guessable, see OWASP API1)."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits

PREFIXES = {
    "account": "acct",
    "api_key": "key",
    "file": "file",
    "job": "ftjob",
    "event": "ftevent",
    "checkpoint": "ftckpt",
    "continual_run": "clrun",
    "ledger_transaction": "ltx",
}


def new_id(kind: str) -> str:
    return f"{PREFIXES[kind]}-" + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def has_prefix(value: str, kind: str) -> bool:
    return value.startswith(PREFIXES[kind] + "-")
