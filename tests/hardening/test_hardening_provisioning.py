"""Hardening, group 5: provisioning faults, with the tenant-service as a real process and real Postgres.

Extends tests/e2e/test_crash_recovery.py (which kills the service at ``provision.after_insert``, ``before_role``,
``after_role``, ``after_database`` and ``before_activate``, holds the template busy through a synchronous create,
and restarts the shared Postgres between steps). Here:

* kill -9 at the steps it does not reach: before the registry row (with the encrypted secret) is committed,
  inside ``CREATE DATABASE``'s template lock, right after ``CREATE DATABASE`` (before the marker and the
  ``REVOKE … FROM PUBLIC``), in the middle of a compensation, and in the middle of a purge; a restarted service
  finishes or compensates each, and nothing is left over;
* Postgres (a cluster of this module's own, never the shared one) crashes while a create is in flight;
* a stray session on the template: retried, then either a success (the stray went away in time) or a clean
  ``failed`` with its reason on the tenant;
* a purge while the tenant's own role holds connections open (idle, in a transaction, mid-query).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from support.platform import (
    Installation,
    TenantServiceProcess,
    assert_no_orphans,
    cluster_objects,
    registry,
    tenant_row,
    wait_for,
    with_database,
)
from support.servers import own_postgres
from tenant_service.app import create_app
from tenant_service.context import AppContext
from tenant_service.provisioning.cluster import TenantCluster
from tenant_service.provisioning.reconciler import Reconciler
from tenantry_devtools.servers import LocalPostgres

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def inst(pg_url: str, redis_url: str) -> AsyncIterator[Installation]:
    """An installation of this module's own on the session Postgres (tests here count objects)."""
    installation = Installation.isolated(pg_url, redis_url)
    await installation.create()
    yield installation
    await installation.drop()


@pytest.fixture
def own_pg() -> Iterator[LocalPostgres]:
    """A throw-away Postgres of this test's own, which it may crash and restart."""
    with own_postgres("hp") as server:
        yield server


# --- helpers ----------------------------------------------------------------------------------------


def stem(inst: Installation, slug: str) -> str:
    """The name prefix of the database and role a tenant with ``slug`` gets."""
    return inst.prefix + slug.replace("-", "_") + "_"


async def public_privileges(pg_url: str, database: str) -> tuple[bool, bool]:
    """Whether PUBLIC may CONNECT to / create TEMP tables in ``database``."""
    conn = await asyncpg.connect(pg_url, timeout=10)
    try:
        row = await conn.fetchrow(
            "SELECT has_database_privilege('public', $1, 'CONNECT') AS c, "
            "has_database_privilege('public', $1, 'TEMP') AS t",
            database,
        )
    finally:
        await conn.close()
    assert row is not None
    return bool(row["c"]), bool(row["t"])


async def assert_no_orphans_closed(inst: Installation, pg_url: str) -> list[asyncpg.Record]:
    """No orphans (support.platform), and every live tenant's database is marked and closed to PUBLIC."""
    rows = await assert_no_orphans(inst, pg_url)
    dbs, _ = await cluster_objects(pg_url, inst.prefix)
    live = [r for r in rows if r["status"] in ("active", "suspended", "deleted")]
    for row in live:
        assert dbs[row["db_name"]], f"{row['db_name']} carries no marker"
        assert await public_privileges(pg_url, row["db_name"]) == (False, False), row["db_name"]
    return rows


def get_tenant(service: TenantServiceProcess, ref: str) -> httpx.Response:
    with service.client() as client:
        return client.get(f"/admin/tenants/{ref}", timeout=10)


def vend(service: TenantServiceProcess, tenant_id: str) -> dict[str, Any]:
    with service.client(service.installation.service_token) as client:
        response = client.get(f"/internal/v1/tenants/{tenant_id}/database", timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def tenant_dsn(creds: dict[str, Any]) -> str:
    return f"postgresql://{creds['user']}:{creds['password']}@{creds['host']}:{creds['port']}/{creds['database']}"


async def assert_tenant_works(creds: dict[str, Any]) -> None:
    """The vended credentials log the tenant's role in to its own database, which is fully built."""
    conn = await asyncpg.connect(tenant_dsn(creds), timeout=10)
    try:
        assert await conn.fetchval("SELECT current_database()") == creds["database"]
        assert await conn.fetchval("SELECT current_user") == creds["user"]
        await conn.execute("INSERT INTO notes (body) VALUES ('survived')")
        owners = {r[0] for r in await conn.fetch("SELECT tableowner FROM pg_tables WHERE schemaname = 'public'")}
        # pg_database_owner (a clone of the current template) stands for the database's owner, the tenant's role.
        assert owners <= {creds["user"], "pg_database_owner"}, owners
        await conn.execute("ALTER TABLE notes ADD COLUMN IF NOT EXISTS owner_check int")  # owner rights
    finally:
        await conn.close()


async def settle(service: TenantServiceProcess, slug: str, timeout: float = 30) -> httpx.Response:
    """Wait until the tenant is neither ``provisioning`` nor ``deleting`` (or gone); return the last answer."""

    def done() -> httpx.Response | None:
        response = get_tenant(service, slug)
        if response.status_code == 200 and response.json()["status"] in ("provisioning", "deleting"):
            return None
        return response

    result: httpx.Response = await wait_for(done, timeout=timeout, interval=0.2)
    return result


def template_lock_key(inst: Installation) -> int:
    return int(TenantCluster(inst.settings().database)._template_lock)  # the lock the clones share


# --- 1. kill -9 at the steps test_crash_recovery does not reach ------------------------------------

#: failpoint → what exists right after the kill: (row status or None, role exists, database exists).
_HALF_BUILT: dict[str, tuple[str | None, bool, bool]] = {
    "provision.before_insert": (None, False, False),  # the row with the encrypted secret is not committed
    "provision.before_database": ("provisioning", True, False),  # holding the template lock shared
    "provision.after_create_database": ("provisioning", True, True),  # no marker, PUBLIC may still connect
    "provision.compensating": ("provisioning", True, False),  # the database dropped, the role not yet
    "purge.after_mark": ("deleting", True, True),
    "purge.before_forget": ("deleting", False, False),
}
#: failpoint → how the restarted service leaves the tenant.
_RECOVERED = {
    "provision.before_insert": "absent",
    "provision.before_database": "active",
    "provision.after_create_database": "active",
    "provision.compensating": "failed",  # the template is still busy: the compensation is finished
    "purge.after_mark": "purged",
    "purge.before_forget": "purged",
}


@pytest.mark.parametrize("point", list(_HALF_BUILT))
async def test_kill_at_a_provisioning_step_is_finished_or_compensated_after_restart(
    point: str, inst: Installation, tmp_path: Path, pg_url: str
) -> None:
    slug = "hp-" + point.partition(".")[2].replace("_", "-")
    admin = await asyncpg.connect(pg_url, timeout=10)
    stray: asyncpg.Connection | None = None
    env = {"TENANTRY_FAILPOINTS": f"{point}=kill"}
    if point == "provision.compensating":
        # The template held by a stray session makes the create fail; the kill lands inside the compensation.
        env["CREATE_DATABASE_ATTEMPTS"] = "1"
        await admin.execute(f'ALTER DATABASE "{inst.template}" ALLOW_CONNECTIONS true')
        stray = await asyncpg.connect(with_database(pg_url, inst.template), timeout=10)
    logs: list[str] = []
    try:
        doomed = TenantServiceProcess(inst, tmp_path / "doomed.log", env=env).start()
        try:
            with doomed.client() as client:
                if point.startswith("purge."):
                    created = client.post("/admin/tenants", json={"slug": slug, "name": "Doomed"})
                    assert created.status_code == 201, created.text
                    creds = vend(doomed, created.json()["id"])
                    with pytest.raises(httpx.TransportError):
                        client.delete(f"/admin/tenants/{slug}", params={"purge": "true"})
                else:
                    with pytest.raises(httpx.TransportError):
                        client.post("/admin/tenants", json={"slug": slug, "name": "Doomed"})
            assert doomed.wait_exit() == -signal.SIGKILL
        finally:
            doomed.kill()
            logs.append(doomed.log())

        # Exactly as far as the failpoint.
        status, role_built, db_built = _HALF_BUILT[point]
        row = await tenant_row(inst, slug)
        assert (row["status"] if row else None) == status
        dbs, roles = await cluster_objects(pg_url, stem(inst, slug))
        assert (bool(roles), bool(dbs)) == (role_built, db_built), (dbs, roles)
        if point == "provision.after_create_database":
            assert row is not None
            assert dbs[row["db_name"]] is None, "the marker is written after the clone"
            assert await public_privileges(pg_url, row["db_name"]) == (True, True), "half-built: still PUBLIC"
        if point == "provision.before_database":
            # The dead worker's shared template lock went with its connection: a template migration can run.
            key = template_lock_key(inst)

            async def lock_free() -> bool:
                got = bool(await admin.fetchval("SELECT pg_try_advisory_lock($1)", key))
                if got:
                    await admin.execute("SELECT pg_advisory_unlock($1)", key)
                return got

            await wait_for(lock_free, timeout=15, interval=0.1)

        # Restart: the start-up reconciler finishes the job, or undoes it.
        service = TenantServiceProcess(inst, tmp_path / "restarted.log", env=env | {"TENANTRY_FAILPOINTS": ""}).start()
        try:
            outcome = _RECOVERED[point]
            final = await settle(service, slug)
            if outcome in ("absent", "purged"):
                assert final.status_code == 404, final.text
                assert final.json()["code"] == "tenant_not_found"
            else:
                assert final.status_code == 200, final.text
                tenant = final.json()
                assert tenant["status"] == outcome, tenant
            if outcome == "active":
                creds = vend(service, tenant["id"])
                await assert_tenant_works(creds)
            if outcome == "failed":
                assert tenant["failure_reason"] == "template busy", tenant
                with service.client(inst.service_token) as client:
                    assert client.get(f"/internal/v1/tenants/{tenant['id']}/database").status_code == 503
            if outcome == "purged":
                assert row is not None
                audit = await registry(
                    inst, "SELECT actor FROM audit_log WHERE tenant_id = $1 AND action = 'tenant.purged'", row["id"]
                )
                assert len(audit) == 1, audit
                with pytest.raises(asyncpg.PostgresError):
                    await asyncpg.connect(tenant_dsn(creds), timeout=10)
            if outcome == "absent":
                # The slug was never taken: it can be created now, and works.
                with service.client() as client:
                    again = client.post("/admin/tenants", json={"slug": slug, "name": "Again"})
                assert again.status_code == 201, again.text
                await assert_tenant_works(vend(service, again.json()["id"]))
        finally:
            service.stop()
            logs.append(service.log())
    finally:
        if stray is not None:
            await stray.close()
            await admin.execute(f'ALTER DATABASE "{inst.template}" ALLOW_CONNECTIONS false')
        await admin.close()

    rows = await assert_no_orphans_closed(inst, pg_url)
    mine = [r for r in rows if r["slug"] == slug]
    dbs, roles = await cluster_objects(pg_url, stem(inst, slug))
    assert set(dbs) == set(roles) == {r["db_name"] for r in mine if r["status"] == "active"}
    for log in logs:
        assert "Traceback" not in log
        if point.startswith("purge.") or _RECOVERED[point] == "active":
            assert creds["password"] not in log


# --- 2. Postgres crashes while a create is in flight ------------------------------------------------


async def test_postgres_crash_during_a_create_settles_it_and_the_service_keeps_answering(
    own_pg: LocalPostgres, redis_url: str, tmp_path: Path
) -> None:
    """The create sits right after CREATE DATABASE (not yet marked or closed to PUBLIC) when Postgres dies
    (``immediate`` stop: no shutdown checkpoint, a crash recovery at start). The request answers cleanly, the
    service answers throughout, and once Postgres is back its reconciler brings the tenant to a fully built
    ``active`` (or a clean ``failed``), never leaving it half-built."""
    inst = Installation.isolated(own_pg.url, redis_url)
    await inst.create()
    service = TenantServiceProcess(
        inst,
        tmp_path / "svc.log",
        env={
            "TENANTRY_FAILPOINTS": "provision.after_create_database=sleep:3",
            "RECONCILE_INTERVAL_SECONDS": "1",
            "DB_CONNECT_TIMEOUT": "2",
        },
    ).start()
    slug = "hp-pg-crash"
    try:
        async with httpx.AsyncClient(
            base_url=service.url, headers={"Authorization": f"Bearer {inst.admin_token}"}, timeout=60
        ) as client:
            request = asyncio.create_task(client.post("/admin/tenants", json={"slug": slug, "name": "Crash"}))

            async def cloned() -> bool:
                row = await tenant_row(inst, slug)
                if row is None:
                    return False
                dbs, _ = await cluster_objects(own_pg.url, row["db_name"])
                return bool(dbs)

            await wait_for(cloned, timeout=30, interval=0.05)
            own_pg.stop("immediate")
            try:
                # Down: the service still answers, quickly and cleanly.
                health = await client.get("/healthz", timeout=10)
                assert health.status_code == 200
                listing = await client.get("/admin/tenants", timeout=30)
                assert listing.status_code == 503, listing.text
                assert listing.headers["content-type"].startswith("application/problem+json")
                await asyncio.sleep(3.5)  # the create leaves its failpoint while the server is down
                response = await asyncio.wait_for(request, timeout=60)
            finally:
                own_pg.start()
            assert response.status_code in (201, 202, 503), response.text
            if response.status_code == 503:
                assert response.headers["content-type"].startswith("application/problem+json"), response.text

            # Back: the reconciler settles it; the service serves again (its pool got rid of dead connections).
            async def settled() -> dict[str, Any] | None:
                answer = await client.get(f"/admin/tenants/{slug}", timeout=10)
                if answer.status_code != 200:
                    return None
                body: dict[str, Any] = answer.json()
                return body if body["status"] not in ("provisioning", "deleting") else None

            tenant = await wait_for(settled, timeout=60, interval=0.3)
            assert tenant["status"] in ("active", "failed"), tenant
            fresh = await client.post("/admin/tenants", json={"slug": "hp-pg-after", "name": "After"})
            assert fresh.status_code == 201, fresh.text
        if tenant["status"] == "active":
            await assert_tenant_works(vend(service, tenant["id"]))
        await assert_tenant_works(vend(service, fresh.json()["id"]))
    finally:
        service.stop()
    assert "Traceback" not in service.log()
    await assert_no_orphans_closed(inst, own_pg.url)


# --- 3. a stray session on the template -------------------------------------------------------------


def retry_lines(log: str) -> int:
    return sum(1 for line in log.splitlines() if "template_in_use_retrying" in line)


async def test_stray_session_on_the_template_retried_then_failed_or_succeeds(
    inst: Installation, tmp_path: Path, pg_url: str
) -> None:
    """CREATE DATABASE is retried while a stray session holds the template. If it stays, an async create ends
    ``failed`` with the reason on the tenant and nothing built; if it leaves during the retries, a synchronous
    create succeeds. The service answers other requests all along."""
    attempts = 2  # Postgres itself waits ~5 s for the template's other sessions before each attempt fails
    admin = await asyncpg.connect(pg_url, timeout=10)
    service = TenantServiceProcess(inst, tmp_path / "svc.log", env={"CREATE_DATABASE_ATTEMPTS": str(attempts)}).start()
    stray: asyncpg.Connection | None = None
    try:
        await admin.execute(f'ALTER DATABASE "{inst.template}" ALLOW_CONNECTIONS true')
        stray = await asyncpg.connect(with_database(pg_url, inst.template), timeout=10)
        async with httpx.AsyncClient(
            base_url=service.url, headers={"Authorization": f"Bearer {inst.admin_token}"}, timeout=60
        ) as client:
            # (a) The stray stays: every attempt fails, the tenant ends failed, cleanly.
            accepted = await client.post(
                "/admin/tenants", json={"slug": "hp-tpl-stays", "name": "Stays"}, headers={"Prefer": "respond-async"}
            )
            assert accepted.status_code == 202, accepted.text
            assert (await client.get("/healthz", timeout=10)).status_code == 200
            assert (await client.get("/admin/tenants", params={"q": "hp-tpl"}, timeout=10)).status_code == 200

            async def failed() -> dict[str, Any] | None:
                body: dict[str, Any] = (await client.get("/admin/tenants/hp-tpl-stays", timeout=10)).json()
                return body if body["status"] != "provisioning" else None

            tenant = await wait_for(failed, timeout=30, interval=0.2)
            assert tenant["status"] == "failed", tenant
            assert tenant["failure_reason"] == "template busy", tenant
            assert retry_lines(service.log()) == attempts - 1
            row = await tenant_row(inst, "hp-tpl-stays")
            assert row is not None
            dbs, roles = await cluster_objects(pg_url, row["db_name"])
            assert dbs == roles == {}, "a failed create leaves no database and no role"
            vended = await client.get(
                f"/internal/v1/tenants/{tenant['id']}/database",
                headers={"Authorization": f"Bearer {inst.service_token}"},
            )
            assert vended.status_code == 503, vended.text
            assert vended.json()["code"] == "tenant_unavailable"

            # (b) The stray goes away while the create is retrying: the create succeeds.
            before = retry_lines(service.log())
            request = asyncio.create_task(client.post("/admin/tenants", json={"slug": "hp-tpl-leaves", "name": "L"}))
            await wait_for(lambda: retry_lines(service.log()) > before, timeout=20, interval=0.02)
            await stray.close()
            stray = None
            response = await asyncio.wait_for(request, timeout=60)
            assert response.status_code == 201, response.text
            assert response.json()["status"] == "active"
            await assert_tenant_works(vend(service, response.json()["id"]))

            # A reconciler pass later, the failed tenant stays failed (not retried forever), nothing reappears.
            ctx = AppContext.build(inst.settings())
            try:
                report = await Reconciler(ctx).run_once()
            finally:
                await ctx.close()
            assert "hp-tpl-stays" not in report.provisioned + report.pending + report.failed, report
            assert (await client.get("/admin/tenants/hp-tpl-stays", timeout=10)).json()["status"] == "failed"
    finally:
        service.stop()
        if stray is not None:
            await stray.close()
        await admin.execute(f'ALTER DATABASE "{inst.template}" ALLOW_CONNECTIONS false')
        await admin.close()
    assert "Traceback" not in service.log()
    await assert_no_orphans_closed(inst, pg_url)


# --- 4. purge while the tenant's own role is connected ----------------------------------------------


async def test_purge_ends_the_tenants_open_connections_and_leaves_nothing(
    inst: Installation, tmp_path: Path, pg_url: str
) -> None:
    slug = "hp-purge-busy"
    service = TenantServiceProcess(inst, tmp_path / "svc.log").start()
    idle = in_tx = busy = None
    try:
        with service.client() as client:
            created = client.post("/admin/tenants", json={"slug": slug, "name": "Busy"})
        assert created.status_code == 201, created.text
        creds = vend(service, created.json()["id"])
        dsn = tenant_dsn(creds)
        idle = await asyncpg.connect(dsn, timeout=10)
        in_tx = await asyncpg.connect(dsn, timeout=10)
        busy = await asyncpg.connect(dsn, timeout=10)
        await in_tx.execute("BEGIN; LOCK TABLE notes IN ACCESS EXCLUSIVE MODE")
        sleeper = asyncio.create_task(busy.fetchval("SELECT pg_sleep(120)"))
        admin = await asyncpg.connect(pg_url, timeout=10)
        try:

            async def sessions() -> int:
                query = "SELECT count(*) FROM pg_stat_activity WHERE usename = $1"
                return int(await admin.fetchval(query, creds["user"]))

            async def sleeping() -> bool:
                query = "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND query LIKE '%pg_sleep%'"
                return bool(await admin.fetchval(query, creds["user"]))

            await wait_for(sleeping, timeout=10)
            assert await sessions() == 3

            started = time.monotonic()
            with service.client() as client:
                purged = await asyncio.to_thread(
                    client.delete, f"/admin/tenants/{slug}", params={"purge": "true"}, timeout=60
                )
            assert purged.status_code == 200, purged.text
            assert purged.json()["status"] == "deleted"
            assert time.monotonic() - started < 60  # only a hang would be this slow
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
                await asyncio.wait_for(sleeper, timeout=10)
            for conn in (idle, in_tx):
                with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
                    await conn.fetchval("SELECT 1", timeout=10)
            assert await sessions() == 0
        finally:
            await admin.close()

        dbs, roles = await cluster_objects(pg_url, stem(inst, slug))
        assert dbs == roles == {}
        assert await tenant_row(inst, slug) is None
        assert get_tenant(service, slug).status_code == 404
        with service.client(inst.service_token) as client:
            assert client.get(f"/internal/v1/tenants/{created.json()['id']}/database").status_code == 404
        with pytest.raises(asyncpg.PostgresError):
            await asyncpg.connect(dsn, timeout=10)
    finally:
        service.stop()
        for conn in (idle, in_tx, busy):
            if conn is not None:
                conn.terminate()
    assert "Traceback" not in service.log()
    assert creds["password"] not in service.log()
    await assert_no_orphans_closed(inst, pg_url)


async def test_readyz_fails_while_the_tenant_cluster_is_down(
    own_pg: LocalPostgres, pg_url: str, redis_url: str
) -> None:
    """Tenant databases on a server of their own: the service is not ready while that server is down."""
    inst = Installation.isolated(pg_url, redis_url)
    await inst.create()
    cluster = {"TENANT_DATABASE_URL": own_pg.url}
    inst.tenantctl("migrate", env=cluster)
    ctx = AppContext.build(inst.settings(**cluster))
    try:
        transport = httpx.ASGITransport(app=create_app(ctx, run_background=False))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"]["tenant_cluster"] == "ok"
            own_pg.stop("immediate")
            try:
                down = await client.get("/readyz")
                assert down.status_code == 503
                assert down.json()["checks"]["tenant_cluster"].startswith("error")
                assert down.json()["checks"]["database"] == "ok"
            finally:
                own_pg.start()

            async def ready_again() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await wait_for(ready_again, timeout=15, interval=0.2)
    finally:
        await ctx.close()
        await inst.drop()
