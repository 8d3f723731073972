"""Hardening, group 10: a hostile tenant. Nothing a tenant creates in its own database ever runs with the
platform's rights, and nothing it can change there is trusted by the platform.

The ``hostile`` fixture plants, with the tenant's own vended credentials (all a tenant ever has), every object
that would run code or mislead the platform if an admin path touched it carelessly:

* overloads in ``public`` of the built-ins the platform calls (an untyped parameter resolves to a
  ``double precision`` overload before ``bigint``; an identical signature wins once ``public`` comes first);
* a database-level and a role-level ``search_path`` that put ``public`` before ``pg_catalog``;
* row and statement triggers (plain, ``ENABLE ALWAYS``, ``ENABLE REPLICA``), a rule, a CHECK constraint, an index
  expression and a column default on its tables, the schema-version table replaced by a view whose every read
  calls a function;
* ``IS_TEMPLATE`` on its database and a marker comment forged to name a tenant the registry does not know.

Every planted function calls :data:`TRAP`, which logs who it runs as and then tries to become superuser
(``RESET ROLE`` first, which undoes a ``SET ROLE`` of a superuser session), to grant itself the predefined roles
and another tenant's role, to change the other tenant's password and to write into its database. Then every
admin path runs: provisioning, plan and connection-limit changes, ``tenantctl migrate`` / ``migrate-tenants`` /
``rotate-encryption``, suspend/resume, soft delete/restore, usage, credential vending, the reconciler and purge.
Each test ends with the same checks: no role gained an attribute or a membership, the victim tenant's data and
password are untouched, no trap ran as anyone but the hostile tenant, and no request got a 5xx.

Backups, restores, clones and exports run here too (``pg_dump``/``pg_restore`` and the export's reads log in as the
tenant), and so do moves between servers (``test_a_move_runs_tenant_code_only_as_the_tenant``).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from support.assertions import unique_slug
from support.platform import Installation, with_database
from support.servers import own_postgres
from tenant_service.app import create_app
from tenant_service.context import AppContext
from tenant_service.internal.service import vend_credentials
from tenant_service.operations.kinds import handlers
from tenant_service.operations.runner import OperationRunner
from tenant_service.provisioning.names import object_marker
from tenant_service.provisioning.reconciler import Reconciler
from tenant_service.provisioning.schema import DEFAULT_MIGRATIONS_DIR, load_migrations
from tenantry_devtools.servers import LocalPostgres

pytestmark = pytest.mark.e2e

#: A tenant schema migration shipped after the traps were planted: it writes to, alters and indexes the trapped
#: table, so every trap fires during ``migrate-tenants``.
MIGRATION_0003 = """\
ALTER TABLE notes ADD COLUMN pinned boolean NOT NULL DEFAULT false;
UPDATE notes SET pinned = true WHERE id = (SELECT min(id) FROM notes);
INSERT INTO notes (body) VALUES ('written by migration 0003');
CREATE INDEX notes_pinned_idx ON notes (created_at) WHERE pinned;
"""

#: The function every trap calls. Each attempt runs in its own sub-transaction, so a refused one does not stop
#: the next and the caller never sees an error.
TRAP = """
CREATE TABLE public.trap_log (
    at text, session_role text, current_role_name text, superuser boolean, escalated boolean
);
CREATE FUNCTION public.trap(at text) RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog AS $trap$
DECLARE
    attempts text[] := ARRAY[
        'RESET ROLE',
        'ALTER ROLE {hostile} SUPERUSER CREATEROLE CREATEDB REPLICATION BYPASSRLS',
        'GRANT pg_read_all_data, pg_write_all_data, pg_execute_server_program TO {hostile}',
        'GRANT {victim} TO {hostile}',
        'ALTER ROLE {victim} PASSWORD ''stolen-by-hostile''',
        'CREATE EXTENSION IF NOT EXISTS dblink',
        $$SELECT dblink_exec('host={host} port={port} dbname={victim_db} user=' || session_user,
            'INSERT INTO notes (body) VALUES (''written by the hostile tenant'')')$$
    ];
    attempt text;
BEGIN
    BEGIN
        INSERT INTO public.trap_log VALUES (
            at, session_user, current_user,
            (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), false);
    EXCEPTION WHEN OTHERS THEN NULL;  -- an index build runs it as the table's owner, in a restricted operation
    END;
    FOREACH attempt IN ARRAY attempts LOOP
        BEGIN
            EXECUTE attempt;
            IF attempt LIKE 'ALTER ROLE {hostile}%' THEN
                UPDATE public.trap_log SET escalated = true WHERE trap_log.at = trap.at;
            END IF;
        EXCEPTION WHEN OTHERS THEN NULL;
        END;
    END LOOP;
    RETURN true;
END
$trap$;
GRANT ALL ON public.trap_log TO PUBLIC;
CREATE FUNCTION public.trap_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM public.trap('trigger ' || TG_NAME); RETURN COALESCE(NEW, OLD); END $$;
CREATE FUNCTION public.trap_immutable(value text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN PERFORM public.trap('index expression or check'); RETURN value; END $$;
CREATE FUNCTION public.trap_default() RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.trap('column default'); RETURN 'default'; END $$;
"""

#: Overloads of built-ins the platform calls, and the objects that call :data:`TRAP` when the platform touches the
#: tenant's tables.
SHADOWS = """
CREATE FUNCTION public.pg_advisory_xact_lock(key double precision) RETURNS void LANGUAGE plpgsql AS $$
BEGIN PERFORM public.trap('pg_advisory_xact_lock(double precision)'); END $$;
CREATE FUNCTION public.pg_advisory_xact_lock(key bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN PERFORM public.trap('pg_advisory_xact_lock(bigint)'); END $$;
CREATE FUNCTION public.pg_advisory_lock(key double precision) RETURNS void LANGUAGE plpgsql AS $$
BEGIN PERFORM public.trap('pg_advisory_lock(double precision)'); END $$;
CREATE FUNCTION public.pg_advisory_unlock(key double precision) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN RETURN public.trap('pg_advisory_unlock(double precision)'); END $$;
CREATE FUNCTION public.to_regclass(name text) RETURNS regclass LANGUAGE plpgsql AS $$
BEGIN PERFORM public.trap('to_regclass(text)'); RETURN pg_catalog.to_regclass(name); END $$;
CREATE FUNCTION public.current_database() RETURNS name LANGUAGE plpgsql AS $$
BEGIN PERFORM public.trap('current_database()'); RETURN pg_catalog.current_database(); END $$;
CREATE FUNCTION public.pg_database_size(name name) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN PERFORM public.trap('pg_database_size(name)'); RETURN 0; END $$;
CREATE FUNCTION public.trap_max(state integer, value integer) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    PERFORM public.trap('max(integer)');
    RETURN CASE WHEN state IS NULL OR value > state THEN value ELSE state END;
END $$;
CREATE AGGREGATE public.max(integer) (SFUNC = public.trap_max, STYPE = integer);
CREATE FUNCTION public.trap_eq(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.trap('operator ='); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.trap_eq);

CREATE TRIGGER trap_row BEFORE INSERT OR UPDATE OR DELETE ON notes
    FOR EACH ROW EXECUTE FUNCTION public.trap_trigger();
CREATE TRIGGER trap_always AFTER INSERT OR UPDATE OR DELETE ON notes
    FOR EACH ROW EXECUTE FUNCTION public.trap_trigger();
ALTER TABLE notes ENABLE ALWAYS TRIGGER trap_always;
CREATE TRIGGER trap_replica AFTER INSERT OR UPDATE ON notes
    FOR EACH ROW EXECUTE FUNCTION public.trap_trigger();
ALTER TABLE notes ENABLE REPLICA TRIGGER trap_replica;
CREATE TRIGGER trap_statement AFTER TRUNCATE OR INSERT ON notes
    FOR EACH STATEMENT EXECUTE FUNCTION public.trap_trigger();
CREATE RULE trap_rule AS ON UPDATE TO notes DO ALSO SELECT public.trap('rule');
ALTER TABLE notes ADD CONSTRAINT trap_check CHECK (public.trap_immutable(body) IS NOT NULL);
CREATE INDEX trap_index ON notes ((public.trap_immutable(body)));
ALTER TABLE notes ADD COLUMN trap_column text DEFAULT public.trap_default();

ALTER TABLE tenantry_schema_migrations RENAME TO trap_versions;
CREATE VIEW tenantry_schema_migrations AS
    SELECT * FROM trap_versions WHERE public.trap('schema version view');
CREATE TRIGGER trap_versions_row BEFORE INSERT ON trap_versions
    FOR EACH ROW EXECUTE FUNCTION public.trap_trigger();
ALTER TABLE trap_versions ENABLE ALWAYS TRIGGER trap_versions_row;

INSERT INTO notes (body) VALUES ('the hostile tenant''s own note');
"""


#: Roles of the test installations (this module's and those of tests running beside it).
_OTHER_INSTALLATION = re.compile(r"^(t[0-9a-f]{8}_|tenantry_tpl_)")


@dataclass
class TenantDb:
    """A tenant and the credentials its app would be vended."""

    id: str
    slug: str
    database: str
    role: str
    password: str

    def dsn(self, pg_url: str) -> str:
        parts = httpx.URL(pg_url)
        return f"postgresql://{self.role}:{self.password}@{parts.host}:{parts.port}/{self.database}"


@dataclass
class Fixture:
    """What every test here works with."""

    inst: Installation
    ctx: AppContext
    api: httpx.AsyncClient
    pg_url: str
    migrations: Path
    victim: TenantDb
    statuses: list[tuple[str, int]]

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """An admin API call, recorded so that the final checks can assert no 5xx."""
        response = await self.api.request(method, path, **kwargs)
        self.statuses.append((f"{method} {path}", response.status_code))
        assert response.status_code < 500, (method, path, response.text)
        return response

    async def tenant(self, stem: str) -> TenantDb:
        created = await self.call("POST", "/admin/tenants", json={"slug": unique_slug("ht", stem), "name": stem})
        assert created.status_code == 201, created.text
        view = created.json()
        creds = await vend_credentials(self.ctx, view["id"], actor="test")
        return TenantDb(view["id"], view["slug"], creds.database, creds.user, creds.password)

    async def superuser(self, database: str | None = None) -> Any:
        return await asyncpg.connect(with_database(self.pg_url, database) if database else self.pg_url)


@pytest.fixture(scope="module")
async def setup(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fixture]:
    """An installation of this module's own (its tenant schema gains a migration later), and a victim tenant."""
    migrations = tmp_path_factory.mktemp("hostile") / "migrations"
    shutil.copytree(DEFAULT_MIGRATIONS_DIR, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    inst = Installation.isolated(pg_url, redis_url)
    inst_env = {"TENANT_MIGRATIONS_DIR": str(migrations)}
    await inst.create()
    ctx = AppContext.build(inst.settings(**inst_env))
    app = create_app(ctx, run_background=False)
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {inst.admin_token}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local", headers=headers) as api:
        fx = Fixture(inst, ctx, api, pg_url, migrations, victim=None, statuses=[])  # type: ignore[arg-type]
        fx.victim = await fx.tenant("victim")
        conn = await asyncpg.connect(fx.victim.dsn(pg_url))
        try:
            await conn.execute("INSERT INTO notes (body) VALUES ('the victim''s note')")
        finally:
            await conn.close()
        try:
            yield fx
        finally:
            await ctx.close()
            await inst.drop()


@dataclass
class Hostile:
    """A tenant whose database is full of traps, and the state of the cluster before the admin paths ran."""

    tenant: TenantDb
    roles_before: list[dict[str, Any]]
    victim_before: list[str]
    victim_verifier: str


async def _roles(conn: Any) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT r.rolname, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication, r.rolbypassrls,"
        " ARRAY(SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid"
        "       WHERE m.member = r.oid ORDER BY 1) AS member_of"
        " FROM pg_roles r ORDER BY r.rolname"
    )
    return [dict(r) for r in rows]


async def _victim_state(fx: Fixture) -> tuple[list[str], str]:
    conn = await asyncpg.connect(fx.victim.dsn(fx.pg_url))
    try:
        notes = [r["body"] for r in await conn.fetch("SELECT body FROM notes ORDER BY id")]
    finally:
        await conn.close()
    admin = await fx.superuser()
    try:
        verifier = await admin.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", fx.victim.role)
    finally:
        await admin.close()
    return notes, verifier


@pytest.fixture
async def hostile(setup: Fixture) -> Hostile:
    """A new tenant that plants every trap with its own credentials."""
    fx = setup
    tenant = await fx.tenant("hostile")
    parts = httpx.URL(fx.pg_url)
    values = {
        "hostile": f'"{tenant.role}"',
        "victim": f'"{fx.victim.role}"',
        "victim_db": fx.victim.database,
        "host": parts.host,
        "port": str(parts.port),
    }
    trap = TRAP
    for key, value in values.items():
        trap = trap.replace("{" + key + "}", value)
    conn = await asyncpg.connect(tenant.dsn(fx.pg_url))
    try:
        await conn.execute(trap)
        await conn.execute(SHADOWS)
        db, role = f'"{tenant.database}"', f'"{tenant.role}"'
        forged = object_marker(await fx.ctx.installation_id(), uuid.uuid4())
        await conn.execute(f"ALTER DATABASE {db} SET search_path = public, pg_catalog")
        await conn.execute(f"ALTER ROLE {role} SET search_path = public, pg_catalog")
        await conn.execute(f"ALTER DATABASE {db} IS_TEMPLATE true")
        await conn.execute(f"COMMENT ON DATABASE {db} IS '{forged}'")
        await conn.execute("DELETE FROM public.trap_log")  # planting fired a few traps as the tenant itself
    finally:
        await conn.close()
    admin = await fx.superuser()
    try:
        roles = await _roles(admin)
    finally:
        await admin.close()
    notes, verifier = await _victim_state(fx)
    return Hostile(tenant, roles, notes, verifier)


async def _assert_nothing_gained(fx: Fixture, h: Hostile, *, trap_database: bool = True) -> None:
    """No role gained anything, the victim is untouched, no trap ran with another role, no request got a 5xx."""
    admin = await fx.superuser()
    try:
        roles_after = {r["rolname"]: r for r in await _roles(admin)}
    finally:
        await admin.close()
    for before in h.roles_before:
        if _OTHER_INSTALLATION.match(before["rolname"]) and not before["rolname"].startswith(fx.inst.prefix):
            continue  # tests running beside this one change their own roles
        after = roles_after.get(before["rolname"])
        if after is None:  # purged
            continue
        assert after == before, f"role {before['rolname']} changed: {before} -> {after}"
    assert not any(r["rolsuper"] for name, r in roles_after.items() if name.startswith(fx.inst.prefix))
    notes, verifier = await _victim_state(fx)
    assert notes == h.victim_before
    assert verifier == h.victim_verifier
    if trap_database:
        conn = await fx.superuser(h.tenant.database)
        try:
            runs = [dict(r) for r in await conn.fetch("SELECT * FROM public.trap_log")]
        finally:
            await conn.close()
        strangers = [r for r in runs if r["session_role"] != h.tenant.role or r["superuser"] or r["escalated"]]
        assert not strangers, f"tenant code ran with the platform's rights: {strangers}"
    assert not [s for s in fx.statuses if s[1] >= 500]


async def _tenant_status(fx: Fixture, tenant: TenantDb) -> str:
    response = await fx.call("GET", f"/admin/tenants/{tenant.id}")
    assert response.status_code == 200
    return str(response.json()["status"])


async def _database_exists(fx: Fixture, name: str) -> bool:
    admin = await fx.superuser()
    try:
        return bool(await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await admin.close()


async def test_fleet_migration_runs_tenant_code_only_as_the_tenant(setup: Fixture, hostile: Hostile) -> None:
    fx = setup
    (fx.migrations / "0003_pinned.sql").write_text(MIGRATION_0003, encoding="utf-8")
    fx.ctx.migrations = load_migrations(fx.migrations)  # the in-process service ships the new migration too
    env = {"TENANT_MIGRATIONS_DIR": str(fx.migrations)}
    fx.inst.tenantctl("migrate", env=env)
    result = fx.inst.tenantctl("migrate-tenants", check=False, env=env, timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    hostile.victim_before.append("written by migration 0003")  # the victim was migrated too, as itself
    conn = await asyncpg.connect(hostile.tenant.dsn(fx.pg_url))
    try:
        assert await conn.fetchval("SELECT pg_catalog.max(version) FROM trap_versions") == 3
        assert await conn.fetchval("SELECT count(*) FROM notes WHERE pinned") == 1
        # The traps did fire during the migration, as the tenant itself.
        assert await conn.fetchval("SELECT count(*) FROM public.trap_log") > 0
    finally:
        await conn.close()
    await _assert_nothing_gained(fx, hostile)


async def test_plan_and_lifecycle_paths_touch_no_tenant_object(setup: Fixture, hostile: Hostile) -> None:
    fx = setup
    ref = hostile.tenant.id
    rates = {"requests_per_minute": 600, "requests_per_day": 50_000}
    changes = [
        ("PATCH", f"/admin/tenants/{ref}", {"limits": {"max_connections": 7}}),
        ("PUT", "/admin/plans/hostile-plan", {"limits": {**rates, "max_connections": 4}}),
        ("PATCH", f"/admin/tenants/{ref}", {"plan": "hostile-plan"}),
        ("PUT", "/admin/plans/hostile-plan", {"limits": {**rates, "max_connections": 6}}),
    ]
    for method, path, body in changes:
        assert (await fx.call(method, path, json=body)).status_code == 200
    admin = await fx.superuser()
    try:
        limit = await admin.fetchval("SELECT rolconnlimit FROM pg_roles WHERE rolname = $1", hostile.tenant.role)
    finally:
        await admin.close()
    assert limit == 7  # the tenant's own override wins over its plan
    usage = await fx.call("GET", f"/admin/tenants/{ref}/usage")
    assert usage.status_code == 200
    assert (await fx.call("POST", f"/admin/tenants/{ref}/suspend")).status_code == 200
    assert (await fx.call("POST", f"/admin/tenants/{ref}/resume")).status_code == 200
    assert (await fx.call("DELETE", f"/admin/tenants/{ref}")).status_code == 200
    assert (await fx.call("POST", f"/admin/tenants/{ref}/restore")).status_code == 200
    assert await _tenant_status(fx, hostile.tenant) == "active"
    await vend_credentials(fx.ctx, ref, actor="test")
    fx.inst.tenantctl("rotate-encryption")
    report = await Reconciler(fx.ctx).run_once()
    assert not report.errors
    assert await _tenant_status(fx, hostile.tenant) == "active"
    await _assert_nothing_gained(fx, hostile)


async def test_restore_returns_a_suspended_tenant_to_suspended(setup: Fixture, hostile: Hostile) -> None:
    fx = setup
    ref = hostile.tenant.id
    assert (await fx.call("POST", f"/admin/tenants/{ref}/suspend")).status_code == 200
    assert (await fx.call("DELETE", f"/admin/tenants/{ref}")).status_code == 200
    restored = await fx.call("POST", f"/admin/tenants/{ref}/restore")
    assert restored.status_code == 200
    assert restored.json()["status"] == "suspended"
    assert await _tenant_status(fx, hostile.tenant) == "suspended"
    await _assert_nothing_gained(fx, hostile)


async def test_a_forged_marker_does_not_make_the_reconciler_drop_a_live_tenant(
    setup: Fixture, hostile: Hostile
) -> None:
    fx = setup
    # The marker alone (the database no longer flagged a template, as the tenant itself may do): not an orphan.
    conn = await asyncpg.connect(hostile.tenant.dsn(fx.pg_url))
    try:
        await conn.execute(f'ALTER DATABASE "{hostile.tenant.database}" IS_TEMPLATE false')
    finally:
        await conn.close()
    report = await Reconciler(fx.ctx).run_once()
    assert not report.errors
    assert hostile.tenant.database not in report.orphans_dropped
    assert await _database_exists(fx, hostile.tenant.database)
    assert await _tenant_status(fx, hostile.tenant) == "active"
    # Deleted (the role loses LOGIN) and then swept: still the tenant's, still there.
    assert (await fx.call("DELETE", f"/admin/tenants/{hostile.tenant.id}")).status_code == 200
    await Reconciler(fx.ctx).run_once()
    assert await _database_exists(fx, hostile.tenant.database)
    await _assert_nothing_gained(fx, hostile)


async def test_purge_drops_a_database_the_tenant_flagged_as_a_template(setup: Fixture, hostile: Hostile) -> None:
    fx = setup
    purged = await fx.call("DELETE", f"/admin/tenants/{hostile.tenant.id}", params={"purge": "true"})
    assert purged.status_code == 200, purged.text
    assert not await _database_exists(fx, hostile.tenant.database)
    gone = await fx.call("GET", f"/admin/tenants/{hostile.tenant.id}")
    assert gone.status_code == 404
    admin = await fx.superuser()
    try:
        assert not await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", hostile.tenant.role)
    finally:
        await admin.close()
    await _assert_nothing_gained(fx, hostile, trap_database=False)


async def test_provisioning_and_the_reconciler_beside_a_hostile_tenant(setup: Fixture, hostile: Hostile) -> None:
    fx = setup
    neighbour = await fx.tenant("neighbour")
    conn = await asyncpg.connect(neighbour.dsn(fx.pg_url))
    try:  # cloned from the template, which no trap reached
        assert "the hostile tenant's own note" not in [r["body"] for r in await conn.fetch("SELECT body FROM notes")]
        assert await conn.fetchval("SELECT to_regprocedure('public.trap(text)')") is None
    finally:
        await conn.close()
    await Reconciler(fx.ctx).run_once()
    assert await _tenant_status(fx, hostile.tenant) == "active"
    assert await _tenant_status(fx, neighbour) == "active"
    await _assert_nothing_gained(fx, hostile)


async def _run_operation(fx: Fixture, response: httpx.Response) -> dict[str, Any]:
    """Run the operation a ``202`` announced, here and now (the in-process app runs no background work)."""
    assert response.status_code == 202, response.text
    op_id = response.json()["id"]
    await OperationRunner(fx.ctx, handlers(fx.ctx), workers=1, poll_seconds=1.0).run_now(uuid.UUID(op_id))
    done: dict[str, Any] = (await fx.call("GET", f"/admin/operations/{op_id}")).json()
    assert done["state"] == "succeeded", done
    return done


async def test_backup_restore_clone_and_export_run_tenant_code_only_as_the_tenant(
    setup: Fixture, hostile: Hostile
) -> None:
    fx = setup
    ref = hostile.tenant.id
    backup = await _run_operation(fx, await fx.call("POST", f"/admin/tenants/{ref}/backups", json={}))
    backup_id = backup["result"]["backup_id"]
    download = await fx.call("GET", f"/admin/tenants/{ref}/backups/{backup_id}/download")
    assert download.status_code == 200
    assert download.content.startswith(b"PGDMP")
    export = await _run_operation(fx, await fx.call("POST", f"/admin/tenants/{ref}/exports"))
    archive = await fx.call("GET", f"/admin/tenants/{ref}/exports/{export['result']['export_id']}/download")
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert {"notes", "trap_log", "trap_versions"} <= {t["name"] for t in manifest["tables"]}

    conn = await asyncpg.connect(hostile.tenant.dsn(fx.pg_url))
    try:
        backed_up = [r["body"] for r in await conn.fetch("SELECT body FROM notes ORDER BY id")]
        await conn.execute("INSERT INTO notes (body) VALUES ('after the backup')")
    finally:
        await conn.close()
    restore = await fx.call("POST", f"/admin/tenants/{ref}/restore", json={"backup_id": backup_id})
    await _run_operation(fx, restore)
    conn = await asyncpg.connect(hostile.tenant.dsn(fx.pg_url))
    try:
        notes = [r["body"] for r in await conn.fetch("SELECT body FROM notes ORDER BY id")]
        assert await conn.fetchval("SELECT count(*) FROM public.trap_log") > 0  # the traps fired, as the tenant
    finally:
        await conn.close()
    assert notes == backed_up

    slug = unique_slug("ht", "clone")
    created = await fx.call(
        "POST", "/admin/tenants", json={"slug": slug, "name": "c", "source": {"backup_id": backup_id}}
    )
    await _run_operation(fx, created)
    clone_id = created.json()["tenant"]["id"]
    creds = await vend_credentials(fx.ctx, clone_id, actor="test")
    clone = TenantDb(clone_id, slug, creds.database, creds.user, creds.password)
    conn = await asyncpg.connect(clone.dsn(fx.pg_url))
    try:
        assert [r["body"] for r in await conn.fetch("SELECT body FROM notes ORDER BY id")] == backed_up
        runs = [dict(r) for r in await conn.fetch("SELECT * FROM public.trap_log")]
    finally:
        await conn.close()
    strangers = [r for r in runs if r["session_role"] not in (clone.role, hostile.tenant.role) or r["superuser"]]
    assert not strangers, f"tenant code ran with the platform's rights during the clone: {strangers}"
    assert not any(r["escalated"] for r in runs)
    await _assert_nothing_gained(fx, hostile)


def test_one_module_opens_connections_to_the_tenant_cluster() -> None:
    """The rule holds by structure: only ``provisioning/cluster.py`` connects to the tenant cluster (``pg_dump`` and
    ``pg_restore`` included: it is the only module that starts a process), and only it may open an admin session
    inside a database other than the maintenance one."""
    source = Path(__file__).resolve().parents[2] / "services" / "tenant-service" / "src" / "tenant_service"
    cluster = source / "provisioning" / "cluster.py"
    offenders = []
    for path in source.rglob("*.py"):
        if path == cluster:
            continue
        text = path.read_text(encoding="utf-8")
        for needle in ("asyncpg.connect(", "asyncpg.create_pool(", "._admin_in(", "tenant_cluster_url", "subprocess"):
            if needle in text and not (needle == "tenant_cluster_url" and path.name == "config.py"):
                offenders.append(f"{path.relative_to(source)}: {needle}")
    assert not offenders


@pytest.fixture(scope="module")
def more_servers() -> Iterator[tuple[LocalPostgres, LocalPostgres]]:
    """Two throw-away clusters of this module's own (``wal_level=logical``), for moves."""
    with own_postgres("hostile-b") as second, own_postgres("hostile-c") as third:
        yield second, third


def _at(tenant: TenantDb, server: LocalPostgres) -> str:
    return f"postgresql://{tenant.role}:{tenant.password}@127.0.0.1:{server.port}/{tenant.database}"


async def _trap_runs(url: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        return [dict(r) for r in await conn.fetch("SELECT * FROM public.trap_log")]
    finally:
        await conn.close()


async def _superusers(url: str, prefix: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT rolname FROM pg_roles WHERE rolsuper AND starts_with(rolname, $1)", prefix)
    finally:
        await conn.close()
    return [r["rolname"] for r in rows]


async def test_a_move_runs_tenant_code_only_as_the_tenant(
    setup: Fixture, hostile: Hostile, more_servers: tuple[LocalPostgres, LocalPostgres]
) -> None:
    """A database full of traps moves by dump (its triggers, CHECK and index expression would run in a
    subscription's apply worker, which is a superuser on PostgreSQL 15), as the tenant; a database whose traps
    cannot run in the apply worker moves online, and none of them fires with the platform's rights either."""
    fx = setup
    second, third = more_servers
    for name, server in (("second", second), ("third", third)):
        registered = await fx.call("POST", "/admin/servers", json={"name": name, "url": server.url})
        assert registered.status_code == 201, registered.text
    ref = hostile.tenant.id
    done = await _run_operation(fx, await fx.call("POST", f"/admin/tenants/{ref}/move", json={"server": "second"}))
    assert done["result"]["mode"] == "dump", done
    assert "trigger" in done["result"]["mode_reason"]
    # The restore runs the tenant's own triggers (as the tenant): the table they write differs, and says so.
    assert set(done["result"].get("mismatched_tables", [])) <= {'"public"."trap_log"'}
    moved = await _trap_runs(_at(hostile.tenant, second))
    stand_in = f"{fx.inst.prefix}mv_{uuid.UUID(done['id']).hex}"
    strangers = [r for r in moved if r["session_role"] not in (hostile.tenant.role, stand_in) or r["superuser"]]
    assert not strangers, f"tenant code ran with the platform's rights during the move: {strangers}"
    assert not any(r["escalated"] for r in moved)
    conn = await asyncpg.connect(_at(hostile.tenant, second))
    try:
        assert "the hostile tenant's own note" in [r["body"] for r in await conn.fetch("SELECT body FROM notes")]
    finally:
        await conn.close()
    for server in (second, third):
        assert await _superusers(server.url, fx.inst.prefix or "") == []
    await _assert_nothing_gained(fx, hostile, trap_database=False)

    # Online: traps in triggers that do not fire in replica mode, a row-security policy, a rule and a column
    # default, none of which the apply worker runs.
    created = await fx.call("POST", "/admin/tenants", json={"slug": unique_slug("ht", "online"), "name": "o",
                                                            "server": "second"})  # fmt: skip
    assert created.status_code == 201, created.text
    creds = await vend_credentials(fx.ctx, created.json()["id"], actor="test")
    online = TenantDb(created.json()["id"], created.json()["slug"], creds.database, creds.user, creds.password)
    values = {"hostile": f'"{online.role}"', "victim": f'"{fx.victim.role}"', "victim_db": fx.victim.database,
              "host": "127.0.0.1", "port": str(httpx.URL(fx.pg_url).port)}  # fmt: skip
    trap = TRAP
    for key, value in values.items():
        trap = trap.replace("{" + key + "}", value)
    conn = await asyncpg.connect(_at(online, second))
    try:
        await conn.execute(trap)
        await conn.execute(
            """
            CREATE TRIGGER trap_row BEFORE INSERT OR UPDATE OR DELETE ON notes
                FOR EACH ROW EXECUTE FUNCTION public.trap_trigger();
            CREATE RULE trap_rule AS ON UPDATE TO notes DO ALSO SELECT public.trap('rule');
            ALTER TABLE notes ADD COLUMN trap_column text DEFAULT public.trap_default();
            ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
            ALTER TABLE notes FORCE ROW LEVEL SECURITY;
            CREATE POLICY trap_policy ON notes USING (public.trap('policy'));
            INSERT INTO notes (body) VALUES ('online note');
            DELETE FROM public.trap_log;
            """
        )
    finally:
        await conn.close()
    conn = await asyncpg.connect(_at(online, second))
    try:
        before = sorted(r["body"] for r in await conn.fetch("SELECT body FROM notes"))
    finally:
        await conn.close()
    assert "online note" in before
    done = await _run_operation(fx, await fx.call("POST", f"/admin/tenants/{online.id}/move", json={"server": "third"}))
    assert done["result"]["mode"] == "logical", done
    runs = await _trap_runs(_at(online, third))
    stand_in = f"{fx.inst.prefix}mv_{uuid.UUID(done['id']).hex}"
    strangers = [r for r in runs if r["session_role"] not in (online.role, stand_in) or r["superuser"]]
    assert not strangers, f"tenant code ran with the platform's rights during an online move: {strangers}"
    assert not any(r["escalated"] for r in runs)
    conn = await asyncpg.connect(_at(online, third))
    try:
        assert sorted(r["body"] for r in await conn.fetch("SELECT body FROM notes")) == before
    finally:
        await conn.close()
    for server in (second, third):
        assert await _superusers(server.url, fx.inst.prefix or "") == []
    await _assert_nothing_gained(fx, hostile, trap_database=False)
