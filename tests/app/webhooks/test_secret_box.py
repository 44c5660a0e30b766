"""Webhook secrets sealed at rest (app/domain/secret_box.py): sealing, rotation, secrets
written unsealed, a key that is gone, and the setting's check of its keys."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.domain.secret_box import SEALED_PREFIX, SecretBox, SecretKeyError, new_key
from app.domain.webhooks import new_secret
from app.settings import Settings

OLD, NEW = new_key(), new_key()


def test_sealed_secrets_open_and_hold_no_plaintext() -> None:
    box, secret = SecretBox((OLD,)), new_secret()
    sealed = box.seal(secret)
    assert sealed.startswith(SEALED_PREFIX) and secret not in sealed
    assert secret.removeprefix("whsec_") not in sealed
    assert box.open(sealed) == secret and box.is_current(sealed)
    assert box.seal(secret) != sealed  # a fresh IV each time


def test_rotation_opens_with_an_older_key_and_reseals_with_the_first() -> None:
    secret = new_secret()
    sealed_old = SecretBox((OLD,)).seal(secret)
    rotated = SecretBox((NEW, OLD))
    assert rotated.open(sealed_old) == secret and not rotated.is_current(sealed_old)
    resealed = rotated.seal(rotated.open(sealed_old))
    assert rotated.is_current(resealed) and SecretBox((NEW,)).open(resealed) == secret
    with pytest.raises(SecretKeyError, match="none of the keys"):
        SecretBox((NEW,)).open(sealed_old)


def test_unsealed_secrets_read_as_they_are_and_no_key_seals_nothing() -> None:
    secret = new_secret()
    assert SecretBox((OLD,)).open(secret) == secret
    assert not SecretBox((OLD,)).is_current(secret)
    bare = SecretBox(())
    assert not bare.seals and bare.seal(secret) == secret and bare.is_current(secret)
    with pytest.raises(SecretKeyError, match="not set"):
        bare.open(SecretBox((OLD,)).seal(secret))


def test_the_setting_names_a_key_that_is_not_a_fernet_key() -> None:
    settings = Settings(webhook_secret_keys=f" {NEW} , {OLD} ")
    assert settings.webhook_secret_key_list == (NEW, OLD)
    with pytest.raises(ValidationError, match="key 2 of 2 is not a Fernet key"):
        Settings(webhook_secret_keys=f"{NEW},not-a-key")
    assert Settings(webhook_secret_keys="").webhook_secret_key_list == ()
