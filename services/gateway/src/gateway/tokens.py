"""Tokens the gateway signs: access tokens (``POST /_gateway/token``, and users' logins) and the per-request
``X-Tenant-Token``.

X-Tenant-Tokens are cached per (tenant, key or user or external subject, scope, plan, issuer, role) and re-signed
when less than half their lifetime is left, so signing costs nothing on most requests while every token an
upstream sees is at most 60 s old. For a token of a tenant's own identity provider, ``sub`` is that provider's
subject and the ``idp`` claim names the tenant's issuer (its id in the admin API). For a tenant's user, ``sub``
and ``uid`` are the user's id; ``role`` is there for users, and for external tokens whose issuer maps one.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec

from gateway.authenticate import Principal
from gateway.directory import TenantEntry
from tenantry_common.jwt_keys import KeyRing


class TokenIssuer:
    """Signs and caches the gateway's tokens."""

    def __init__(
        self,
        keys: KeyRing,
        *,
        issuer: str,
        audience: str,
        upstream_audience: str,
        access_ttl: int,
        tenant_ttl: int,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._upstream_audience = upstream_audience
        self.access_ttl = access_ttl
        self._tenant_ttl = tenant_ttl
        self._tenant_tokens: dict[tuple[str, str, str, str, str, str, str], tuple[bytes, float]] = {}
        self.jwks_body = msgspec.json.encode(keys.jwks())

    def use_keys(self, keys: KeyRing) -> None:
        """Sign with a new key ring from now on (tokens cached from the old one are dropped)."""
        self._keys = keys
        self._tenant_tokens.clear()
        self.jwks_body = msgspec.json.encode(keys.jwks())

    def _sign(self, audience: str, ttl: int, now: int, principal: Principal, extra: dict[str, Any]) -> str:
        """Sign the claims every token of the gateway carries, plus ``extra``."""
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": audience,
            "sub": principal.key_id,
            "scope": principal.scope,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            **extra,
        }
        return self._keys.sign(claims)

    def access_token(self, principal: Principal) -> str:
        """A new access token for the principal (for a user: with its ``role`` and session, ``sid``)."""
        extra: dict[str, Any] = {"tid": principal.tenant_id}
        if principal.user_id:
            extra["role"] = principal.role
            extra["sid"] = principal.session_id
        return self._sign(self._audience, self.access_ttl, int(time.time()), principal, extra)

    def tenant_token(self, tenant: TenantEntry, principal: Principal) -> bytes:
        """The X-Tenant-Token for a forwarded request (cached while more than half its life is left)."""
        now = time.time()
        # A user's id is its key_id: the role tells a user from an API key of the same id (ids are UUIDs anyway).
        cache_key = (
            tenant.id, tenant.slug, principal.key_id, principal.scope, tenant.plan, principal.issuer, principal.role
        )  # fmt: skip
        cached = self._tenant_tokens.get(cache_key)
        if cached is not None and cached[1] - now > self._tenant_ttl / 2:
            return cached[0]
        issued = int(now)
        extra: dict[str, Any] = {"tid": tenant.id, "slug": tenant.slug, "plan": tenant.plan}
        if principal.issuer:
            extra["idp"] = principal.issuer  # sub is then a user of the tenant's identity provider, not a key id
        if principal.user_id:
            extra["uid"] = principal.user_id
        if principal.role:
            extra["role"] = principal.role
        token = self._sign(self._upstream_audience, self._tenant_ttl, issued, principal, extra).encode()
        if len(self._tenant_tokens) > 100_000:
            self._tenant_tokens.clear()
        self._tenant_tokens[cache_key] = (token, issued + self._tenant_ttl)
        return token
