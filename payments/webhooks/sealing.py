"""Endpoint secrets: made (`whsec_` and 32 random bytes), shown once, and kept sealed.

The service must sign with the secret, so it cannot keep a hash as it does for API keys. It keeps
the secret encrypted with Fernet (AES-128-CBC with HMAC-SHA256, from `cryptography`) under
WEBHOOK_SECRET_KEY, which lives in the environment and never in the database: a dump or a replica
of the database alone yields no secret, and a sealed secret altered in the database is refused,
not used."""

from __future__ import annotations

import secrets

from cryptography.fernet import Fernet

from payments.settings import Settings

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix, not a secret
SECRET_BYTES = 32


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


class Sealer:
    """Seals and opens endpoint secrets with the service's key."""

    def __init__(self, settings: Settings) -> None:
        key = settings.webhook_secret_key.get_secret_value()
        if not key:
            raise RuntimeError("no WEBHOOK_SECRET_KEY: Settings.from_environ makes or requires one")
        self.fernet = Fernet(key)

    def seal(self, secret: str) -> str:
        return self.fernet.encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        """The secret; cryptography's InvalidToken when it was sealed with another key or altered."""
        return self.fernet.decrypt(sealed.encode()).decode()
