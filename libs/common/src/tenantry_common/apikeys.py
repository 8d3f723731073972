"""Tenant API keys: format, checksum and keyed hash.

A key looks like ``tk_`` + 32 base62 characters of randomness (about 190 bits) + 6 base62 characters of CRC-32
checksum. The checksum lets a gateway reject a mistyped or forged-looking key without any lookup; the secret is
never stored: only ``HMAC-SHA256(server secret, key)`` is. Keys carry enough entropy that a slow password hash
would add nothing but latency, and the HMAC keeps a leaked table useless without the server secret.
"""

from __future__ import annotations

import hmac
import secrets
import zlib
from typing import Final

API_KEY_PREFIX: Final = "tk_"
_ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RANDOM_LENGTH: Final = 32
_CHECKSUM_LENGTH: Final = 6
API_KEY_LENGTH: Final = len(API_KEY_PREFIX) + _RANDOM_LENGTH + _CHECKSUM_LENGTH
#: How many characters of a key are kept, in clear, to let people recognise it in a list.
DISPLAY_PREFIX_LENGTH: Final = len(API_KEY_PREFIX) + 8
_ALPHABET_SET: Final = frozenset(_ALPHABET)


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        digits.append(_ALPHABET[rem])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), _CHECKSUM_LENGTH)


def generate_api_key() -> str:
    """A new random API key with its checksum."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_LENGTH))
    return API_KEY_PREFIX + body + _checksum(body)


def looks_like_api_key(value: str) -> bool:
    """Whether ``value`` claims to be an API key (by its prefix), well-formed or not."""
    return value.startswith(API_KEY_PREFIX)


def is_well_formed(key: str) -> bool:
    """Whether ``key`` has the right shape and a valid checksum. Costs no lookup."""
    if len(key) != API_KEY_LENGTH or not key.startswith(API_KEY_PREFIX):
        return False
    rest = key[len(API_KEY_PREFIX) :]
    if not _ALPHABET_SET.issuperset(rest):
        return False
    body, check = rest[:_RANDOM_LENGTH], rest[_RANDOM_LENGTH:]
    return hmac.compare_digest(_checksum(body), check)


def display_prefix(key: str) -> str:
    """The non-secret beginning of a key shown in lists, e.g. ``tk_AbCd1234``."""
    return key[:DISPLAY_PREFIX_LENGTH]


def hash_api_key(key: str, secret: bytes) -> bytes:
    """The keyed hash stored and looked up instead of the key."""
    return hmac.digest(secret, key.encode("ascii"), "sha256")
