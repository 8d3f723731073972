"""Test helpers around an installation: its registry and cluster objects, the service in-process.

The installation itself, the platform's processes and the readiness waits live in :mod:`tenantry_devtools` (one
launcher for the tests, ``make bench`` and ``make dev``); they are re-exported here for brevity.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx

from tenantry_devtools.platform import Installation, Tenant, TenantServiceProcess, with_database
from tenantry_devtools.processes import ROOT, free_port, wait_for, wait_until

__all__ = [
    "ROOT",
    "Installation",
    "Tenant",
    "TenantServiceProcess",
    "assert_no_orphans",
    "cluster_objects",
    "directory_page",
    "free_port",
    "in_process",
    "registry",
    "template_open",
    "tenant_row",
    "wait_for",
    "wait_until",
    "with_database",
]


@contextlib.asynccontextmanager
async def template_open(pg_url: str, template: str) -> AsyncIterator[asyncpg.Connection]:
    """The template accepts connections for the block (it refuses them otherwise); yields a superuser
    connection to the maintenance database."""
    admin = await asyncpg.connect(pg_url, timeout=10)
    try:
        await admin.execute(f'ALTER DATABASE "{template}" ALLOW_CONNECTIONS true')
        try:
            yield admin
        finally:
            await admin.execute(f'ALTER DATABASE "{template}" ALLOW_CONNECTIONS false')
    finally:
        await admin.close()


async def directory_page(api: httpx.AsyncClient, installation: Installation, since: int = 0) -> dict[str, Any]:
    """``GET /internal/v1/directory/?since=`` with the installation's gateway token (what gateways sync from)."""
    response = await api.get(
        "/internal/v1/directory/",
        params={"since": since},
        headers={"Authorization": f"Bearer {installation.gateway_token}"},
    )
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def cluster_objects(pg_url: str, prefix: str) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """Databases and roles whose name starts with ``prefix``, with their COMMENT (the ownership marker)."""
    conn = await asyncpg.connect(pg_url)
    try:
        dbs = await conn.fetch(
            "SELECT datname AS n, shobj_description(oid, 'pg_database') AS c FROM pg_database "
            "WHERE starts_with(datname, $1)",
            prefix,
        )
        roles = await conn.fetch(
            "SELECT rolname AS n, shobj_description(oid, 'pg_authid') AS c FROM pg_roles "
            "WHERE starts_with(rolname, $1)",
            prefix,
        )
    finally:
        await conn.close()
    return {r["n"]: r["c"] for r in dbs}, {r["n"]: r["c"] for r in roles}


async def registry(inst: Installation, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Rows of a query on the installation's registry (master) database."""
    conn = await asyncpg.connect(inst.database_url, timeout=10)
    try:
        return list(await conn.fetch(sql, *args, timeout=30))
    finally:
        await conn.close()


async def tenant_row(inst: Installation, slug: str) -> asyncpg.Record | None:
    """The registry row of a tenant, or None."""
    rows = await registry(inst, "SELECT * FROM tenants WHERE slug = $1", slug)
    return rows[0] if rows else None


async def assert_no_orphans(inst: Installation, pg_url: str) -> list[asyncpg.Record]:
    """Nobody stuck half-way; every live tenant has its database and role; nothing of ours is unreferenced."""
    rows = await registry(inst, "SELECT id, slug, status, db_name, db_role FROM tenants")
    stuck = [r["slug"] for r in rows if r["status"] in ("provisioning", "deleting")]
    assert not stuck, f"tenants stuck: {stuck}"
    dbs, roles = await cluster_objects(pg_url, inst.prefix)
    live = [r for r in rows if r["status"] in ("active", "suspended", "deleted")]
    assert set(dbs) == {r["db_name"] for r in live}, "databases without a live tenant, or missing ones"
    assert set(roles) == {r["db_role"] for r in live}, "roles without a live tenant, or missing ones"
    return rows


@contextlib.asynccontextmanager
async def in_process(inst: Installation, **env: str) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The tenant-service app in-process on ``inst`` (``env`` overrides), with a context of its own, served on the
    test's event loop so gathered requests really overlap; yields the admin client and the context."""
    from tenant_service.app import create_app
    from tenant_service.context import AppContext

    ctx = AppContext.build(inst.settings(**env))
    app = create_app(ctx, run_background=False)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver.local",
            headers={"Authorization": f"Bearer {inst.admin_token}"},
            timeout=60,
        ) as client:
            yield client, ctx
    finally:
        await app.state.background.stop()
        await ctx.close()
