"""Platform events (contract §13) from every path that changes a tenant or finishes an operation: the admin API
(synchronous and asynchronous creates, PATCH, suspend, resume, delete, restore, purge), ``tenantctl``, the
reconciler's purge after the retention period, and the operation runner (backups, restores, failures). Each event is
read back from the outbox, where it was written in the transaction of its change."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from support.assertions import uniq
from support.platform import Installation, in_process
from tenant_service import failpoints
from tenant_service.backups.jobs import handlers
from tenant_service.context import AppContext
from tenant_service.operations.runner import OperationRunner
from tenant_service.operations.service import OperationService
from tenant_service.provisioning.reconciler import Reconciler


@pytest.fixture(scope="module")
async def inst(pg_url: str, redis_url: str) -> AsyncIterator[Installation]:
    installation = Installation.isolated(pg_url, redis_url, label="events")
    await installation.create()
    yield installation
    await installation.drop()


async def events_of(inst: Installation, tenant_id: str) -> list[dict[str, Any]]:
    """The outbox bodies about a tenant, in order."""
    conn = await asyncpg.connect(inst.database_url)
    try:
        rows = await conn.fetch(
            "SELECT body::text FROM event_outbox WHERE tenant_id = $1 ORDER BY seq", uuid.UUID(tenant_id)
        )
    finally:
        await conn.close()
    return [msgspec.json.decode(r[0]) for r in rows]


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


async def run_operation(ctx: AppContext, response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    op_id = response.json()["id"]
    await OperationRunner(ctx, handlers(ctx), workers=1, poll_seconds=1.0).run_now(uuid.UUID(op_id))
    done: dict[str, Any] = msgspec.to_builtins(await OperationService(ctx).get(op_id))
    return done


async def test_the_admin_api_lifecycle_emits_one_event_per_change(inst: Installation) -> None:
    async with in_process(inst) as (client, _):
        slug = uniq("ev")
        created = (await client.post("/admin/tenants", json={"slug": slug, "name": "Events"})).json()
        tid = created["id"]
        assert (await client.patch(f"/admin/tenants/{slug}", json={"name": "Renamed"})).status_code == 200
        for action in ("suspend", "suspend", "resume"):  # the second suspend changes nothing: no event
            assert (await client.post(f"/admin/tenants/{slug}/{action}")).status_code == 200
        assert (await client.delete(f"/admin/tenants/{slug}")).status_code == 200
        assert (await client.post(f"/admin/tenants/{slug}/restore")).status_code == 200
        assert (await client.delete(f"/admin/tenants/{slug}", params={"purge": "true"})).status_code == 200
    events = await events_of(inst, tid)
    assert types(events) == [
        "tenant.created",
        "tenant.updated",
        "tenant.suspended",
        "tenant.resumed",
        "tenant.deleted",
        "tenant.restored",
        "tenant.purged",
    ]
    statuses = [e["data"]["status"] for e in events]
    assert statuses == ["active", "active", "suspended", "active", "deleted", "active", "deleted"]
    for event in events:
        data = event["data"]
        assert data["tenant_id"] == tid
        assert data["slug"] == slug
        assert data["id"] == tid
        assert {"database", "limits", "plan", "domains", "created_at", "updated_at"} <= set(data)
        assert "password" not in str(data)
        assert "api_key" not in data
        assert event["timestamp"].endswith("Z")
    assert events[1]["data"]["name"] == "Renamed"


async def test_an_async_create_is_announced_when_it_becomes_active(inst: Installation) -> None:
    async with in_process(inst) as (client, _):
        slug = uniq("ev-async")
        response = await client.post(
            "/admin/tenants", json={"slug": slug, "name": "Async"}, headers={"Prefer": "respond-async"}
        )
        assert response.status_code == 202, response.text
        tid = response.json()["id"]
        async with asyncio.timeout(60):
            while (await client.get(f"/admin/tenants/{slug}")).json()["status"] != "active":
                await asyncio.sleep(0.1)
    events = await events_of(inst, tid)
    assert types(events) == ["tenant.created"]
    assert events[0]["data"]["status"] == "active"


async def test_tenantctl_and_the_reconciler_emit_too(inst: Installation) -> None:
    async with in_process(inst, DELETE_RETENTION_SECONDS="0") as (client, ctx):
        slug = uniq("ev-cli")
        tid = (await client.post("/admin/tenants", json={"slug": slug, "name": "Cli"})).json()["id"]
        await asyncio.to_thread(inst.tenantctl, "tenants", "suspend", slug)
        assert (await client.delete(f"/admin/tenants/{slug}")).status_code == 200
        report = await Reconciler(ctx).run_once()
        assert slug in report.purged
    events = await events_of(inst, tid)
    assert types(events) == ["tenant.created", "tenant.suspended", "tenant.deleted", "tenant.purged"]
    assert events[-1]["data"]["slug"] == slug


async def test_finished_operations_emit_backup_restore_and_failure_events(inst: Installation) -> None:
    async with in_process(inst) as (client, ctx):
        slug = uniq("ev-ops")
        tid = (await client.post("/admin/tenants", json={"slug": slug, "name": "Ops"})).json()["id"]
        backup_op = await run_operation(ctx, await client.post(f"/admin/tenants/{slug}/backups", json={}))
        assert backup_op["state"] == "succeeded"
        restore_body = {"backup_id": backup_op["result"]["backup_id"]}
        restore_op = await run_operation(ctx, await client.post(f"/admin/tenants/{slug}/restore", json=restore_body))
        assert restore_op["state"] == "succeeded"
        failpoints.configure("backup.before_dump=error")
        try:
            failed_op = await run_operation(ctx, await client.post(f"/admin/tenants/{slug}/backups", json={}))
        finally:
            failpoints.configure("")
        assert failed_op["state"] == "failed"
    events = await events_of(inst, tid)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(event["data"])
    completed = by_type["backup.completed"]
    # The restore takes a pre-restore backup of its own: that is a backup, not a backup operation.
    assert [b["id"] for b in completed] == [backup_op["result"]["backup_id"]]
    assert completed[0]["state"] == "completed"
    assert completed[0]["operation_id"] == backup_op["id"]
    assert completed[0]["tenant_id"] == tid
    assert completed[0]["slug"] == slug
    (restored,) = by_type["restore.completed"]
    assert restored["id"] == restore_op["id"]
    assert restored["kind"] == "restore"
    assert restored["state"] == "succeeded"
    (failed_backup,) = by_type["backup.failed"]
    assert failed_backup["state"] == "failed"
    assert failed_backup["operation_id"] == failed_op["id"]
    (failed,) = by_type["operation.failed"]
    assert failed["id"] == failed_op["id"]
    assert failed["error"]["code"]
    assert failed["slug"] == slug
