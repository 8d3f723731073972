"""tenantry_app.TenantDatabases at its budget: the least recently used engine closes while the next tenant's
credentials are fetched, and the budget still holds at every moment (real tenant-service, real Postgres)."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
from sqlalchemy import text

from support.platform import Installation, TenantServiceProcess
from tenantry_app.credentials import CredentialClient, DatabaseCredentials
from tenantry_app.databases import TenantDatabases

APP_NAME = "eviction-test"


class _Observed(CredentialClient):
    """The real client; it notes how many engines were closing at each fetch from the tenant-service."""

    def __init__(self, *args: object, databases: list[TenantDatabases], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._databases = databases
        self.closing_at_fetch: list[int] = []

    async def get(self, tenant_id: str) -> DatabaseCredentials:
        if tenant_id not in self._cache:
            self.closing_at_fetch.append(self._databases[0]._closing)
        return await super().get(tenant_id)


async def _connections(pg_url: str) -> int:
    conn = await asyncpg.connect(pg_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", APP_NAME))
    finally:
        await conn.close()


async def test_eviction_overlaps_the_credential_fetch_and_keeps_the_budget(
    service: TenantServiceProcess, installation: Installation, pg_url: str
) -> None:
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {installation.admin_token}"}) as admin:
        ids = []
        for slug in ("evict-a", "evict-b", "evict-c"):
            response = admin.post("/admin/tenants", json={"slug": slug, "name": slug}, timeout=60)
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
    holder: list[TenantDatabases] = []
    credentials = _Observed(service.url, installation.service_token, databases=holder)
    databases = TenantDatabases(credentials, budget=1, application_name=APP_NAME)
    holder.append(databases)
    seen = []
    try:
        for tenant_id in [*ids, ids[0]]:
            async with databases.session(tenant_id) as session:
                seen.append(await session.scalar(text("SELECT current_database()")))
            assert await _connections(pg_url) <= 1
            assert databases.active_tenants() == [tenant_id]
        # First fetch: nothing to evict. Then each new tenant's fetch ran while the previous engine was closing.
        assert credentials.closing_at_fetch == [0, 1, 1]
        # Back to the first tenant: cached credentials, the close is simply awaited; still one connection.
        assert len(set(seen[:3])) == 3
        assert seen[3] == seen[0]
    finally:
        await databases.close()
        await credentials.close()
    await asyncio.sleep(0)
    assert await _connections(pg_url) == 0
