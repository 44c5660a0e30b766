"""Public ids carry a type prefix and 24 random characters (never sequential: ids are not
guessable, see OWASP API1)."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
_LENGTH = 24
# Random bytes map onto the 62 characters through one bytes.translate: 248 = 4 * 62, so
# bytes 0..247 map uniformly (b % 62) and 248..255 are dropped rather than folded in (which
# would bias the first eight characters). One token_bytes call instead of 24
# SystemRandom.choice calls: this runs several times per created job.
_KEEP = 4 * len(_ALPHABET)
_TABLE = bytes(ord(_ALPHABET[b % len(_ALPHABET)]) if b < _KEEP else 0 for b in range(256))
_DROP = bytes(range(_KEEP, 256))

PREFIXES = {
    "account": "acct",
    "api_key": "key",
    "file": "file",
    "job": "ftjob",
    "event": "ftevent",
    "checkpoint": "ftckpt",
    "continual_run": "clrun",
    "ledger_transaction": "ltx",
    "webhook": "wh",
    "webhook_event": "evt",
    "webhook_delivery": "whdel",
    "export": "ftexp",
}


def new_id(kind: str) -> str:
    return f"{PREFIXES[kind]}-{random_chars(_LENGTH)}"


def random_chars(length: int) -> str:
    """`length` characters drawn uniformly from [A-Za-z0-9] with the OS CSPRNG."""
    chars = b""
    while len(chars) < length:
        # 8 spare bytes: a shortfall (each byte is dropped with p = 1/32) is rare.
        chars += secrets.token_bytes(length - len(chars) + 8).translate(_TABLE, _DROP)
    return chars[:length].decode("ascii")


def has_prefix(value: str, kind: str) -> bool:
    return value.startswith(PREFIXES[kind] + "-")
