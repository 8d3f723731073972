"""``tenantctl migrate-tenants``: a new schema migration rolled out over a fleet, one tenant broken on purpose."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import asyncpg
import pytest

from support.platform import Installation, with_database
from tenant_service.context import AppContext
from tenant_service.provisioning.schema import DEFAULT_MIGRATIONS_DIR
from tenant_service.tenants.schemas import TenantCreate
from tenant_service.tenants.service import TenantService

pytestmark = pytest.mark.e2e

FLEET_SIZE = 50
BROKEN = "fleet-17"
MIGRATION_0003 = """\
-- Pinned notes and tags.
ALTER TABLE notes ADD COLUMN pinned boolean NOT NULL DEFAULT false;
CREATE INDEX notes_pinned_idx ON notes (created_at) WHERE pinned;
CREATE TABLE note_tags (
    note_id bigint NOT NULL REFERENCES notes (id) ON DELETE CASCADE,
    tag text NOT NULL,
    PRIMARY KEY (note_id, tag)
);
"""

NOTES_0002 = """
CREATE TABLE notes (
    id bigserial PRIMARY KEY,
    body text NOT NULL CHECK (length(body) <= 10000),
    created_at timestamptz NOT NULL DEFAULT now()
)
"""

_SUMMARY = re.compile(r"schema head (\d+): (\d+) migrated, (\d+) already up to date, (\d+) failed")


def _summary(stdout: str) -> tuple[int, int, int, int]:
    match = _SUMMARY.search(stdout)
    assert match, stdout
    head, migrated, up_to_date, failed = (int(g) for g in match.groups())
    return head, migrated, up_to_date, failed


async def _tenant_state(pg_url: str, database: str) -> dict[str, object]:
    """What a tenant database looks like from the inside (read as superuser)."""
    conn = await asyncpg.connect(with_database(pg_url, database))
    try:
        return {
            "version": await conn.fetchval("SELECT max(version) FROM tenantry_schema_migrations"),
            "pinned": await conn.fetchval(
                "SELECT 1 FROM information_schema.columns WHERE table_name = 'notes' AND column_name = 'pinned'"
            ),
            "tags": await conn.fetchval("SELECT to_regclass('note_tags') IS NOT NULL"),
            "owners": {
                r["owner"]
                for r in await conn.fetch(
                    "SELECT DISTINCT pg_get_userbyid(relowner) AS owner FROM pg_class "
                    "WHERE relnamespace = 'public'::regnamespace"
                )
            },
        }
    finally:
        await conn.close()


async def _registry_versions(inst: Installation) -> dict[str, int | None]:
    conn = await asyncpg.connect(inst.database_url)
    try:
        return {r["slug"]: r["schema_version"] for r in await conn.fetch("SELECT slug, schema_version FROM tenants")}
    finally:
        await conn.close()


async def _template_version(inst: Installation) -> int:
    conn = await asyncpg.connect(inst.database_url)
    try:
        return int(await conn.fetchval("SELECT template_version FROM installation"))
    finally:
        await conn.close()


async def _states(pg_url: str, databases: dict[str, str]) -> dict[str, dict[str, object]]:
    gate = asyncio.Semaphore(10)

    async def one(slug: str, database: str) -> tuple[str, dict[str, object]]:
        async with gate:
            return slug, await _tenant_state(pg_url, database)

    return dict(await asyncio.gather(*(one(s, d) for s, d in databases.items())))


def _migrate_tenants(inst: Installation, env: dict[str, str]) -> tuple[int, str]:
    result = inst.tenantctl("migrate-tenants", "--concurrency", "8", check=False, env=env, timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout


async def test_migrate_tenants_rolls_out_a_migration_and_resumes_after_fixing_the_broken_tenant(
    fresh_installation: Installation, pg_url: str, tmp_path: Path
) -> None:
    inst = fresh_installation
    migrations = tmp_path / "migrations"
    shutil.copytree(DEFAULT_MIGRATIONS_DIR, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    env = {"TENANT_MIGRATIONS_DIR": str(migrations)}

    ctx = AppContext.build(inst.settings(**env))
    try:
        service = TenantService(ctx)
        gate = asyncio.Semaphore(8)

        async def create(slug: str) -> tuple[str, str, str]:
            async with gate:
                created = await service.create(TenantCreate(slug=slug, name=slug.title()), actor="test")
            assert created.view.status == "active"
            assert created.view.database.schema_version == 2
            return slug, created.view.database.name, created.view.id

        rows = await asyncio.gather(*(create(f"fleet-{i:02d}") for i in range(FLEET_SIZE)))
        databases = {slug: database for slug, database, _ in rows}
        # The database name is also the tenant's role.
        roles = databases

        # Suspended and soft-deleted tenants keep their database, so they follow the schema too.
        await service.transition("fleet-03", "suspend", actor="test")
        await service.transition("fleet-04", "delete", actor="test")

        # A new schema version ships; one tenant has drifted so that it cannot apply it.
        (migrations / "0003_add_column.sql").write_text(MIGRATION_0003, encoding="utf-8")
        broken_conn = await asyncpg.connect(with_database(pg_url, databases[BROKEN]))
        try:
            await broken_conn.execute("DROP TABLE notes")
        finally:
            await broken_conn.close()

        # First run: 49 migrated, the broken one reported by slug, exit 1.
        code, out = _migrate_tenants(inst, env)
        assert code == 1, out
        assert _summary(out) == (3, FLEET_SIZE - 1, 0, 1)
        failed_lines = [line for line in out.splitlines() if line.startswith("FAILED ")]
        assert len(failed_lines) == 1, out
        assert failed_lines[0].startswith(f"FAILED {BROKEN}: UndefinedTableError"), out

        states = await _states(pg_url, databases)
        for slug, state in states.items():
            if slug == BROKEN:
                continue
            assert state["version"] == 3, (slug, state)
            assert state["pinned"], slug
            assert state["tags"], slug
            # What the migration created belongs to the tenant (its role, or pg_database_owner: the cloned
            # objects, whose one member is the database's owner), not to the superuser that ran it.
            assert state["owners"] == {roles[slug], "pg_database_owner"}, (slug, state)
        # The broken tenant's transaction was rolled back as a whole: still at 2, nothing of 0003 left.
        assert states[BROKEN]["version"] == 2
        assert not states[BROKEN]["tags"]
        registry = await _registry_versions(inst)
        assert registry[BROKEN] == 2
        assert {slug: v for slug, v in registry.items() if slug != BROKEN} == {
            slug: 3 for slug in databases if slug != BROKEN
        }
        assert await _template_version(inst) == 3

        # The operator repairs the tenant (recreates the table as the tenant's role) and runs it again.
        fix_conn = await asyncpg.connect(with_database(pg_url, databases[BROKEN]))
        try:
            async with fix_conn.transaction():
                await fix_conn.execute(f'SET LOCAL ROLE "{roles[BROKEN]}"')
                await fix_conn.execute(NOTES_0002)
        finally:
            await fix_conn.close()

        code, out = _migrate_tenants(inst, env)
        assert code == 0, out
        assert _summary(out) == (3, 1, FLEET_SIZE - 1, 0)
        assert "FAILED" not in out

        states = await _states(pg_url, databases)
        assert {slug: state["version"] for slug, state in states.items()} == dict.fromkeys(databases, 3)
        assert states[BROKEN]["pinned"]
        assert states[BROKEN]["tags"]
        assert states[BROKEN]["owners"] == {roles[BROKEN], "pg_database_owner"}
        assert await _registry_versions(inst) == dict.fromkeys(databases, 3)
        assert await _template_version(inst) == 3

        # A third run has nothing to do.
        code, out = _migrate_tenants(inst, env)
        assert code == 0, out
        assert _summary(out) == (3, 0, FLEET_SIZE, 0)

        # The template is at the head: a tenant created now starts at version 3, with the new objects, its own.
        late = await service.create(TenantCreate(slug="fleet-late", name="Late"), actor="test")
        assert late.view.status == "active"
        assert late.view.database.schema_version == 3
        assert late.view.database.template_version == 3
        late_state = await _tenant_state(pg_url, late.view.database.name)
        assert late_state["version"] == 3
        assert late_state["pinned"]
        assert late_state["tags"]
        assert late_state["owners"] == {"pg_database_owner"}  # the template's objects, 0003's included
    finally:
        await ctx.close()
