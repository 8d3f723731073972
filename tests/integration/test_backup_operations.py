"""The operations and backup admin API in-process (contract §9, §10): validation, listing, cancelling, schedules
and retention, key rotation, and ``tenantctl backups|tenants export``; the work itself runs through the operation
runner, as a replica's would."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from support.assertions import uniq
from support.platform import Installation, in_process, registry, with_database
from tenant_service.backups.jobs import handlers
from tenant_service.backups.schedule import schedule_once
from tenant_service.context import AppContext
from tenant_service.operations.runner import OperationRunner
from tenant_service.operations.service import OperationService
from tenant_service.provisioning.schema import DEFAULT_MIGRATIONS_DIR
from tenant_service.secretbox import generate_key
from tenantry_common.timeutil import utcnow


@pytest.fixture(scope="module")
async def inst(pg_url: str, redis_url: str) -> AsyncIterator[Installation]:
    installation = Installation.isolated(pg_url, redis_url, label="ops")
    await installation.create()
    yield installation
    await installation.drop()


@pytest.fixture
async def app(inst: Installation) -> AsyncIterator[tuple[httpx.AsyncClient, AppContext]]:
    async with in_process(inst) as (client, ctx):
        yield client, ctx


async def run(ctx: AppContext, response: httpx.Response) -> dict[str, Any]:
    """Run the operation of a 202 here, as a runner would; its final state."""
    assert response.status_code == 202, response.text
    op_id = response.json()["id"]
    await OperationRunner(ctx, handlers(ctx), workers=1, poll_seconds=1.0).run_now(uuid.UUID(op_id))
    done: dict[str, Any] = msgspec.to_builtins(await OperationService(ctx).get(op_id))
    return done


async def tenant(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/admin/tenants", json={"slug": uniq("ops"), "name": "ops", **body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_a_backup_request_is_202_with_the_operation_and_its_location(app) -> None:
    client, ctx = app
    t = await tenant(client)
    response = await client.post(f"/admin/tenants/{t['slug']}/backups", json={"note": "first"})
    assert response.status_code == 202
    op = response.json()
    assert response.headers["location"] == f"/admin/operations/{op['id']}"
    assert op["kind"] == "backup"
    assert op["state"] == "pending"
    assert op["tenant_id"] == t["id"]
    assert op["error"] is None
    assert op["result"] is None
    assert set(op["progress"]) == {"step", "done", "total"}
    assert op["created_by"] == "admin:admin"
    done = await run(ctx, response)
    assert done["state"] == "succeeded"
    assert done["started_at"] is not None
    assert done["finished_at"] is not None
    backups = (await client.get(f"/admin/tenants/{t['slug']}/backups")).json()["items"]
    assert [b["id"] for b in backups] == [done["result"]["backup_id"]]
    assert backups[0]["note"] == "first"


async def test_operations_list_newest_first_with_filters_and_a_cursor(app) -> None:
    client, _ = app
    t = await tenant(client)
    ids = [(await client.post(f"/admin/tenants/{t['slug']}/backups", json={})).json()["id"] for _ in range(3)]
    page = (await client.get("/admin/operations", params={"tenant": t["slug"], "limit": 2})).json()
    assert [op["id"] for op in page["items"]] == ids[::-1][:2]
    rest = (await client.get("/admin/operations", params={"tenant": t["slug"], "cursor": page["next_cursor"]})).json()
    assert [op["id"] for op in rest["items"]] == ids[:1]
    assert rest["next_cursor"] is None
    by_state = (await client.get("/admin/operations", params={"tenant": t["id"], "state": "pending"})).json()
    assert {op["id"] for op in by_state["items"]} == set(ids)
    assert (await client.get("/admin/operations", params={"kind": "restore", "tenant": t["slug"]})).json()[
        "items"
    ] == []
    for params, field in (({"kind": "nope"}, "kind"), ({"state": "done"}, "state"), ({"limit": 0}, "limit")):
        bad = await client.get("/admin/operations", params=params)
        assert bad.status_code == 422, params
        assert bad.json()["errors"][0]["field"] == field
    for op_id in ids:
        assert (await client.post(f"/admin/operations/{op_id}/cancel")).status_code == 200


async def test_a_pending_operation_is_cancelled_and_undone_by_the_runner(app) -> None:
    client, ctx = app
    t = await tenant(client)
    response = await client.post(f"/admin/tenants/{t['slug']}/backups", json={})
    op_id = response.json()["id"]
    cancel = await client.post(f"/admin/operations/{op_id}/cancel")
    assert cancel.status_code == 200
    assert cancel.json()["cancel_requested"] is True
    done = await run(ctx, response)
    assert done["state"] == "cancelled"
    (backup,) = (await client.get(f"/admin/tenants/{t['slug']}/backups")).json()["items"]
    assert backup["state"] == "failed"
    again = await client.post(f"/admin/operations/{op_id}/cancel")
    assert again.status_code == 409
    assert again.json()["code"] == "operation_not_cancellable"
    audit = (await client.get("/admin/audit", params={"tenant": t["slug"]})).json()["items"]
    assert {"backup.requested", "backup.cancel"} <= {e["action"] for e in audit}


async def test_bad_bodies_and_ids_get_clear_4xx(app) -> None:
    client, _ = app
    t = await tenant(client)
    slug = t["slug"]
    cases = [
        ("POST", f"/admin/tenants/{slug}/backups", {"note": "x" * 501}, 422, None),
        ("POST", f"/admin/tenants/{slug}/backups", {"unknown": 1}, 422, None),
        ("POST", f"/admin/tenants/{slug}/restore", {"backup_id": "not-a-uuid"}, 404, "backup_not_found"),
        ("POST", f"/admin/tenants/{slug}/restore", {"backup_id": str(uuid.uuid4())}, 404, "backup_not_found"),
        ("POST", f"/admin/tenants/{slug}/restore", {"backup_id": 5}, 422, None),
        ("POST", "/admin/tenants", {"slug": uniq("c"), "name": "c", "source": {"backup_id": str(uuid.uuid4())}}, 404,
         "backup_not_found"),
        ("POST", "/admin/tenants", {"slug": uniq("c"), "name": "c", "source": {}}, 422, None),
        ("GET", f"/admin/tenants/{slug}/backups/{uuid.uuid4()}", None, 404, "backup_not_found"),
        ("GET", f"/admin/tenants/{slug}/exports/{uuid.uuid4()}/download", None, 404, "export_not_found"),
        ("DELETE", f"/admin/tenants/{slug}/backups/nope", None, 404, "backup_not_found"),
        ("GET", "/admin/tenants/no-such-tenant/backups", None, 404, "tenant_not_found"),
        ("POST", f"/admin/operations/{uuid.uuid4()}/cancel", None, 404, "operation_not_found"),
    ]  # fmt: skip
    for method, path, body, status, code in cases:
        response = (
            await client.request(method, path, json=body) if body is not None else await client.request(method, path)
        )
        assert response.status_code == status, (method, path, body, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        if code:
            assert response.json()["code"] == code
    # Without a body the restore path still undoes a soft delete.
    assert (await client.delete(f"/admin/tenants/{slug}")).status_code == 200
    restored = await client.post(f"/admin/tenants/{slug}/restore")
    assert restored.status_code == 200
    assert restored.json()["status"] == "active"


async def test_a_running_backup_cannot_be_deleted_and_a_deleted_one_is_gone(app) -> None:
    client, ctx = app
    t = await tenant(client)
    response = await client.post(f"/admin/tenants/{t['slug']}/backups", json={})
    (backup,) = (await client.get(f"/admin/tenants/{t['slug']}/backups")).json()["items"]
    refused = await client.delete(f"/admin/tenants/{t['slug']}/backups/{backup['id']}")
    assert refused.status_code == 409
    assert refused.json()["code"] == "backup_not_ready"
    assert (await client.get(f"/admin/tenants/{t['slug']}/backups/{backup['id']}/download")).status_code == 409
    await run(ctx, response)
    assert (await client.delete(f"/admin/tenants/{t['slug']}/backups/{backup['id']}")).status_code == 204
    assert (await client.get(f"/admin/tenants/{t['slug']}/backups/{backup['id']}")).status_code == 404


async def test_scheduled_backups_follow_the_plan_and_expired_ones_are_deleted(app, inst: Installation) -> None:
    client, ctx = app
    plan = uniq("bkplan")
    limits = {"requests_per_minute": 600, "requests_per_day": 50000, "backup_interval_hours": 1,
              "backup_retention_days": 7}  # fmt: skip
    assert (await client.put(f"/admin/plans/{plan}", json={"limits": limits})).status_code == 200
    assert (await client.get("/admin/plans")).json()["items"]
    scheduled = await tenant(client, plan=plan)
    unscheduled = await tenant(client)
    first = await schedule_once(ctx)
    ops = await registry(inst, "SELECT id, tenant_id, params FROM operations WHERE id = ANY($1::uuid[])", first)
    assert uuid.UUID(scheduled["id"]) in {r["tenant_id"] for r in ops}
    assert uuid.UUID(unscheduled["id"]) not in {r["tenant_id"] for r in ops}
    # One pending already: not scheduled twice.
    assert uuid.UUID(scheduled["id"]) not in {
        r["tenant_id"]
        for r in await registry(
            inst, "SELECT tenant_id FROM operations WHERE id = ANY($1::uuid[])", await schedule_once(ctx)
        )
    }
    mine = next(r for r in ops if r["tenant_id"] == uuid.UUID(scheduled["id"]))
    runner = OperationRunner(ctx, handlers(ctx), workers=1, poll_seconds=1.0)
    await runner.run_now(mine["id"])
    (backup,) = (await client.get(f"/admin/tenants/{scheduled['slug']}/backups")).json()["items"]
    assert backup["kind"] == "scheduled"
    assert backup["state"] == "completed"
    assert backup["expires_at"] is not None
    # Done within the interval: nothing due.
    assert uuid.UUID(scheduled["id"]) not in {
        r["tenant_id"]
        for r in await registry(
            inst, "SELECT tenant_id FROM operations WHERE id = ANY($1::uuid[])", await schedule_once(ctx)
        )
    }
    # Past its retention: deleted with its stored object.
    await registry(inst, "UPDATE backups SET expires_at = $2 WHERE id = $1", uuid.UUID(backup["id"]),
                   utcnow() - timedelta(seconds=1))  # fmt: skip
    await schedule_once(ctx)
    assert (await client.get(f"/admin/tenants/{scheduled['slug']}/backups/{backup['id']}")).status_code == 404
    assert inst.backup_dir is not None
    assert not list(inst.backup_dir.rglob(f"{backup['id']}*"))


async def test_rotating_encryption_keys_rewraps_data_keys_and_old_backups_still_restore(inst: Installation) -> None:
    old = inst.encryption_keys
    async with in_process(inst) as (client, ctx):
        t = await tenant(client)
        done = await run(ctx, await client.post(f"/admin/tenants/{t['slug']}/backups", json={}))
        backup_id = done["result"]["backup_id"]
    (before,) = await registry(inst, "SELECT wrapped FROM tenant_data_keys WHERE tenant_id = $1", uuid.UUID(t["id"]))
    new = f"k9:{generate_key()}"
    result = inst.tenantctl("rotate-encryption", env={"ENCRYPTION_KEYS": f"{new},{old}"})
    assert "re-wrapped" in result.stdout
    (after,) = await registry(inst, "SELECT wrapped FROM tenant_data_keys WHERE tenant_id = $1", uuid.UUID(t["id"]))
    assert after["wrapped"] != before["wrapped"]
    assert after["wrapped"].startswith("v1.k9.")
    # The old key is gone from the ring: the backup still downloads and restores.
    async with in_process(inst, ENCRYPTION_KEYS=new) as (client, ctx):
        download = await client.get(f"/admin/tenants/{t['slug']}/backups/{backup_id}/download")
        assert download.status_code == 200
        assert download.content.startswith(b"PGDMP")
        restored = await run(
            ctx, await client.post(f"/admin/tenants/{t['slug']}/restore", json={"backup_id": backup_id})
        )
        assert restored["state"] == "succeeded"


def test_tenantctl_backs_up_lists_restores_and_exports(inst: Installation, tmp_path: Path) -> None:
    slug = uniq("cli")
    created = json.loads(inst.tenantctl("tenants", "create", slug, "--name", "cli").stdout)
    assert created["tenant"]["status"] == "active"
    op = json.loads(inst.tenantctl("backups", "create", slug, "--note", "from the cli").stdout)
    assert op["state"] == "succeeded"
    backup_id = op["result"]["backup_id"]
    listing = inst.tenantctl("backups", "list", slug).stdout
    assert backup_id in listing
    assert "from the cli" in listing
    dump = tmp_path / "cli.dump"
    inst.tenantctl("backups", "download", slug, backup_id, "-o", str(dump))
    assert subprocess.run(["pg_restore", "--list", str(dump)], capture_output=True, check=False).returncode == 0
    restored = json.loads(inst.tenantctl("backups", "restore", slug, backup_id).stdout)
    assert restored["state"] == "succeeded"
    archive = tmp_path / "export.tar.gz"
    exported = json.loads(inst.tenantctl("tenants", "export", slug, "-o", str(archive)).stdout)
    assert exported["kind"] == "export"
    assert exported["state"] == "succeeded"
    assert archive.stat().st_size > 0
    shown = json.loads(inst.tenantctl("operations", "show", exported["id"]).stdout)
    assert shown["result"] == exported["result"]
    refused = inst.tenantctl("operations", "cancel", exported["id"], check=False)
    assert refused.returncode == 1
    assert "operation_not_cancellable" in refused.stderr


async def test_a_clone_from_a_backup_of_an_older_schema_is_migrated_forward(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(DEFAULT_MIGRATIONS_DIR, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    inst = Installation.isolated(pg_url, redis_url, label="older").with_settings(
        {"TENANT_MIGRATIONS_DIR": str(migrations)}
    )
    await inst.create()
    try:
        async with in_process(inst) as (client, ctx):
            old = await tenant(client)
            backup = await run(ctx, await client.post(f"/admin/tenants/{old['slug']}/backups", json={}))
        (migrations / "0003_tags.sql").write_text("ALTER TABLE notes ADD COLUMN tags text[] NOT NULL DEFAULT '{}';\n")
        inst.tenantctl("migrate")
        async with in_process(inst) as (client, ctx):
            slug = uniq("newer")
            body = {"slug": slug, "name": "n", "source": {"backup_id": backup["result"]["backup_id"]}}
            done = await run(ctx, await client.post("/admin/tenants", json=body))
            assert done["state"] == "succeeded", done
            clone = (await client.get(f"/admin/tenants/{slug}")).json()
            assert clone["status"] == "active"
            assert clone["database"]["schema_version"] == 3
        (row,) = await registry(inst, "SELECT db_name FROM tenants WHERE slug = $1", slug)
        conn = await asyncpg.connect(with_database(pg_url, row["db_name"]))
        try:
            assert await conn.fetchval("SELECT max(version) FROM tenantry_schema_migrations") == 3
            assert (
                await conn.fetchval("SELECT count(*) FROM information_schema.columns WHERE column_name = 'tags'") == 1
            )
        finally:
            await conn.close()
    finally:
        await inst.drop()
