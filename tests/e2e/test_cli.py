"""``tenantctl`` as an operator runs it: a real process, on the installation's environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from support.platform import ROOT, Installation
from tenant_service.apikeys.service import ApiKeyService
from tenant_service.context import AppContext
from tenant_service.secretbox import SecretBox
from tenant_service.tenants.schemas import TenantCreate
from tenant_service.tenants.service import TenantService
from tenantry_common.apikeys import hash_api_key, is_well_formed

pytestmark = pytest.mark.e2e


def _cli(installation: Installation, *args: str, env: dict[str, str] | None = None, **kwargs: Any) -> Any:
    return installation.tenantctl(*args, env=env, **kwargs)


def _json(result: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(result.stdout)


def _clean_failure(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed command prints; never a traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


async def _database_exists(pg_url: str, name: str) -> bool:
    conn = await asyncpg.connect(pg_url)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


async def _role_can_login(pg_url: str, name: str) -> bool | None:
    conn = await asyncpg.connect(pg_url)
    try:
        return await conn.fetchval("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", name)
    finally:
        await conn.close()


async def test_tenant_lifecycle_from_the_command_line(installation: Installation, pg_url: str) -> None:
    made = _cli(installation, "tenants", "create", "cli-alpha", "--name", "CLI Alpha", "--domain", "alpha.example.com")
    created = _json(made)
    tenant, key = created["tenant"], created["api_key"]
    assert tenant["slug"] == "cli-alpha"
    assert tenant["name"] == "CLI Alpha"
    assert tenant["status"] == "active"
    assert tenant["plan"] == "free"
    assert tenant["domains"] == ["alpha.example.com"]
    assert tenant["database"]["schema_version"] == 2
    assert is_well_formed(key["key"])
    assert key["prefix"] == key["key"][:11]
    assert "password" not in json.dumps(tenant)
    # The key is printed once, on stdout; the log lines on stderr never carry it.
    assert made.stderr.strip()
    assert key["key"] not in made.stderr
    database = tenant["database"]["name"]
    assert await _database_exists(pg_url, database)

    listing = _cli(installation, "tenants", "list", "--q", "cli-alpha").stdout.splitlines()
    assert len(listing) == 1
    assert listing[0].split() == [tenant["id"], "cli-alpha", "active", "free", database]

    shown = _json(_cli(installation, "tenants", "show", tenant["id"]))
    assert shown["slug"] == "cli-alpha"
    assert shown["status"] == "active"
    assert key["key"] not in json.dumps(shown)

    assert _json(_cli(installation, "tenants", "suspend", "cli-alpha"))["status"] == "suspended"
    assert _json(_cli(installation, "tenants", "resume", "cli-alpha"))["status"] == "active"

    deleted = _json(_cli(installation, "tenants", "delete", "cli-alpha"))
    assert deleted["status"] == "deleted"
    assert deleted["purge_after"] is not None
    # Soft delete keeps the database but closes it to the tenant's role.
    assert await _database_exists(pg_url, database)
    assert await _role_can_login(pg_url, database) is False

    purged = _json(_cli(installation, "tenants", "delete", "cli-alpha", "--purge"))
    assert purged["status"] == "deleted"
    assert not await _database_exists(pg_url, database)
    assert await _role_can_login(pg_url, database) is None

    # Gone for good: a problem, printed as one clean line, exit 1.
    missing = _cli(installation, "tenants", "show", "cli-alpha", check=False)
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert _clean_failure(missing) == "error: tenant_not_found: no tenant 'cli-alpha'"

    # Every change was audited as the operator who ran the command.
    audit_conn = await asyncpg.connect(installation.database_url)
    try:
        audited = {
            r["action"]: r["actor"]
            for r in await audit_conn.fetch("SELECT action, actor FROM audit_log WHERE target = 'cli-alpha'")
        }
    finally:
        await audit_conn.close()
    for action in ("tenant.create", "tenant.suspend", "tenant.resume", "tenant.delete", "tenant.purged"):
        assert audited.get(action, "").startswith("cli:"), audited


async def test_api_keys_from_the_command_line(installation: Installation, ctx: AppContext) -> None:
    await TenantService(ctx).create(TenantCreate(slug="cli-keys", name="Keys"), actor="test")
    keys = ApiKeyService(ctx)
    secret = installation.api_key_hash_secret.encode()

    made = _cli(
        installation,
        "api-keys",
        "create",
        "cli-keys",
        "--name",
        "ci",
        "--scope",
        "notes:read",
        "--scope",
        "notes:write",
    )
    created = _json(made)
    assert created["name"] == "ci"
    assert created["scopes"] == ["notes:read", "notes:write"]
    assert created["status"] == "active"
    assert is_well_formed(created["key"])
    assert created["key"] not in made.stderr
    stored = {k.id: k for k in (await keys.list("cli-keys")).items}
    assert stored[created["id"]].prefix == created["key"][:11]

    rotated = _json(_cli(installation, "api-keys", "rotate", "cli-keys", created["id"], "--grace-seconds", "60"))
    assert rotated["replaces"] == created["id"]
    assert rotated["key"] != created["key"]
    assert is_well_formed(rotated["key"])
    assert rotated["scopes"] == ["notes:read", "notes:write"]
    stored = {k.id: k for k in (await keys.list("cli-keys")).items}
    old = stored[created["id"]]
    assert old.rotated_to == rotated["id"]
    assert old.status == "active"  # still inside its grace period
    assert old.expires_at is not None
    assert (old.expires_at - old.created_at).total_seconds() < 3600

    revoked = _cli(installation, "api-keys", "revoke", "cli-keys", rotated["id"])
    assert revoked.stdout.strip() == "revoked"
    stored = {k.id: k for k in (await keys.list("cli-keys")).items}
    assert stored[rotated["id"]].status == "revoked"

    # Only hashes are kept, and they are the keyed hashes of the printed keys.
    conn = await asyncpg.connect(installation.database_url)
    try:
        hashes = {
            str(r["id"]): bytes(r["key_hash"])
            for r in await conn.fetch(
                "SELECT id, key_hash FROM api_keys WHERE id = ANY($1::uuid[])", [created["id"], rotated["id"]]
            )
        }
    finally:
        await conn.close()
    assert hashes == {
        created["id"]: hash_api_key(created["key"], secret),
        rotated["id"]: hash_api_key(rotated["key"], secret),
    }


def test_reconcile_prints_its_report(installation: Installation) -> None:
    report = _json(_cli(installation, "reconcile"))
    assert set(report) == {
        "provisioned", "failed", "pending", "purged", "orphans_dropped", "logins_fixed", "holds_cleared",
        "retired_dropped", "errors",
    }  # fmt: skip
    assert all(isinstance(v, list) and all(isinstance(i, str) for i in v) for v in report.values()), report


def test_generate_key_prints_a_usable_encryption_key(installation: Installation) -> None:
    entry = _cli(installation, "generate-key", "--kid", "k2").stdout.strip()
    assert entry.startswith("k2:")
    box = SecretBox.from_config(f"{entry},{installation.encryption_keys}")
    assert box.primary_kid == "k2"
    assert box.decrypt(box.encrypt("s3cret", "ctx"), "ctx") == "s3cret"


async def test_migrate_twice_is_idempotent(installation: Installation) -> None:
    # The fixture already migrated once; two more runs change nothing and both succeed.
    outputs = [_cli(installation, "migrate").stdout.strip().splitlines() for _ in range(2)]
    expected = [
        f"registry migrated; template {installation.template} at schema version 2",
        "  server default: template at schema version 2",
    ]
    assert outputs == [expected, expected]
    conn = await asyncpg.connect(installation.database_url)
    try:
        assert await conn.fetchval("SELECT template_version FROM installation") == 2
        assert await conn.fetchval("SELECT count(*) FROM installation") == 1
    finally:
        await conn.close()
    tpl = await asyncpg.connect(installation.pg_url)
    try:
        # The template is closed to connections again after each run.
        assert await tpl.fetchval("SELECT datallowconn FROM pg_database WHERE datname = $1", installation.template) is (
            False
        )
    finally:
        await tpl.close()


def _run_without(installation: Installation, missing: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **installation.env()}
    env.pop(missing)
    return subprocess.run(
        [sys.executable, "-m", "tenant_service", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


@pytest.mark.parametrize("command", [["tenants", "list"], ["serve", "--port", "0"]])
def test_missing_admin_token_is_a_configuration_error(installation: Installation, command: list[str]) -> None:
    result = _run_without(installation, "ADMIN_TOKEN", *command)
    assert result.returncode == 2, result.stderr
    line = _clean_failure(result)
    assert line.startswith("configuration error: ")
    assert "ADMIN_TOKEN" in line


def test_a_wrong_migrations_directory_is_one_clean_error(installation: Installation, tmp_path: Path) -> None:
    result = _cli(installation, "migrate", check=False, env={"TENANT_MIGRATIONS_DIR": str(tmp_path / "nope")})
    assert result.returncode != 0
    line = _clean_failure(result)
    assert "nope" in line
    assert "migrations" in line


@pytest.mark.parametrize(
    ("where", "expected"),
    [("server-down", "error: ConnectionRefusedError: "), ("no-such-database", "error: InvalidCatalogNameError: ")],
    ids=["server-down", "no-such-database"],
)
def test_an_unusable_registry_url_is_one_clean_error_without_its_password(
    installation: Installation, where: str, expected: str
) -> None:
    parts = urlsplit(installation.pg_url)
    host = "127.0.0.1:1" if where == "server-down" else f"{parts.hostname}:{parts.port}"
    bad = f"postgresql://{parts.username}:Sup3r-Secret-Pw@{host}/tenantry_no_such_db"
    result = _cli(installation, "tenants", "list", check=False, env={"DATABASE_URL": bad}, timeout=60)
    assert result.returncode == 1
    assert "Sup3r-Secret-Pw" not in result.stderr + result.stdout
    assert _clean_failure(result).startswith(expected)


async def test_users_from_the_command_line(installation: Installation, ctx: AppContext) -> None:
    await TenantService(ctx).create(TenantCreate(slug="cli-users", name="Users"), actor="test")
    created = _json(_cli(installation, "users", "create", "cli-users", "--email", "Ops@Example.com", "--role", "admin"))
    assert created["user"]["status"] == "invited"
    assert created["invitation"]["token"].startswith("inv_")
    listed = _json(_cli(installation, "users", "list", "cli-users"))
    assert [u["email"] for u in listed["items"]] == ["Ops@Example.com"]
    assert "inv_" not in json.dumps(listed)
    disabled = _json(_cli(installation, "users", "disable", "cli-users", created["user"]["id"]))
    assert disabled["status"] == "disabled"
    bad = _cli(installation, "users", "create", "cli-users", "--email", "not an email", check=False)
    assert bad.returncode != 0
    assert "Traceback" not in bad.stderr
