"""API key format and digests. Keys are `sk-crma-` + 40 urlsafe characters (240 bits), shown
once; only an HMAC-SHA256 digest (keyed with the server's pepper) is stored. High-entropy keys
need no slow hash: the pepper only protects a leaked table from offline guessing."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

KEY_PREFIX = "sk-crma-"
_BODY_LENGTH = 40
# Shown in listings and logs instead of the key ("sk-crma-AbCd").
DISPLAY_PREFIX_LENGTH = len(KEY_PREFIX) + 4


def generate_api_key() -> str:
    # token_urlsafe(30) encodes 30 random bytes as exactly 40 characters.
    body = secrets.token_urlsafe(30)
    assert len(body) == _BODY_LENGTH
    return KEY_PREFIX + body


def digest_api_key(key: str, *, pepper: str) -> str:
    return hmac.new(pepper.encode(), key.encode(), hashlib.sha256).hexdigest()


def display_prefix(key: str) -> str:
    return key[:DISPLAY_PREFIX_LENGTH]


_KEY_SHAPE = re.compile(re.escape(KEY_PREFIX) + r"[A-Za-z0-9_-]{%d}" % _BODY_LENGTH)


def looks_like_api_key(value: str) -> bool:
    """Cheap shape check before any lookup (rejects junk without touching the database).
    Runs on every request: one regular expression, not a Python loop over 40 characters."""
    return _KEY_SHAPE.fullmatch(value) is not None
