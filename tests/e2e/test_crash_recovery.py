"""Crash safety of provisioning, with the tenant-service as a real process and real Postgres.

The service is SIGKILLed at every provisioning step, the template is held busy, Postgres restarts mid-create,
and stray objects are planted by hand: afterwards every tenant is ``active`` or ``failed`` (never stuck), each
active tenant has exactly one database and one role it can log in to with its vended password, and nothing
carrying this installation's prefix is left over that no tenant row references.

All tests of this module share one installation (every test uses slugs of its own and leaves the installation
consistent, which the next test checks again); that keeps the number of installations and processes small.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient

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
from support.servers import PostgresServer
from tenant_service import failpoints
from tenant_service.app import create_app
from tenant_service.context import AppContext
from tenant_service.provisioning.reconciler import Reconciler
from tenant_service.secretbox import SecretBox, generate_key

pytestmark = pytest.mark.e2e

FAILPOINTS = (
    "provision.after_insert",
    "provision.before_role",
    "provision.after_role",
    "provision.after_database",
    "provision.before_activate",
)
#: What exists in the cluster when the process dies at each failpoint: (role, database).
_BUILT_AT = {
    "provision.after_insert": (False, False),
    "provision.before_role": (False, False),
    "provision.after_role": (True, False),
    "provision.after_database": (True, True),
    "provision.before_activate": (True, True),
}


@pytest.fixture(scope="module")
async def inst(pg_url: str, redis_url: str) -> AsyncIterator[Installation]:
    installation = Installation.isolated(pg_url, redis_url)
    await installation.create()
    yield installation
    await installation.drop()


# --- helpers ----------------------------------------------------------------------------------------


def scram_matches(password: str, verifier: str) -> bool:
    """Whether a SCRAM-SHA-256 verifier (as in pg_authid.rolpassword) accepts ``password``."""
    method, _, rest = verifier.partition("$")
    iterations_salt, _, keys = rest.partition("$")
    iterations, _, salt = iterations_salt.partition(":")
    stored_key, _, server_key = keys.partition(":")
    assert method == "SCRAM-SHA-256", method
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), base64.b64decode(stored_key)) and (
        hmac.compare_digest(hmac.new(salted, b"Server Key", hashlib.sha256).digest(), base64.b64decode(server_key))
    )


def tenant_dsn(creds: dict[str, Any], password: str | None = None) -> str:
    pw = creds["password"] if password is None else password
    return f"postgresql://{creds['user']}:{pw}@{creds['host']}:{creds['port']}/{creds['database']}"


async def assert_can_log_in(creds: dict[str, Any], pg_url: str) -> None:
    """The vended password logs the tenant's own role in to the tenant's own database, and only it."""
    conn = await asyncpg.connect(tenant_dsn(creds))
    try:
        assert await conn.fetchval("SELECT current_database()") == creds["database"]
        assert await conn.fetchval("SELECT current_user") == creds["user"]
        await conn.execute("INSERT INTO notes (body) VALUES ('after the crash')")
    finally:
        await conn.close()
    admin = await asyncpg.connect(pg_url)
    try:
        verifier = await admin.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", creds["user"])
    finally:
        await admin.close()
    # Independent of pg_hba (the throw-away server trusts local logins): Postgres holds a verifier of exactly
    # the vended password, so a password-checking server accepts it too.
    assert verifier
    assert scram_matches(creds["password"], verifier)
    assert not scram_matches(creds["password"] + "x", verifier)
    try:
        wrong = await asyncpg.connect(tenant_dsn(creds, "not-the-password"))
    except asyncpg.InvalidPasswordError:
        pass  # this server checks passwords, so the login above really proved the vended one
    else:
        await wrong.close()


@contextlib.asynccontextmanager
async def in_process(inst: Installation, *, background: bool, **env: str) -> AsyncIterator[Any]:
    """The tenant-service app in-process on ``inst`` (with its start-up/periodic reconciler if ``background``)."""
    app = create_app(AppContext.build(inst.settings(**env)), run_background=background)
    async with AsyncTestClient(app, base_url="http://testserver.local") as client:
        client.headers["Authorization"] = f"Bearer {inst.admin_token}"
        yield client


def vend(service: TenantServiceProcess, tenant_id: str) -> dict[str, Any]:
    with service.client(service.installation.service_token) as client:
        response = client.get(f"/internal/v1/tenants/{tenant_id}/database")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def get_tenant(service: TenantServiceProcess, ref: str) -> dict[str, Any]:
    with service.client() as client:
        response = client.get(f"/admin/tenants/{ref}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# --- 3. kill -9 at every provisioning step ----------------------------------------------------------

#: How the crashed service comes back: a real process restart (its start-up reconciler), ``tenantctl
#: reconcile``, or the app started in-process with its background reconciler (same code path, no process
#: start-up cost; the crash itself is always a real SIGKILL of a real process).
_RECOVERY = {"provision.after_database": "process", "provision.before_activate": "cli"}


@pytest.mark.parametrize("point", FAILPOINTS)
async def test_kill_mid_provisioning_is_recovered(point: str, inst: Installation, tmp_path: Path, pg_url: str) -> None:
    slug = "cc-kill-" + point.removeprefix("provision.").replace("_", "-")
    doomed = TenantServiceProcess(inst, tmp_path / "killed.log", env={"TENANTRY_FAILPOINTS": f"{point}=kill"}).start()
    try:
        with doomed.client() as client, pytest.raises(httpx.TransportError):
            client.post("/admin/tenants", json={"slug": slug, "name": "Doomed"})
        assert doomed.wait_exit() == -signal.SIGKILL
    finally:
        doomed.kill()

    # The crash left the tenant half-built, exactly as far as the failpoint.
    row = await tenant_row(inst, slug)
    assert row is not None
    assert row["status"] == "provisioning"
    dbs, roles = await cluster_objects(pg_url, row["db_name"])
    assert (row["db_role"] in roles, row["db_name"] in dbs) == _BUILT_AT[point]

    recovery = _RECOVERY.get(point, "in-process")
    logs = [doomed.log()]
    if recovery == "process":
        service = TenantServiceProcess(inst, tmp_path / "recovered.log").start()
        try:
            tenant = await wait_for(
                lambda: (t := get_tenant(service, slug))["status"] != "provisioning" and t, timeout=30, interval=0.2
            )
            creds = vend(service, tenant["id"])
        finally:
            service.stop()
        logs.append(service.log())
    else:
        if recovery == "cli":
            result = inst.tenantctl("reconcile")
            logs.append(result.stdout + result.stderr)
            assert slug in json.loads(result.stdout)["provisioned"]
        async with in_process(inst, background=recovery == "in-process") as app:

            async def settled() -> dict[str, Any] | None:
                tenant: dict[str, Any] = (await app.get(f"/admin/tenants/{slug}")).json()
                return tenant if tenant["status"] != "provisioning" else None

            tenant = await wait_for(settled, timeout=30, interval=0.2)
            response = await app.get(
                f"/internal/v1/tenants/{tenant['id']}/database",
                headers={"Authorization": f"Bearer {inst.service_token}"},
            )
            assert response.status_code == 200, response.text
            creds = response.json()
    assert tenant["status"] == "active", tenant
    assert tenant["database"]["name"] == row["db_name"]
    assert creds["database"] == creds["user"] == row["db_name"]
    await assert_can_log_in(creds, pg_url)
    for log in logs:
        assert creds["password"] not in log

    await assert_no_orphans(inst, pg_url)
    dbs, roles = await cluster_objects(pg_url, inst.prefix + slug.replace("-", "_") + "_")
    assert list(dbs) == list(roles) == [row["db_name"]]


async def test_unreadable_secret_while_provisioning_ends_failed_not_stuck(inst: Installation, pg_url: str) -> None:
    """A tenant whose stored password no longer decrypts (a key removed too early, a tampered row) cannot be
    provisioned: the reconciler fails it cleanly instead of retrying it forever."""
    slug = "cc-unreadable"
    failpoints.configure("provision.after_insert=error")  # register the tenant, then stop before provisioning
    try:
        async with in_process(inst, background=False) as app:
            assert (await app.post("/admin/tenants", json={"slug": slug, "name": "Unreadable"})).status_code == 500
    finally:
        failpoints.configure("")
    row = await tenant_row(inst, slug)
    assert row is not None
    assert row["status"] == "provisioning"
    foreign = SecretBox.from_config(f"k1:{generate_key()}").encrypt("pw", f"tenant:{row['id']}:db-password")
    await registry(inst, "UPDATE tenants SET db_password_enc = $2 WHERE slug = $1", slug, foreign)

    ctx = AppContext.build(inst.settings())
    try:
        report = await Reconciler(ctx).run_once()
    finally:
        await ctx.close()
    assert report.failed == [slug], report
    assert not report.errors, report
    row = await tenant_row(inst, slug)
    assert row is not None
    assert row["status"] == "failed"
    assert row["failure_reason"] == "DecryptionError"
    dbs, roles = await cluster_objects(pg_url, row["db_name"])
    assert dbs == roles == {}
    await assert_no_orphans(inst, pg_url)


# --- 4. orphans -------------------------------------------------------------------------------------


async def test_reconcile_drops_only_this_installations_orphans(inst: Installation, pg_url: str) -> None:
    async with in_process(inst, background=False) as app:
        created = await app.post("/admin/tenants", json={"slug": "cc-orphan-keep", "name": "Keep"})
        assert created.status_code == 201, created.text
    installation_id = (await registry(inst, "SELECT installation_id FROM installation"))[0][0]
    foreign_installation = uuid.uuid4()

    def mine(tenant_id: uuid.UUID) -> str:
        return f"tenantry:{installation_id}:tenant:{tenant_id}"

    tag = uuid.uuid4().hex[:8]
    pair = f"{inst.prefix}cc_orphan_pair_{tag}"  # database + role of a tenant the registry forgot
    role_only = f"{inst.prefix}cc_orphan_role_{tag}"  # a crash between CREATE ROLE and the registry
    db_only = f"{inst.prefix}cc_orphan_db_{tag}"
    foreign = f"{inst.prefix}cc_foreign_{tag}"  # another installation's, same prefix
    unmarked = f"{inst.prefix}cc_unmarked_{tag}"  # an operator's
    noted = f"{inst.prefix}cc_noted_{tag}"  # an operator's, with a comment of their own
    mixed = f"{inst.prefix}cc_mixed_{tag}"  # our orphan role, but a database of the same name that is not ours
    entangled = f"{inst.prefix}cc_entangled_{tag}"  # our orphan role, owning a database that is not ours
    entangled_db = f"{inst.prefix}cc_entangled_db_{tag}"
    planted_dbs = {
        pair: mine(uuid.uuid4()),
        db_only: mine(uuid.uuid4()),
        foreign: f"tenantry:{foreign_installation}:tenant:{uuid.uuid4()}",
        unmarked: None,
        noted: "keep me: tenantry is not the owner",
        mixed: f"tenantry:{foreign_installation}:tenant:{uuid.uuid4()}",
        entangled_db: None,
    }
    owners = {pair: pair, foreign: foreign, unmarked: unmarked, noted: noted, entangled_db: entangled}
    planted_roles = {
        pair: planted_dbs[pair],
        role_only: mine(uuid.uuid4()),
        foreign: planted_dbs[foreign],
        unmarked: None,
        noted: planted_dbs[noted],
        mixed: mine(uuid.uuid4()),
        entangled: mine(uuid.uuid4()),
    }
    admin = await asyncpg.connect(pg_url)
    try:
        for role, comment in planted_roles.items():
            await admin.execute(f'CREATE ROLE "{role}" LOGIN')
            if comment is not None:
                await admin.execute(f"COMMENT ON ROLE \"{role}\" IS '{comment}'")
        for db, comment in planted_dbs.items():
            await admin.execute(f'CREATE DATABASE "{db}" OWNER "{owners.get(db, "postgres")}"')
            if comment is not None:
                await admin.execute(f"COMMENT ON DATABASE \"{db}\" IS '{comment}'")
        # An open session in the orphan database does not save it.
        await admin.execute(f'GRANT CONNECT ON DATABASE "{pair}" TO "{pair}"')
        squatter = await asyncpg.connect(with_database(pg_url, pair), user=pair)

        report = json.loads(inst.tenantctl("reconcile").stdout)
        assert sorted(report["orphans_dropped"]) == sorted({pair, role_only, db_only, mixed})
        # A role that still owns something not ours is left (and reported); it does not stop the others.
        assert report["errors"] == [f"orphan {entangled}: DependentObjectsStillExistError"], report

        dbs, roles = await cluster_objects(pg_url, inst.prefix + "cc_")
        assert set(dbs) >= {foreign, unmarked, noted, mixed, entangled_db}
        assert {pair, db_only}.isdisjoint(dbs)
        assert set(roles) >= {foreign, unmarked, noted, entangled}
        assert {pair, role_only, mixed}.isdisjoint(roles)
        assert dbs[mixed] == planted_dbs[mixed]
        keep = await tenant_row(inst, "cc-orphan-keep")
        assert keep is not None
        assert keep["status"] == "active"
        assert keep["db_name"] in dbs
        assert keep["db_role"] in roles
        squatter.terminate()

        # Once an operator sorts out what the role owns, a second pass drops it and finds nothing else to do.
        await admin.execute(f'ALTER DATABASE "{entangled_db}" OWNER TO postgres')
        ctx = AppContext.build(inst.settings())
        try:
            again = await Reconciler(ctx).run_once()
        finally:
            await ctx.close()
        assert again.orphans_dropped == [entangled]
        assert not again.errors
    finally:
        for db in planted_dbs:
            await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        for role in planted_roles:
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()
    await assert_no_orphans(inst, pg_url)


# --- 6. the template held open by a stray session ---------------------------------------------------


async def test_stray_connection_to_the_template_fails_the_create_cleanly(
    inst: Installation, tmp_path: Path, pg_url: str
) -> None:
    admin = await asyncpg.connect(pg_url)
    stray: asyncpg.Connection | None = None
    service = TenantServiceProcess(inst, tmp_path / "svc.log", env={"CREATE_DATABASE_ATTEMPTS": "2"}).start()
    try:
        await admin.execute(f'ALTER DATABASE "{inst.template}" ALLOW_CONNECTIONS true')
        stray = await asyncpg.connect(with_database(pg_url, inst.template))
        with service.client() as client:
            response = await asyncio.to_thread(
                client.post, "/admin/tenants", json={"slug": "cc-tpl-busy", "name": "Busy template"}
            )
        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        problem = response.json()
        assert problem["code"] == "provisioning_failed"
        assert problem["status"] == 503
        assert problem["tenant_status"] == "failed"
        assert "api_key" not in problem

        failed = get_tenant(service, "cc-tpl-busy")
        assert failed["status"] == "failed"
        assert failed["id"] == problem["tenant_id"]
        row = await tenant_row(inst, "cc-tpl-busy")
        assert row is not None
        dbs, roles = await cluster_objects(pg_url, row["db_name"])
        assert dbs == roles == {}, "a failed create must leave no database and no role"
        with service.client(inst.service_token) as client:
            assert client.get(f"/internal/v1/tenants/{failed['id']}/database").status_code == 503

        await stray.close()
        stray = None
        await admin.execute(f'ALTER DATABASE "{inst.template}" ALLOW_CONNECTIONS false')

        with service.client() as client:
            ok = client.post("/admin/tenants", json={"slug": "cc-tpl-free", "name": "Free template"})
            assert ok.status_code == 201, ok.text
            assert ok.json()["status"] == "active"
            # The failed tenant can be purged; its slug becomes free again.
            assert client.delete("/admin/tenants/cc-tpl-busy", params={"purge": "true"}).status_code == 200
            again = client.post("/admin/tenants", json={"slug": "cc-tpl-busy", "name": "Retry"})
            assert again.status_code == 201, again.text
        await assert_can_log_in(vend(service, ok.json()["id"]), pg_url)
        assert "Traceback" not in service.log()
    finally:
        service.stop()
        if stray is not None:
            await stray.close()
        await admin.execute(f'ALTER DATABASE "{inst.template}" ALLOW_CONNECTIONS false')
        allowed = await admin.fetchval("SELECT datallowconn FROM pg_database WHERE datname = $1", inst.template)
        await admin.close()
    assert allowed is False
    await assert_no_orphans(inst, pg_url)


# --- 7. Postgres restarts while tenants are being created -------------------------------------------


async def test_postgres_restart_during_creates(
    pg_server: PostgresServer, inst: Installation, tmp_path: Path, pg_url: str
) -> None:
    """Postgres goes down while one batch of creates sits between insert and role, another between role and
    database (failpoint sleeps hold them there); afterwards the reconciler settles every one of them."""
    if not pg_server.restartable:
        pytest.fail(
            f"this test restarts PostgreSQL, but the server comes from {pg_server.source}, which the suite does "
            "not control: unset TEST_DATABASE_URL and stop Docker (or set TENANTRY_TEST_DOCKER=0) so that a local "
            "throw-away server is used",
            pytrace=False,
        )
    after_role = [f"cc-pgr-role-{i}" for i in range(3)]  # will be past CREATE ROLE, before CREATE DATABASE
    after_insert = [f"cc-pgr-insert-{i}" for i in range(3)]  # will be registered, nothing built
    slugs = after_role + after_insert
    service = TenantServiceProcess(
        inst,
        tmp_path / "svc.log",
        env={"TENANTRY_FAILPOINTS": "provision.after_insert=sleep:2;provision.after_role=sleep:5"},
    ).start()

    async def registered(batch: list[str], *, with_roles: bool) -> bool:
        rows = await registry(inst, "SELECT db_role FROM tenants WHERE slug = ANY($1)", batch)
        if len(rows) < len(batch):
            return False
        if not with_roles:
            return True
        _, roles = await cluster_objects(pg_url, inst.prefix + "cc_pgr_")
        return {r["db_role"] for r in rows} <= set(roles)

    try:
        async with httpx.AsyncClient(
            base_url=service.url, headers={"Authorization": f"Bearer {inst.admin_token}"}, timeout=60
        ) as client:

            def post(slug: str) -> asyncio.Task[httpx.Response]:
                return asyncio.create_task(client.post("/admin/tenants", json={"slug": slug, "name": slug}))

            requests = [post(s) for s in after_role]
            await wait_for(lambda: registered(after_role, with_roles=True), timeout=20, interval=0.05)
            requests += [post(s) for s in after_insert]
            await wait_for(lambda: registered(after_insert, with_roles=False), timeout=20, interval=0.05)
            with pg_server.outage():
                await asyncio.sleep(5.5)  # every create leaves its failpoint while the server is down
            responses = await asyncio.gather(*requests)
        for response in responses:
            # Either it made it after all, or it says (as problem details, never a 500) that it did not.
            assert response.status_code in (201, 503), response.text
            if response.status_code != 201:
                assert response.headers["content-type"].startswith("application/problem+json"), response.text
        # The service keeps serving once Postgres is back.
        with service.client() as client:
            assert client.get("/admin/tenants", params={"q": "cc-pgr-"}).status_code == 200
    finally:
        service.stop()

    ctx = AppContext.build(inst.settings())
    try:
        for _ in range(3):
            report = await Reconciler(ctx).run_once()
            if not report.pending and not report.errors:
                break
    finally:
        await ctx.close()
    rows = await assert_no_orphans(inst, pg_url)
    statuses = {r["slug"]: r["status"] for r in rows if r["slug"] in slugs}
    assert set(statuses) == set(slugs)
    assert set(statuses.values()) <= {"active", "failed"}
    assert "active" in statuses.values()
