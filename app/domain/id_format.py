"""Cheap shape checks for client-supplied identifiers, done before any query: a malformed id
(a NUL byte, 10 kB of junk) is simply "not found", never a database error."""

from __future__ import annotations

import re

_ID = re.compile(r"^[a-z]{2,8}-[A-Za-z0-9]{1,64}$")
_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def is_id(value: str | None) -> bool:
    """Shape of our public ids (`ftjob-...`, `file-...`, `clrun-...`, ...)."""
    return value is not None and bool(_ID.match(value))


def is_artifact_name(name: str) -> bool:
    """A path inside an adapter bundle, as app.storage.keys would accept it."""
    parts = name.split("/")
    return len(name) <= 300 and all(_NAME_PART.match(p) and ".." not in p for p in parts)


def has_nul(value: object) -> bool:
    """True if a string anywhere inside `value` holds a NUL (PostgreSQL text cannot)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(has_nul(v) for v in value)
    return False
