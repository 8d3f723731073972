"""Step 2 — authenticate: an API key or a JWT, each checked cheaply enough for every request.

API keys: the checksum rejects malformed keys without any lookup; the keyed hash is looked up in memory.
JWTs: the algorithm is fixed by configuration; verified tokens are cached until they expire, so the signature
is checked once per token, not once per request. Every defect gives the same 401.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, NamedTuple

from gateway.directory import Directory, KeyEntry
from gateway.errors import unauthorized
from tenantry_common.apikeys import hash_api_key, is_well_formed
from tenantry_common.jwt_keys import InvalidTokenError, KeyRing

_MAX_CACHED_TOKENS = 100_000
_MAX_CACHED_DIGESTS = 100_000


class Principal(NamedTuple):
    """Who is calling: a tenant, and the API key the credential stands for (built per request: a NamedTuple)."""

    tenant_id: str
    key_id: str
    scope: str


class Authenticator:
    """Turns the request's credential into a :class:`Principal`."""

    def __init__(
        self, directory: Directory, hash_secret: bytes, keys: KeyRing, *, issuer: str, audience: str, leeway: float
    ) -> None:
        self._directory = directory
        self._secret = hash_secret
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        # Well-formed keys seen recently → their keyed hash: the checksum and HMAC run once per key, not per request.
        self._digests: dict[str, bytes] = {}
        self._verified: OrderedDict[str, tuple[dict[str, Any], float]] = OrderedDict()

    def use_keys(self, keys: KeyRing) -> None:
        """Verify with a new key ring from now on; tokens verified with the old one are checked again."""
        self._keys = keys
        self._verified.clear()

    def _usable_key(self, key: KeyEntry | None, now: float) -> KeyEntry:
        if key is None or not key.usable(now):
            raise unauthorized()
        tenant = self._directory.by_id.get(key.tenant_id)
        if tenant is None:
            raise unauthorized()
        return key

    def api_key(self, key: str) -> Principal:
        """The principal of an API key.

        Raises:
            GatewayError: 401 for malformed, unknown, revoked or expired keys alike.
        """
        digest = self._digests.get(key)
        if digest is None:
            if not is_well_formed(key):
                raise unauthorized()
            digest = hash_api_key(key, self._secret)
            if len(self._digests) >= _MAX_CACHED_DIGESTS:
                self._digests.clear()
            self._digests[key] = digest
        entry = self._usable_key(self._directory.keys_by_hash.get(digest), time.time())
        return Principal(tenant_id=entry.tenant_id, key_id=entry.id, scope=entry.scopes)

    def _claims(self, token: str, now: float) -> dict[str, Any]:
        cached = self._verified.get(token)
        if cached is not None and cached[1] > now - self._leeway:
            return cached[0]
        if len(token) > 8192:
            raise unauthorized()
        try:
            claims = self._keys.verify(token, audience=self._audience, issuer=self._issuer, leeway=self._leeway)
        except InvalidTokenError:
            raise unauthorized() from None
        if not isinstance(claims.get("tid"), str) or not isinstance(claims.get("exp"), int | float):
            raise unauthorized()
        self._verified[token] = (claims, float(claims["exp"]))
        if len(self._verified) > _MAX_CACHED_TOKENS:
            self._verified.popitem(last=False)
        return claims

    def jwt(self, token: str) -> Principal:
        """The principal of an access token; the API key it was issued for must still be usable.

        Raises:
            GatewayError: 401 for any defect, and for a token whose API key was revoked since.
        """
        now = time.time()
        claims = self._claims(token, now)
        if claims["exp"] + self._leeway <= now:
            self._verified.pop(token, None)
            raise unauthorized()
        key = self._usable_key(self._directory.keys_by_id.get(str(claims.get("sub"))), now)
        if key.tenant_id != claims["tid"]:
            raise unauthorized()
        return Principal(tenant_id=key.tenant_id, key_id=key.id, scope=str(claims.get("scope", "")))
