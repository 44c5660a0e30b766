"""Secrets the service must read back, sealed at rest: a webhook endpoint's signing secret
cannot be stored as a hash like an API key (every delivery is signed with it), so it is
encrypted with Fernet (AES-128-CBC + HMAC-SHA256, the `cryptography` package) under the
operator's keys, `CRMA_WEBHOOK_SECRET_KEYS`.

Several keys rotate: the first seals, every one of them opens, and `crma admin
reseal-webhook-secrets` re-seals what an older key sealed. A stored value without the
`fernet:` prefix is a secret written while no key was set (or before sealing existed): it
reads as it is, and the same command seals it once a key is set. With no key set at all,
secrets are stored as they are (a development install), and the webhook relay logs a
warning at start."""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

SEALED_PREFIX = "fernet:"


class SecretKeyError(ValueError):
    """A sealed value opens with none of the keys (or no key is set)."""


def new_key() -> str:
    """A fresh key for CRMA_WEBHOOK_SECRET_KEYS."""
    return Fernet.generate_key().decode("ascii")


class SecretBox:
    def __init__(self, keys: tuple[str, ...]) -> None:
        self._fernet = MultiFernet([Fernet(key) for key in keys]) if keys else None
        self._current = Fernet(keys[0]) if keys else None

    @property
    def seals(self) -> bool:
        return self._fernet is not None

    def seal(self, secret: str) -> str:
        if self._current is None:
            return secret
        return SEALED_PREFIX + self._current.encrypt(secret.encode()).decode("ascii")

    def open(self, stored: str) -> str:
        if not stored.startswith(SEALED_PREFIX):
            return stored  # written unsealed (see the module docstring)
        if self._fernet is None:
            raise SecretKeyError("a sealed secret was found but CRMA_WEBHOOK_SECRET_KEYS is "
                                 "not set")
        try:
            return self._fernet.decrypt(_token(stored)).decode()
        except InvalidToken:
            raise SecretKeyError("a sealed secret opens with none of the keys in "
                                 "CRMA_WEBHOOK_SECRET_KEYS (was the key that sealed it "
                                 "removed?)") from None

    def is_current(self, stored: str) -> bool:
        """Whether `stored` is what `seal` writes now: sealed by the first key (or, with no
        key, unsealed)."""
        if self._current is None:
            return not stored.startswith(SEALED_PREFIX)
        if not stored.startswith(SEALED_PREFIX):
            return False
        try:
            self._current.decrypt(_token(stored))
        except InvalidToken:
            return False
        return True


def _token(stored: str) -> bytes:
    """The Fernet token of a sealed value."""
    return stored[len(SEALED_PREFIX):].encode()


@lru_cache(maxsize=8)
def box_for(keys: tuple[str, ...]) -> SecretBox:
    """The box of `Settings.webhook_secret_key_list` (the keys were checked there); one per
    process and keys."""
    return SecretBox(keys)
