"""Encryption at rest of tenant database passwords, with keys that rotate without downtime.

AES-256-GCM with a key ring: the first key encrypts, every key may decrypt, and the key id travels in the
ciphertext. The tenant id is bound as associated data, so a ciphertext copied onto another tenant's row
fails to decrypt instead of handing that tenant someone else's password.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tenantry_common.settings import ConfigError

_VERSION = "v1"


class DecryptionError(Exception):
    """A ciphertext could not be decrypted (unknown key, tampered, or bound to another context)."""


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def generate_key() -> str:
    """A fresh random key in the ``ENCRYPTION_KEYS`` format's value form (URL-safe base64)."""
    return _b64e(AESGCM.generate_key(bit_length=256))


@dataclass(frozen=True)
class SecretBox:
    """A key ring that encrypts with its primary key and decrypts with any."""

    primary_kid: str
    keys: dict[str, AESGCM]

    @classmethod
    def from_config(cls, spec: str) -> SecretBox:
        """Parse ``kid:key,kid:key`` (the first is primary).

        Raises:
            ConfigError: the spec is empty or a key is not 32 bytes of base64.
        """
        keys: dict[str, AESGCM] = {}
        primary = ""
        for entry in (e.strip() for e in spec.split(",")):
            if not entry:
                continue
            kid, sep, material = entry.partition(":")
            if not sep or not kid.isalnum():
                raise ConfigError("ENCRYPTION_KEYS entries must look like kid:base64key (kid alphanumeric)")
            try:
                raw = _b64d(material)
            except (binascii.Error, ValueError):
                raise ConfigError(f"ENCRYPTION_KEYS key {kid!r} is not base64") from None
            if len(raw) != 32:
                raise ConfigError(f"ENCRYPTION_KEYS key {kid!r} must be 32 bytes")
            keys[kid] = AESGCM(raw)
            primary = primary or kid
        if not keys:
            raise ConfigError("ENCRYPTION_KEYS must name at least one key")
        return cls(primary_kid=primary, keys=keys)

    def encrypt(self, plaintext: str, context: str) -> str:
        """Encrypt ``plaintext`` bound to ``context`` (e.g. ``tenant:<id>:db``)."""
        nonce = os.urandom(12)
        sealed = self.keys[self.primary_kid].encrypt(nonce, plaintext.encode(), context.encode())
        return f"{_VERSION}.{self.primary_kid}.{_b64e(nonce + sealed)}"

    def decrypt(self, token: str, context: str) -> str:
        """Decrypt a value made by :meth:`encrypt` with the same ``context``.

        Raises:
            DecryptionError: wrong context, unknown key id, or tampered data.
        """
        try:
            version, kid, body = token.split(".", 2)
            if version != _VERSION:
                raise DecryptionError("unknown ciphertext version")
            key = self.keys.get(kid)
            if key is None:
                raise DecryptionError(f"unknown key id {kid!r}")
            raw = _b64d(body)
            return key.decrypt(raw[:12], raw[12:], context.encode()).decode()
        except (ValueError, InvalidTag, binascii.Error) as exc:
            raise DecryptionError("ciphertext does not decrypt in this context") from exc

    def needs_rotation(self, token: str) -> bool:
        """Whether ``token`` was encrypted with a key other than the primary."""
        parts = token.split(".", 2)
        return len(parts) != 3 or parts[1] != self.primary_kid
