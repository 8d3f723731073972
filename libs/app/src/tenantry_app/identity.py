"""Who a request is for: the gateway's ``X-Tenant-Token``, verified against its JWKS.

An app behind the gateway must not be reachable around it: a request without a valid token is refused. Keys are
fetched from the gateway's ``/_gateway/jwks.json``, cached, and re-fetched (at most every few seconds) when a
token names a key id not seen yet, so gateway key rotation needs no app restart.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import structlog

from tenantry_common.problems import ForbiddenError

_log = structlog.get_logger("tenantry.app.identity")


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True, slots=True)
class TenantIdentity:
    """The tenant (and API key, user or external subject) a request was authenticated for by the gateway."""

    tenant_id: str
    slug: str
    subject: str
    scope: str
    plan: str
    #: ``admin``, ``user`` or ``viewer`` for a tenant's user (or an external issuer's token that maps one); None for
    #: API keys and tokens without a role.
    role: str | None = None
    #: The tenant user's id when a user signed in with the platform's login; None otherwise.
    user_id: str | None = None


def require_role(identity: TenantIdentity, *roles: str) -> None:
    """Let the request through only when its role is one of ``roles``.

    A credential without a role (an API key, an external token whose issuer maps none) is governed by its scopes,
    not by roles, and passes.

    Raises:
        ForbiddenError: 403 ``forbidden`` (problem+json through the apps' problem handlers).
    """
    if identity.role is not None and identity.role not in roles:
        raise ForbiddenError(f"The role {identity.role!r} may not do this.")


class InvalidTenantTokenError(Exception):
    """The request carries no valid X-Tenant-Token."""


class TokenVerifier:
    """Verifies X-Tenant-Tokens with the gateway's published keys."""

    def __init__(
        self,
        jwks_url: str,
        *,
        issuer: str = "tenantry-gateway",
        audience: str = "tenantry-upstream",
        algorithms: tuple[str, ...] = ("EdDSA",),
        leeway: float = 5.0,
        refetch_interval: float = 5.0,
        timeout: float = 3.0,
    ) -> None:
        self._url = jwks_url
        self._issuer = issuer
        self._audience = audience
        self._algorithms = list(algorithms)
        self._leeway = leeway
        self._refetch_interval = refetch_interval
        self._http = httpx.AsyncClient(timeout=timeout)
        self._keys: dict[str, Any] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Fetch the JWKS now (errors are logged; the previous keys stay)."""
        async with self._lock:
            if time.monotonic() - self._fetched_at < self._refetch_interval and self._keys:
                return
            self._fetched_at = time.monotonic()
            try:
                response = await self._http.get(self._url)
                response.raise_for_status()
                jwk_set = jwt.PyJWKSet.from_dict(response.json())
            except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
                _log.warning("jwks_fetch_failed", error=type(exc).__name__)
                return
            self._keys = {key.key_id: key for key in jwk_set.keys if key.key_id}

    async def verify(self, token: str) -> TenantIdentity:
        """The identity in a valid token.

        Raises:
            InvalidTenantTokenError: missing, malformed, expired, wrongly signed or for another audience.
        """
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise InvalidTenantTokenError("malformed token") from None
        if not isinstance(kid, str):
            raise InvalidTenantTokenError("no key id")
        if kid not in self._keys:
            await self.refresh()
        key = self._keys.get(kid)
        if key is None:
            raise InvalidTenantTokenError("unknown signing key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "tid", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidTenantTokenError(type(exc).__name__) from None
        return TenantIdentity(
            tenant_id=str(claims["tid"]),
            slug=str(claims.get("slug", "")),
            subject=str(claims["sub"]),
            scope=str(claims.get("scope", "")),
            plan=str(claims.get("plan", "")),
            role=_optional_str(claims.get("role")),
            user_id=_optional_str(claims.get("uid")),
        )

    async def close(self) -> None:
        """Release the HTTP client."""
        await self._http.aclose()
