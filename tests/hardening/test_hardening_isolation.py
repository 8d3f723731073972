"""Hardening, group 6: isolation in Postgres and Redis, and secrets at rest.

Tenant A holds its own vended database credentials and tries to reach tenant B, the template, the registry
(master) database and the cluster's maintenance databases, to raise its privileges, to read files, run programs
or see B's password hash, and to touch B's Redis keys. An attacker with a copy of (or write access to) the master
database tries to read or redirect secrets.

Extends tests/integration/test_isolation.py and test_secrets_at_rest.py (own database and role, role attributes,
ACL of the tenant database, ciphertext at rest, a swapped ciphertext, key rotation). This module runs on a
Postgres cluster of its own that checks passwords (SCRAM) for every role but the superuser, so "A cannot log in
as B" means something (the session server trusts every local login).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as redis

from support.platform import Installation, in_process, template_open
from support.servers import own_postgres
from tenant_service.secretbox import DecryptionError, SecretBox, generate_key
from tenantry_app import TenantRedis
from tenantry_common.redis_keys import minute_counter_key, platform_key
from tenantry_devtools.servers import LocalPostgres

_HBA = """\
# Written by tests/hardening/test_hardening_isolation.py: passwords for everyone but the superuser.
local all postgres trust
host  all postgres 127.0.0.1/32 trust
host  all postgres ::1/128 trust
host  all all 127.0.0.1/32 scram-sha-256
host  all all ::1/128 scram-sha-256
"""


@pytest.fixture(scope="module")
def scram_pg() -> Iterator[LocalPostgres]:
    """A throw-away cluster of this module's own whose tenant roles must present their password."""
    with own_postgres("iso") as server:
        (server.data_dir / "pg_hba.conf").write_text(_HBA)

        async def reload() -> None:
            conn = await asyncpg.connect(server.url, timeout=10)
            try:
                await conn.execute("SELECT pg_reload_conf()")
                errors = await conn.fetch("SELECT error FROM pg_hba_file_rules WHERE error IS NOT NULL")
                assert not errors, errors
            finally:
                await conn.close()

        asyncio.run(reload())
        yield server


@pytest.fixture(scope="module")
async def inst(scram_pg: LocalPostgres, redis_url: str) -> AsyncIterator[Installation]:
    installation = Installation.isolated(scram_pg.url, redis_url)
    await installation.create()
    yield installation
    await installation.drop()


@pytest.fixture(scope="module")
async def app(inst: Installation) -> AsyncIterator[Any]:
    async with in_process(inst) as (client, _):
        yield client


@pytest.fixture(scope="module")
async def pair(app: Any, inst: Installation) -> dict[str, dict[str, Any]]:
    """Tenants A (a connection-limit override of 3) and B (the default plan), with their vended credentials."""
    tenants: dict[str, dict[str, Any]] = {}
    for name, body in (
        ("a", {"slug": "iso-hard-a", "name": "A", "limits": {"max_connections": 3}}),
        ("b", {"slug": "iso-hard-b", "name": "B"}),
    ):
        response = await app.post("/admin/tenants", json=body)
        assert response.status_code == 201, response.text
        tenant = response.json()
        tenants[name] = {"tenant": tenant, "creds": await vend(app, inst, tenant["id"])}
    return tenants


# --- helpers ----------------------------------------------------------------------------------------


async def vend_response(client: Any, inst: Installation, tenant_id: str) -> httpx.Response:
    response: httpx.Response = await client.get(
        f"/internal/v1/tenants/{tenant_id}/database", headers={"Authorization": f"Bearer {inst.service_token}"}
    )
    return response


async def vend(client: Any, inst: Installation, tenant_id: str) -> dict[str, Any]:
    response = await vend_response(client, inst, tenant_id)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def dsn(
    creds: dict[str, Any], *, database: str | None = None, user: str | None = None, password: str | None = None
) -> str:
    return (
        f"postgresql://{user or creds['user']}:{password if password is not None else creds['password']}"
        f"@{creds['host']}:{creds['port']}/{database or creds['database']}"
    )


@contextlib.asynccontextmanager
async def connect(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url, timeout=10, command_timeout=30)
    try:
        yield conn
    finally:
        await conn.close()


async def registry(inst: Installation, sql: str, *args: Any) -> list[asyncpg.Record]:
    async with connect(inst.database_url) as conn:
        return list(await conn.fetch(sql, *args))


async def ciphertexts(inst: Installation) -> dict[str, str]:
    return {r["slug"]: r["db_password_enc"] for r in await registry(inst, "SELECT slug, db_password_enc FROM tenants")}


async def put_ciphertext(inst: Installation, slug: str, value: str) -> None:
    await registry(inst, "UPDATE tenants SET db_password_enc = $2 WHERE slug = $1", slug, value)


# --- Postgres: who can reach what -------------------------------------------------------------------


async def test_passwords_are_checked_so_a_role_opens_only_with_its_own(pair: dict[str, dict[str, Any]]) -> None:
    a, b = pair["a"]["creds"], pair["b"]["creds"]
    async with connect(dsn(a)) as conn:
        assert await conn.fetchval("SELECT current_user") == a["user"]
    for user, password in ((b["user"], a["password"]), (a["user"], b["password"]), (a["user"], "")):
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(dsn(a, database=b["database"], user=user, password=password), timeout=10)


async def test_a_cannot_connect_to_b_the_template_the_master_or_the_maintenance_databases(
    pair: dict[str, dict[str, Any]], inst: Installation
) -> None:
    a, b = pair["a"]["creds"], pair["b"]["creds"]
    # The template normally refuses every connection; open it, so that only privileges stand in the way.
    async with template_open(inst.pg_url, inst.template):
        for database in (b["database"], inst.template, inst.master_db, "postgres", "template1"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for database"):
                await asyncpg.connect(dsn(a, database=database), timeout=10)
    with pytest.raises(asyncpg.PostgresError, match="not currently accepting connections"):
        await asyncpg.connect(dsn(a, database="template0"), timeout=10)


async def test_no_public_connect_or_temp_on_any_platform_database(
    pair: dict[str, dict[str, Any]], inst: Installation
) -> None:
    a, b = pair["a"]["creds"], pair["b"]["creds"]
    databases = [a["database"], b["database"], inst.template, inst.master_db, "postgres", "template1"]
    async with connect(inst.pg_url) as admin:
        rows = await admin.fetch(
            "SELECT datname, datacl IS NULL AS default_acl,"
            " has_database_privilege('public', oid, 'CONNECT') AS public_connect,"
            " has_database_privilege('public', oid, 'TEMP') AS public_temp,"
            " EXISTS (SELECT 1 FROM aclexplode(coalesce(datacl, acldefault('d', datdba))) x WHERE x.grantee = 0)"
            "   AS public_entry"
            " FROM pg_database WHERE datname = ANY($1::text[])",
            databases,
        )
        assert {r["datname"] for r in rows} == set(databases)
        for row in rows:
            flags = ("default_acl", "public_connect", "public_temp", "public_entry")
            assert {k: row[k] for k in flags} == dict.fromkeys(flags, False), row["datname"]
        # Each tenant database opens to its own role only (among tenant roles).
        for database, owner, other in ((a["database"], a["user"], b["user"]), (b["database"], b["user"], a["user"])):
            assert await admin.fetchval("SELECT has_database_privilege($1, $2, 'CONNECT')", owner, database)
            assert not await admin.fetchval("SELECT has_database_privilege($1, $2, 'CONNECT')", other, database)
            assert not await admin.fetchval("SELECT has_database_privilege($1, $2, 'TEMP')", other, database)


async def test_role_attributes_memberships_and_the_plans_connection_limit(
    pair: dict[str, dict[str, Any]], app: Any, inst: Installation
) -> None:
    a, b = pair["a"]["creds"], pair["b"]["creds"]
    async with connect(inst.pg_url) as admin:
        roles = {
            r["rolname"]: r
            for r in await admin.fetch("SELECT * FROM pg_roles WHERE rolname = ANY($1::text[])", [a["user"], b["user"]])
        }
        for role in roles.values():
            assert role["rolcanlogin"]
            for attribute in ("rolsuper", "rolcreatedb", "rolcreaterole", "rolreplication", "rolbypassrls"):
                assert role[attribute] is False, (role["rolname"], attribute)
            assert role["rolvaliduntil"] is None
        # Member of nothing (no pg_read_all_data, pg_read_server_files, pg_signal_backend, ...), and nobody is
        # a member of them; no per-role settings.
        members = await admin.fetch(
            "SELECT roleid::regrole::text AS r, member::regrole::text AS m FROM pg_auth_members"
            " WHERE roleid::regrole::text = ANY($1::text[]) OR member::regrole::text = ANY($1::text[])",
            [a["user"], b["user"]],
        )
        assert members == []
        settings = await admin.fetch(
            "SELECT 1 FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = ANY($1::text[])",
            [a["user"], b["user"]],
        )
        assert settings == []
        plans = {p["name"]: p for p in (await app.get("/admin/plans")).json()["items"]}
        assert roles[a["user"]]["rolconnlimit"] == 3  # A's own override
        assert roles[b["user"]]["rolconnlimit"] == plans["free"]["limits"]["max_connections"]

        # A plan change moves the limit (B has no override); back again afterwards.
        slug_b = pair["b"]["tenant"]["slug"]
        assert (await app.patch(f"/admin/tenants/{slug_b}", json={"plan": "pro"})).status_code == 200
        try:
            limit = await admin.fetchval("SELECT rolconnlimit FROM pg_roles WHERE rolname = $1", b["user"])
            assert limit == plans["pro"]["limits"]["max_connections"]
        finally:
            assert (await app.patch(f"/admin/tenants/{slug_b}", json={"plan": "free"})).status_code == 200
        limit = await admin.fetchval("SELECT rolconnlimit FROM pg_roles WHERE rolname = $1", b["user"])
        assert limit == plans["free"]["limits"]["max_connections"]

    # And Postgres enforces A's limit.
    opened = [await asyncpg.connect(dsn(a), timeout=10) for _ in range(3)]
    try:
        with pytest.raises(asyncpg.TooManyConnectionsError, match="too many connections for role"):
            await asyncpg.connect(dsn(a), timeout=10)
    finally:
        for conn in opened:
            await conn.close()


#: Statements tenant A runs on its own database, each of which must be refused with SQLSTATE 42501
#: (insufficient privilege). ``{a}`` and ``{b}`` are the roles (= databases) of A and B.
_REFUSED = (
    "SELECT rolpassword FROM pg_authid WHERE rolname = '{b}'",
    "SELECT passwd FROM pg_shadow",
    "SET ROLE {b}",
    "SET ROLE postgres",
    "SET ROLE pg_read_all_data",
    "SET SESSION AUTHORIZATION {b}",
    "CREATE DATABASE iso_hard_evil",
    "CREATE ROLE iso_hard_evil",
    "ALTER ROLE {a} SUPERUSER",
    "ALTER ROLE {a} CREATEDB",
    "ALTER ROLE {a} BYPASSRLS",
    "ALTER ROLE {a} CONNECTION LIMIT -1",
    "ALTER ROLE {b} PASSWORD 'iso-hard-evil'",
    "GRANT {b} TO {a}",
    "GRANT pg_read_server_files TO {a}",
    "GRANT CONNECT ON DATABASE {b} TO {a}",
    "DROP DATABASE {b}",
    "ALTER DATABASE {b} OWNER TO {a}",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT pg_read_binary_file('/etc/passwd')",
    "SELECT pg_ls_dir('.')",
    "SELECT pg_stat_file('postgresql.conf')",
    "SELECT lo_import('/etc/passwd')",
    "COPY (SELECT 1) TO PROGRAM 'id'",
    "COPY notes FROM PROGRAM 'id'",
    "COPY notes FROM '/etc/passwd'",
    "COPY (SELECT 1) TO '/tmp/iso-hard-evil'",
    "ALTER SYSTEM SET log_statement = 'all'",
    "SELECT pg_reload_conf()",
    "SELECT * FROM pg_hba_file_rules",
    "SELECT current_setting('data_directory')",
    "CREATE FUNCTION iso_hard_evil() RETURNS int AS '/lib/x.so', 'f' LANGUAGE c",
    "CREATE EVENT TRIGGER iso_hard_evil ON ddl_command_start EXECUTE FUNCTION pg_catalog.now()",
)


async def test_a_cannot_escalate_read_files_or_run_programs(
    pair: dict[str, dict[str, Any]], inst: Installation
) -> None:
    a, b = pair["a"]["creds"], pair["b"]["creds"]
    allowed: list[str] = []
    refusals: dict[str, str] = {}
    async with connect(dsn(a)) as conn:
        for template in _REFUSED:
            statement = template.format(a=a["user"], b=b["user"])
            try:
                await conn.execute(statement)
            except asyncpg.PostgresError as exc:
                refusals[statement] = exc.sqlstate
            else:
                allowed.append(statement)
        # Untrusted extensions (a link to other databases, server files) cannot be installed either.
        for extension in ("dblink", "postgres_fdw", "file_fdw", "adminpack"):
            try:
                await conn.execute(f"CREATE EXTENSION {extension}")
            except asyncpg.PostgresError:
                pass
            else:
                allowed.append(f"CREATE EXTENSION {extension}")
        # B's password hash is masked in the one catalogue view A may read.
        assert await conn.fetchval("SELECT rolpassword FROM pg_roles WHERE rolname = $1", b["user"]) == "********"
        assert await conn.fetchval("SELECT current_user") == a["user"]
        assert await conn.fetchval("SELECT session_user") == a["user"]
    assert allowed == [], f"tenant A was allowed: {allowed}"
    assert {k: v for k, v in refusals.items() if v != "42501"} == {}, "refused, but not for lack of privilege"
    # Nothing changed on the way.
    async with connect(inst.pg_url) as admin:
        role = await admin.fetchrow("SELECT * FROM pg_roles WHERE rolname = $1", a["user"])
        assert role is not None
        assert [role[k] for k in ("rolsuper", "rolcreatedb", "rolcreaterole", "rolbypassrls")] == [False] * 4
        assert role["rolconnlimit"] == 3
        assert not await admin.fetchval("SELECT has_database_privilege($1, $2, 'CONNECT')", a["user"], b["database"])
        assert not await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = 'iso_hard_evil'")
        assert not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = 'iso_hard_evil'")
        assert not Path("/tmp/iso-hard-evil").exists()


async def test_a_cannot_see_or_end_bs_sessions(pair: dict[str, dict[str, Any]]) -> None:
    a, b = pair["a"]["creds"], pair["b"]["creds"]
    marker = f"iso-hard-secret-{uuid.uuid4().hex}"
    async with connect(dsn(b)) as conn_b, connect(dsn(a)) as conn_a:
        await conn_b.fetchval(f"SELECT '{marker}'")
        pid_b = await conn_b.fetchval("SELECT pg_backend_pid()")
        seen = await conn_a.fetchrow("SELECT query, client_addr FROM pg_stat_activity WHERE pid = $1", pid_b)
        assert seen is not None
        assert seen["query"] == "<insufficient privilege>"
        assert seen["client_addr"] is None
        assert not await conn_a.fetchval("SELECT count(*) FROM pg_stat_activity WHERE query LIKE $1", f"%{marker}%")
        for function in ("pg_terminate_backend", "pg_cancel_backend"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn_a.fetchval(f"SELECT {function}($1)", pid_b)
        assert await conn_b.fetchval("SELECT 1") == 1  # still alive


# --- secrets at rest --------------------------------------------------------------------------------


async def test_a_copy_of_the_master_database_holds_no_usable_secret(
    pair: dict[str, dict[str, Any]], inst: Installation
) -> None:
    """Everything in every table of the registry, as text: no password, no key material, no token, no API key."""
    async with connect(inst.database_url) as conn:
        tables = await conn.fetch(
            "SELECT format('%I.%I', schemaname, tablename) AS t FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        )
        assert len(tables) >= 3
        parts = [await conn.fetchval(f"SELECT coalesce(string_agg(x::text, '|'), '') FROM {r['t']} x") for r in tables]
        dump = "\n".join(parts)
        hashes = {
            r["prefix"]: bytes(r["key_hash"])
            for r in await conn.fetch(
                "SELECT prefix, key_hash FROM api_keys WHERE tenant_id = $1::uuid", pair["a"]["tenant"]["id"]
            )
        }
    secrets_ = [pair["a"]["creds"]["password"], pair["b"]["creds"]["password"], pair["a"]["tenant"]["api_key"]["key"]]
    secrets_ += [entry.partition(":")[2] for entry in inst.encryption_keys.split(",")]
    secrets_ += [inst.api_key_hash_secret, inst.admin_token, inst.service_token]
    for secret in secrets_:
        assert secret not in dump
    assert "SCRAM-SHA-256$" not in dump
    # The API key is stored as a keyed hash: its plain SHA-256 is not what is stored.
    key = pair["a"]["tenant"]["api_key"]
    assert hashes[key["prefix"]] != hashlib.sha256(key["key"].encode()).digest()
    # The ciphertexts are useless without the key ring: another key (even with the right key id) cannot open them.
    stored = (await ciphertexts(inst))[pair["a"]["tenant"]["slug"]]
    kid = stored.split(".")[1]
    with pytest.raises(DecryptionError):
        SecretBox.from_config(f"{kid}:{generate_key()}").decrypt(
            stored, f"tenant:{pair['a']['tenant']['id']}:db-password"
        )


async def test_a_master_writer_cannot_point_one_tenant_at_anothers_database(
    pair: dict[str, dict[str, Any]], app: Any, inst: Installation
) -> None:
    """The registry refuses two tenants naming one database. Swapping A's and B's database and role names vends
    each tenant's own password for the other's role, which Postgres refuses; moving the ciphertexts along with
    the names does not decrypt (each is bound to its tenant's id)."""
    a, b = pair["a"], pair["b"]
    slug_a, slug_b = a["tenant"]["slug"], b["tenant"]["slug"]
    rows = {r["slug"]: r for r in await registry(inst, "SELECT slug, db_name, db_role, db_password_enc FROM tenants")}
    rename = "UPDATE tenants SET db_name = $2, db_role = $3 WHERE slug = $1"

    async def point(slug: str, target: str) -> None:
        await registry(inst, rename, slug, rows[target]["db_name"], rows[target]["db_role"])

    with pytest.raises(asyncpg.UniqueViolationError):
        await point(slug_b, slug_a)
    try:
        await registry(inst, rename, slug_a, "iso_hard_tmp", "iso_hard_tmp")
        await point(slug_b, slug_a)
        await point(slug_a, slug_b)
        for tenant, victim in ((b, a), (a, b)):
            creds = await vend(app, inst, tenant["tenant"]["id"])
            assert creds["user"] == victim["creds"]["user"]
            assert creds["password"] == tenant["creds"]["password"]
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(dsn(creds), timeout=10)
        await put_ciphertext(inst, slug_a, rows[slug_b]["db_password_enc"])
        await put_ciphertext(inst, slug_b, rows[slug_a]["db_password_enc"])
        for tenant, victim in ((b, a), (a, b)):
            response = await vend_response(app, inst, tenant["tenant"]["id"])
            assert response.status_code == 500, response.text
            assert response.json()["code"] == "secret_unreadable"
            assert victim["creds"]["password"] not in response.text
            assert tenant["creds"]["password"] not in response.text
    finally:
        await registry(inst, rename, slug_a, "iso_hard_tmp", "iso_hard_tmp")
        await point(slug_b, slug_b)
        await point(slug_a, slug_a)
        for slug in (slug_a, slug_b):
            await put_ciphertext(inst, slug, rows[slug]["db_password_enc"])
    for tenant in (a, b):
        assert (await vend(app, inst, tenant["tenant"]["id"]))["password"] == tenant["creds"]["password"]


async def test_rotation_keeps_secrets_readable_and_bound_and_reports_unreadable_rows(
    pair: dict[str, dict[str, Any]], inst: Installation
) -> None:
    a, b = pair["a"], pair["b"]
    slug_a, slug_b = a["tenant"]["slug"], b["tenant"]["slug"]
    passwords = {a["tenant"]["id"]: a["creds"]["password"], b["tenant"]["id"]: b["creds"]["password"]}
    old = inst.encryption_keys
    new = f"k2:{generate_key()}"
    both = f"{new},{old}"
    original = await ciphertexts(inst)
    try:
        # An attacker swapped A's and B's ciphertexts: rotation refuses to re-encrypt them (they do not decrypt
        # for their rows), says which, exits non-zero, and still rotates every other secret.
        await put_ciphertext(inst, slug_a, original[slug_b])
        await put_ciphertext(inst, slug_b, original[slug_a])
        result = inst.tenantctl("rotate-encryption", env={"ENCRYPTION_KEYS": both}, check=False)
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        assert "Traceback" not in output
        assert slug_a in result.stderr
        assert slug_b in result.stderr
        for secret in (*passwords.values(), *original.values(), new.partition(":")[2]):
            assert secret not in output
        swapped = await ciphertexts(inst)
        assert swapped[slug_a] == original[slug_b]
        assert swapped[slug_b] == original[slug_a]
        others = {s for s in original if s not in (slug_a, slug_b)}
        assert all(swapped[s].startswith("v1.k2.") for s in others), swapped

        # Put back, everything rotates; with the old key gone the same passwords come out.
        await put_ciphertext(inst, slug_a, original[slug_a])
        await put_ciphertext(inst, slug_b, original[slug_b])
        result = inst.tenantctl("rotate-encryption", env={"ENCRYPTION_KEYS": both})
        assert "re-encrypted 2 secret(s) with key k2" in result.stdout
        rotated = await ciphertexts(inst)
        assert all(v.startswith("v1.k2.") for v in rotated.values()), rotated
        async with in_process(inst, ENCRYPTION_KEYS=new) as (client, _):
            for tenant_id, password in passwords.items():
                creds = await vend(client, inst, tenant_id)
                assert creds["password"] == password
                async with connect(dsn(creds)) as conn:
                    assert await conn.fetchval("SELECT current_database()") == creds["database"]
            # Rotation kept the binding: swapped under the new key, neither decrypts, nor leaks the other.
            await put_ciphertext(inst, slug_a, rotated[slug_b])
            await put_ciphertext(inst, slug_b, rotated[slug_a])
            for tenant_id in passwords:
                response = await vend_response(client, inst, tenant_id)
                assert response.status_code == 500, response.text
                assert response.json()["code"] == "secret_unreadable"
                for password in passwords.values():
                    assert password not in response.text
    finally:
        for slug, value in original.items():
            await put_ciphertext(inst, slug, value)


# --- Redis ------------------------------------------------------------------------------------------

#: Key parts an app might pass through from its users; none may leave the caller's namespace.
_HOSTILE_PARTS: tuple[tuple[str, ...], ...] = (
    ("secret",),
    ("..", "secret"),
    ("*",),
    ("app", "secret"),
    ("\r\nFLUSHALL\r\n",),
    ("x" * 4096,),
    ("t:", "secret"),
)


async def test_tenant_redis_cannot_reach_another_tenants_keys(pair: dict[str, dict[str, Any]], redis_url: str) -> None:
    id_a, id_b = pair["a"]["tenant"]["id"], pair["b"]["tenant"]["id"]
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    minute = int(time.time()) // 60
    platform = platform_key("iso-hard", uuid.uuid4().hex)
    ra, rb = TenantRedis(client, id_a), TenantRedis(client, id_b)
    hostile = [*_HOSTILE_PARTS, (id_b, "app", "secret"), ("rl", "m", str(minute))]
    braces = [(f"t:{{{id_b}}}:app:secret",), (f"}}:t:{{{id_b}}}:app:secret",), ("{" + id_b + "}",), ("x}",)]
    try:
        await rb.set("secret", value="b-only", ttl_seconds=300)
        await rb.incr("counter", ttl_seconds=300)
        await client.set(minute_counter_key(id_b, minute), 7, ex=120)
        await client.set(minute_counter_key(id_a, minute), 3, ex=120)
        await client.set(platform, "platform", ex=120)
        foreign = [*sorted([k async for k in client.scan_iter(match=f"t:{{{id_b}}}:*")]), platform.encode()]
        before = {k: (await client.get(k), await client.ttl(k) > 0) for k in foreign}

        for parts in hostile:
            assert await ra.get(*parts) is None
            await ra.set(*parts, value="a-was-here", ttl_seconds=60)
            assert await ra.incr(*parts[:-1], parts[-1] + "-n", ttl_seconds=60) == 1
            assert await ra.get(*parts) == b"a-was-here"
            await ra.delete(*parts)
        for parts in braces:
            for call in (ra.get(*parts), ra.set(*parts, value=1), ra.incr(*parts), ra.delete(*parts)):
                with pytest.raises(ValueError, match="invalid key part"):
                    await call
        # A tenant id that is not a UUID cannot name a namespace at all.
        for bad_id in (f"{id_b}}}:app", "*", "", f"{id_a}:x"):
            with pytest.raises(ValueError):
                await TenantRedis(client, bad_id).set("k", value=1)

        after = {k: (await client.get(k), await client.ttl(k) > 0) for k in foreign}
        assert after == before
        assert await client.get(minute_counter_key(id_a, minute)) == b"3"  # A's own quota counter untouched
        mine = [k.decode(errors="replace") async for k in client.scan_iter(match=f"t:{{{id_a}}}:*")]
        assert all(k.startswith(f"t:{{{id_a}}}:app:") for k in mine if k != minute_counter_key(id_a, minute)), mine
        assert await rb.get("secret") == b"b-only"
    finally:
        keys = [k async for k in client.scan_iter(match=f"t:{{{id_a}}}:*")]
        keys += [k async for k in client.scan_iter(match=f"t:{{{id_b}}}:*")]
        if keys:
            await client.delete(*keys)
        await client.delete(platform)
        await client.aclose()


async def test_fleet_migration_logs_in_as_each_tenant_with_its_own_password(app: Any, inst: Installation) -> None:
    """On a cluster that checks passwords, `migrate-tenants` logs in as every tenant, a soft-deleted one (no LOGIN,
    given it for the moment of that login only) included."""
    ids = []
    for slug in ("iso-fleet-live", "iso-fleet-deleted"):
        response = await app.post("/admin/tenants", json={"slug": slug, "name": slug})
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    assert (await app.delete(f"/admin/tenants/{ids[1]}")).status_code == 200
    registry = await asyncpg.connect(inst.database_url)
    try:  # both look behind the head, so the fleet migration must open a session in each
        await registry.execute("UPDATE tenants SET schema_version = 1 WHERE id = ANY($1::uuid[])", ids)
        result = inst.tenantctl("migrate-tenants", check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 failed" in result.stdout
        versions = await registry.fetch("SELECT schema_version FROM tenants WHERE id = ANY($1::uuid[])", ids)
        roles = await registry.fetch("SELECT db_role FROM tenants WHERE id = ANY($1::uuid[]) ORDER BY slug", ids)
    finally:
        await registry.close()
    assert {r["schema_version"] for r in versions} == {2}
    admin = await asyncpg.connect(inst.pg_url)
    try:  # the deleted tenant's role is back to NOLOGIN
        logins = await admin.fetch(
            "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY($1::text[])", [r["db_role"] for r in roles]
        )
    finally:
        await admin.close()
    assert {r["rolname"]: r["rolcanlogin"] for r in logins} == {roles[0]["db_role"]: False, roles[1]["db_role"]: True}
