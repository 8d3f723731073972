"""Who owns what a tenant database is cloned with, and the upgrade from templates made by earlier versions.

Current templates: every object belongs to ``pg_database_owner`` and the template's comment carries its schema
version, so a clone needs no connection to the new database. Earlier templates (objects owned by
``<template>_owner``, no comment) still produce working tenants (the old ``REASSIGN OWNED`` step) until the next
template migration converts them.
"""

from __future__ import annotations

import asyncpg

from support.platform import Installation, template_open, with_database
from tenant_service.context import AppContext
from tenant_service.provisioning.fleet import migrate_template
from tenant_service.tenants.schemas import TenantCreate
from tenant_service.tenants.service import TenantService


async def _owners(pg_url: str, database: str) -> set[str]:
    conn = await asyncpg.connect(with_database(pg_url, database))
    try:
        rows = await conn.fetch(
            "SELECT pg_get_userbyid(c.relowner) AS owner FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'S', 'i')"
            " UNION SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'public'"
        )
    finally:
        await conn.close()
    return {r["owner"] for r in rows}


async def _make_legacy(pg_url: str, inst: Installation) -> None:
    """Turn the template into what an earlier version made: objects owned by the template owner, no comment."""
    owner = f"{inst.template}_owner"
    async with template_open(pg_url, inst.template) as admin:
        tpl = await asyncpg.connect(with_database(pg_url, inst.template))
        try:
            tables = await tpl.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            for row in tables:  # ALTER TABLE takes the serial sequences and indexes along
                await tpl.execute(f'ALTER TABLE "{row["tablename"]}" OWNER TO "{owner}"')
            await tpl.execute(f'ALTER SCHEMA public OWNER TO "{owner}"')
        finally:
            await tpl.close()
        await admin.execute(f'COMMENT ON DATABASE "{inst.template}" IS NULL')


async def test_a_template_made_by_an_earlier_version_is_converted_by_the_next_migration(
    fresh_installation: Installation, pg_url: str
) -> None:
    inst = fresh_installation
    ctx = AppContext.build(inst.settings())
    try:
        service = TenantService(ctx)
        current = await service.create(TenantCreate(slug="own-current", name="Current"), actor="test")
        assert current.view.status == "active"
        assert await _owners(pg_url, current.view.database.name) == {"pg_database_owner"}

        await _make_legacy(pg_url, inst)
        legacy = await service.create(TenantCreate(slug="own-legacy", name="Legacy"), actor="test")
        assert legacy.view.status == "active"
        assert legacy.view.database.template_version == current.view.database.template_version
        # Secured the old way: everything handed to the tenant's own role, nothing left to the template owner.
        assert await _owners(pg_url, legacy.view.database.name) == {legacy.view.database.name}

        version = await migrate_template(ctx)
        assert version == current.view.database.template_version
        assert await _owners_of_template(pg_url, inst) == {"pg_database_owner"}
        after = await service.create(TenantCreate(slug="own-after", name="After"), actor="test")
        assert after.view.status == "active"
        assert after.view.database.template_version == version
        assert await _owners(pg_url, after.view.database.name) == {"pg_database_owner"}
    finally:
        await ctx.close()


async def _owners_of_template(pg_url: str, inst: Installation) -> set[str]:
    async with template_open(pg_url, inst.template):
        return await _owners(pg_url, inst.template)
