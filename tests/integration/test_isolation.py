"""Isolation in Postgres: every tenant gets its own database and role, and nothing broader."""

from __future__ import annotations

import asyncpg
import pytest

from support.assertions import create_tenant as _create
from support.platform import Installation, with_database


async def _credentials(api, installation: Installation, tenant_id: str) -> dict:
    response = await api.get(
        f"/internal/v1/tenants/{tenant_id}/database",
        headers={"Authorization": f"Bearer {installation.service_token}"},
    )
    assert response.status_code == 200, response.text
    return response.json()


def _dsn(creds: dict, database: str | None = None) -> str:
    return (
        f"postgresql://{creds['user']}:{creds['password']}@{creds['host']}:{creds['port']}/"
        f"{database or creds['database']}"
    )


async def test_two_tenants_get_two_databases(api, installation: Installation, pg_url: str) -> None:
    a = await _create(api, "iso-alpha")
    b = await _create(api, "iso-bravo")
    assert a["status"] == b["status"] == "active"
    assert a["database"]["name"] != b["database"]["name"]
    conn = await asyncpg.connect(pg_url)
    try:
        names = {r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")}
    finally:
        await conn.close()
    assert {a["database"]["name"], b["database"]["name"]} <= names


async def test_tenant_role_reaches_only_its_own_database(api, installation: Installation) -> None:
    a = await _create(api, "iso-charlie")
    b = await _create(api, "iso-delta")
    creds_a = await _credentials(api, installation, a["id"])
    conn = await asyncpg.connect(_dsn(creds_a))
    try:
        assert await conn.fetchval("SELECT current_database()") == a["database"]["name"]
        await conn.execute("INSERT INTO notes (body) VALUES ('mine')")
        assert await conn.fetchval("SELECT count(*) FROM notes") == 1
    finally:
        await conn.close()
    for other, expected in (
        (b["database"]["name"], "permission denied"),
        (installation.master_db, "permission denied"),
        (installation.template, "not currently accepting connections"),
    ):
        with pytest.raises(asyncpg.PostgresError) as excinfo:
            await asyncpg.connect(_dsn(creds_a, other))
        assert expected in str(excinfo.value)


async def test_tenant_role_has_no_privileged_attributes(api, installation: Installation, pg_url: str) -> None:
    a = await _create(api, "iso-echo")
    conn = await asyncpg.connect(pg_url)
    try:
        role = await conn.fetchrow("SELECT * FROM pg_roles WHERE rolname = $1", a["database"]["name"])
        acl = await conn.fetchval("SELECT datacl::text FROM pg_database WHERE datname = $1", a["database"]["name"])
        memberships = await conn.fetchval("SELECT count(*) FROM pg_auth_members WHERE member = $1", role["oid"])
    finally:
        await conn.close()
    assert role["rolcanlogin"]
    for attribute in ("rolsuper", "rolcreatedb", "rolcreaterole", "rolreplication", "rolbypassrls"):
        assert role[attribute] is False, attribute
    # INHERIT only reaches pg_database_owner in its own database: the role is granted no role at all.
    assert memberships == 0
    assert role["rolconnlimit"] == a["limits"]["max_connections"]
    # No "=..." entry: PUBLIC holds nothing on the tenant database.
    assert not any(entry.startswith("=") for entry in acl.strip("{}").split(","))


async def test_tenant_owns_the_objects_cloned_from_the_template(api, installation: Installation) -> None:
    a = await _create(api, "iso-foxtrot")
    creds = await _credentials(api, installation, a["id"])
    conn = await asyncpg.connect(_dsn(creds))
    try:
        owners = {
            r["tableowner"] for r in await conn.fetch("SELECT tableowner FROM pg_tables WHERE schemaname = 'public'")
        }
        schema_owner = await conn.fetchval(
            "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'public'"
        )
        # Cloned objects belong to pg_database_owner, whose one member here is the tenant's role (the owner of
        # the database): the tenant holds owner rights on them and can evolve its own schema.
        assert await conn.fetchval("SELECT pg_has_role(current_user, 'pg_database_owner', 'USAGE')")
        await conn.execute("ALTER TABLE notes ADD COLUMN tag text")
        await conn.execute("CREATE TABLE app_private (id int)")
        mine = await conn.fetchval("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'app_private'")
    finally:
        await conn.close()
    assert owners == {"pg_database_owner"}
    assert schema_owner == "pg_database_owner"
    assert mine == creds["user"]


async def test_owner_rights_do_not_reach_another_tenants_database(api, installation: Installation, pg_url: str) -> None:
    a = await _create(api, "iso-foxtrot-two")
    b = await _create(api, "iso-foxtrot-three")
    creds_a = await _credentials(api, installation, a["id"])
    # Even where a's role could connect to b's database (an operator's mistaken GRANT), it is not b's owner there.
    admin = await asyncpg.connect(with_database(pg_url, b["database"]["name"]))
    try:
        await admin.execute(f'GRANT CONNECT ON DATABASE "{b["database"]["name"]}" TO "{creds_a["user"]}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(_dsn(creds_a, b["database"]["name"]))
    try:
        assert not await conn.fetchval("SELECT pg_has_role(current_user, 'pg_database_owner', 'USAGE')")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM notes")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CREATE TABLE intruder (id int)")
    finally:
        await conn.close()


async def test_master_registry_never_stores_plaintext_passwords(api, installation: Installation) -> None:
    a = await _create(api, "iso-golf")
    creds = await _credentials(api, installation, a["id"])
    conn = await asyncpg.connect(with_database(installation.pg_url, installation.master_db))
    try:
        row = await conn.fetchrow("SELECT db_password_enc FROM tenants WHERE id = $1::uuid", a["id"])
        dump = await conn.fetchval("SELECT string_agg(t::text, '|') FROM tenants t")
        hashes = await conn.fetch("SELECT key_hash FROM api_keys WHERE tenant_id = $1::uuid", a["id"])
    finally:
        await conn.close()
    assert creds["password"] not in row["db_password_enc"]
    assert creds["password"] not in dump
    assert a["api_key"]["key"] not in dump
    assert all(len(h["key_hash"]) == 32 for h in hashes)
