"""The registry follows ``tenantry_common.lifecycle``: its CHECK constraint, and plan changes for every tenant
that has a database (a soft-deleted one included)."""

from __future__ import annotations

import re

import asyncpg
import httpx

from support.assertions import create_tenant, unique_slug
from support.platform import Installation
from tenantry_common.lifecycle import TenantStatus

_RATES = {"requests_per_minute": 600, "requests_per_day": 50_000}


async def test_the_registry_check_constraint_allows_exactly_the_lifecycle_statuses(installation: Installation) -> None:
    conn = await asyncpg.connect(installation.database_url)
    try:
        definition = await conn.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'ck_tenants_status'"
            " OR (conrelid = 'tenants'::regclass AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%status%')"
        )
    finally:
        await conn.close()
    assert set(re.findall(r"'([a-z]+)'", definition)) == {s.value for s in TenantStatus}


async def test_a_plan_change_reaches_the_connection_limit_of_a_soft_deleted_tenant(
    api: httpx.AsyncClient, installation: Installation
) -> None:
    plan = unique_slug("pl", "deleted")
    assert (await api.put(f"/admin/plans/{plan}", json={"limits": {**_RATES, "max_connections": 3}})).status_code == 200
    tenant = await create_tenant(api, unique_slug("lc", "deleted"), plan=plan)
    assert (await api.delete(f"/admin/tenants/{tenant['id']}")).status_code == 200
    assert (await api.put(f"/admin/plans/{plan}", json={"limits": {**_RATES, "max_connections": 9}})).status_code == 200
    conn = await asyncpg.connect(installation.pg_url)
    try:
        limit = await conn.fetchval("SELECT rolconnlimit FROM pg_roles WHERE rolname = $1", tenant["database"]["name"])
    finally:
        await conn.close()
    assert limit == 9
