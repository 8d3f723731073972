"""The platform's secrets, generated for ``make dev``, ``make up`` and the container tests.

One generator per variable, so they are made alike everywhere (``Installation`` of the tests and the bench too). The
JWT signing key is made by the shared library (``tenantry_common.jwt_keys``): this package has no crypto of its own.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable
from typing import Final

__all__ = ["COMPOSE_SECRET_NAMES", "DEV_SECRET_NAMES", "new_secret"]


def _token(prefix: str) -> Callable[[], str]:
    return lambda: prefix + secrets.token_urlsafe(24)


def _encryption_keys() -> str:
    """A one-key ``ENCRYPTION_KEYS`` ring: ``k1:`` and 32 random bytes, URL-safe base64 (AES-256-GCM)."""
    return "k1:" + base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()


def _jwt_signing_keys() -> str:
    """A one-key ``JWT_SIGNING_KEYS`` ring with a new EdDSA key, made by the shared library."""
    from tenantry_common.jwt_keys import generate_signing_key  # noqa: PLC0415 - crypto only when a key is made

    return "k1:" + generate_signing_key()


_GENERATORS: Final[dict[str, Callable[[], str]]] = {
    "POSTGRES_PASSWORD": lambda: secrets.token_urlsafe(24),
    "ADMIN_TOKEN": _token("adm_"),
    "SERVICE_TOKEN": _token("svc_"),
    "GATEWAY_SERVICE_TOKEN": _token("gws_"),
    "ENCRYPTION_KEYS": _encryption_keys,
    "API_KEY_HASH_SECRET": lambda: secrets.token_urlsafe(32),
    "JWT_SIGNING_KEYS": _jwt_signing_keys,
}

#: What ``make dev`` generates (its Postgres is a throw-away server of its own, with no password).
DEV_SECRET_NAMES: Final = (
    "ADMIN_TOKEN",
    "SERVICE_TOKEN",
    "GATEWAY_SERVICE_TOKEN",
    "ENCRYPTION_KEYS",
    "API_KEY_HASH_SECRET",
    "JWT_SIGNING_KEYS",
)
#: The required secrets of docker-compose.tenant.yml.
COMPOSE_SECRET_NAMES: Final = ("POSTGRES_PASSWORD", *DEV_SECRET_NAMES)


def new_secret(name: str) -> str:
    """A fresh value for the secret ``name`` (one of :data:`COMPOSE_SECRET_NAMES`).

    Raises:
        KeyError: ``name`` is not a secret this module generates.
    """
    return _GENERATORS[name]()
