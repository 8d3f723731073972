"""Database credentials of one tenant, vended by the tenant-service's internal API and cached."""

from __future__ import annotations

import httpx

from tenantry_common.internal_api import DatabaseCredentials, decode_database_credentials

__all__ = ["CredentialClient", "DatabaseCredentials", "TenantUnavailableError"]


class TenantUnavailableError(Exception):
    """The tenant-service will not vend credentials for this tenant (unknown, suspended, not ready)."""

    def __init__(self, tenant_id: str, status: int) -> None:
        super().__init__(f"no credentials for tenant {tenant_id} (HTTP {status})")
        self.status = status


class CredentialClient:
    """Asks the tenant-service for credentials with a service token; caches them until told they are stale."""

    def __init__(self, base_url: str, service_token: str, *, timeout: float = 5.0) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {service_token}"},
            timeout=timeout,
        )
        self._cache: dict[str, DatabaseCredentials] = {}

    async def get(self, tenant_id: str) -> DatabaseCredentials:
        """Cached credentials, fetched on first use.

        Raises:
            TenantUnavailableError: the tenant-service refused.
            msgspec.DecodeError: the answer is not the internal API's credentials.
        """
        cached = self._cache.get(tenant_id)
        if cached is not None:
            return cached
        response = await self._http.get(f"/internal/v1/tenants/{tenant_id}/database")
        if response.status_code != 200:
            raise TenantUnavailableError(tenant_id, response.status_code)
        creds = decode_database_credentials(response.content)
        self._cache[tenant_id] = creds
        return creds

    def forget(self, tenant_id: str) -> None:
        """Drop cached credentials (after an authentication failure, or when the tenant is gone)."""
        self._cache.pop(tenant_id, None)

    async def close(self) -> None:
        """Release the HTTP client."""
        await self._http.aclose()
