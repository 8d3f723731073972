"""Asymmetric signing keys for the platform's JWTs, and their JWKS.

Every gateway replica loads the same key ring from a secret (``JWT_SIGNING_KEYS="kid:key,..."``): the first key
signs, every key stays published in the JWKS and is accepted, so a key is rotated by putting a new one first and
removing the old one once its tokens have expired. The algorithm is configuration, never read from a token.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tenantry_common.settings import ConfigError

SUPPORTED_ALGORITHMS: Final = ("EdDSA", "RS256")
#: Algorithms a tenant's external issuer may use: asymmetric only (never HS*, never ``none``), so a published
#: JWKS can never double as an HMAC secret.
EXTERNAL_ALGORITHMS: Final = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
PrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = ed25519.Ed25519PublicKey | rsa.RSAPublicKey


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def generate_signing_key(algorithm: str = "EdDSA") -> str:
    """A new private key, encoded for ``JWT_SIGNING_KEYS`` (base64url of a PKCS#8 PEM)."""
    key: PrivateKey = (
        ed25519.Ed25519PrivateKey.generate()
        if algorithm == "EdDSA"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return _b64url(pem)


def _load_private(kid: str, material: str, algorithm: str) -> PrivateKey:
    try:
        raw = _b64decode(material)
        key = serialization.load_pem_private_key(raw, password=None)
    except (binascii.Error, ValueError, TypeError):
        raise ConfigError(f"JWT signing key {kid!r} is not a base64url PKCS#8 PEM private key") from None
    expected = ed25519.Ed25519PrivateKey if algorithm == "EdDSA" else rsa.RSAPrivateKey
    if not isinstance(key, expected):
        raise ConfigError(f"JWT signing key {kid!r} does not match the algorithm {algorithm}")
    return key


def public_jwk(kid: str, key: PublicKey, algorithm: str) -> dict[str, str]:
    """The JWK of a public key."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw), "kid": kid, "alg": algorithm, "use": "sig"}
    numbers = key.public_numbers()
    return {
        "kty": "RSA",
        "n": _b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
        "e": _b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
        "kid": kid,
        "alg": algorithm,
        "use": "sig",
    }


class InvalidTokenError(Exception):
    """A token failed verification; the reason is for logs, never for the client."""


@dataclass(frozen=True)
class KeyRing:
    """Signing keys: the first signs, all verify and are published."""

    algorithm: str
    primary_kid: str
    private_keys: Mapping[str, PrivateKey]

    @classmethod
    def from_config(cls, spec: str, algorithm: str) -> KeyRing:
        """Parse ``kid:key,kid:key``.

        Raises:
            ConfigError: unknown algorithm, empty ring, or a key that does not load.
        """
        if algorithm not in SUPPORTED_ALGORITHMS:
            raise ConfigError(f"JWT_ALGORITHM must be one of {', '.join(SUPPORTED_ALGORITHMS)}")
        keys: dict[str, PrivateKey] = {}
        for entry in (e.strip() for e in spec.split(",")):
            if not entry:
                continue
            kid, sep, material = entry.partition(":")
            if not sep or not kid or not material:
                raise ConfigError("JWT_SIGNING_KEYS entries must look like kid:base64url-pem")
            keys[kid] = _load_private(kid, material, algorithm)
        if not keys:
            raise ConfigError("JWT_SIGNING_KEYS must hold at least one key")
        return cls(algorithm=algorithm, primary_kid=next(iter(keys)), private_keys=keys)

    def sign(self, claims: Mapping[str, Any]) -> str:
        """A compact JWS of ``claims`` signed with the primary key, ``kid`` in the header."""
        return jwt.encode(
            dict(claims),
            self.private_keys[self.primary_kid],
            algorithm=self.algorithm,
            headers={"kid": self.primary_kid},
        )

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public keys as a JWK Set."""
        return {"keys": [public_jwk(kid, key.public_key(), self.algorithm) for kid, key in self.private_keys.items()]}

    def verify(self, token: str, *, audience: str, issuer: str, leeway: float = 30) -> dict[str, Any]:
        """Verify signature, ``exp`` (required), ``nbf``, ``iat``, ``iss`` and ``aud``.

        Raises:
            InvalidTokenError: any defect at all.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidTokenError("malformed token") from exc
        kid = header.get("kid")
        key = self.private_keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidTokenError("unknown kid")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.public_key(),
                algorithms=[self.algorithm],
                audience=audience,
                issuer=issuer,
                leeway=leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidTokenError(type(exc).__name__) from exc
        return claims
