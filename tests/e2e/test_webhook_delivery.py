"""Webhooks end to end (contract §13): the tenant-service as a real process delivers the outbox's events to a real
receiver on loopback, signed (checked with the independent ``standardwebhooks`` package), and a ``kill -9`` with
deliveries pending loses none of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook as StandardWebhook

from support.platform import Installation, TenantServiceProcess
from support.webhook_receiver import Receiver, webhook_receiver
from tenantry_devtools.servers import free_port

pytestmark = pytest.mark.e2e

FAST = {
    "WEBHOOK_BACKOFF_BASE_SECONDS": "0.2",
    "WEBHOOK_BACKOFF_MAX_SECONDS": "1",
    "WEBHOOK_POLL_SECONDS": "0.2",
    "WEBHOOK_TIMEOUT_SECONDS": "3",
    "OPERATION_POLL_SECONDS": "0.2",
}


@pytest.fixture(scope="module")
async def inst(pg_url: str, redis_url: str) -> AsyncIterator[Installation]:
    installation = Installation.isolated(pg_url, redis_url, label="webhooks-e2e")
    await installation.create()
    yield installation
    await installation.drop()


def admin(service: TenantServiceProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=service.url, headers={"Authorization": f"Bearer {service.installation.admin_token}"}, timeout=60
    )


async def finished(client: httpx.AsyncClient, op_id: str) -> dict[str, Any]:
    async with asyncio.timeout(120):
        while True:
            body: dict[str, Any] = (await client.get(f"/admin/operations/{op_id}")).json()
            if body["state"] in ("succeeded", "failed", "cancelled"):
                return body
            await asyncio.sleep(0.2)


async def wait_types(receiver: Receiver, path: str, types: set[str], timeout: float = 60) -> list[Any]:
    def arrived(got: list[Any]) -> bool:
        return types <= {r.json["type"] for r in got if r.path == path and r.status == 200}

    await receiver.wait_for(arrived, timeout=timeout)
    return receiver.at(path)


async def test_lifecycle_and_backup_events_arrive_signed(inst: Installation, tmp_path: Path) -> None:
    service = TenantServiceProcess(inst, tmp_path / "service.log", env=FAST).start()
    try:
        async with webhook_receiver() as receiver, admin(service) as client:
            wanted = ["tenant.created", "tenant.suspended", "tenant.purged", "backup.completed"]
            created = await client.post("/admin/webhooks", json={"url": receiver.url("/e2e"), "events": wanted})
            assert created.status_code == 201, created.text
            secret = created.json()["secret"]

            tenant = (await client.post("/admin/tenants", json={"slug": "whe-acme", "name": "Acme"})).json()
            op = (await client.post("/admin/tenants/whe-acme/backups", json={})).json()
            done = await finished(client, op["id"])
            assert done["state"] == "succeeded", done
            assert (await client.post("/admin/tenants/whe-acme/suspend")).status_code == 200
            assert (await client.delete("/admin/tenants/whe-acme", params={"purge": "true"})).status_code == 200

            got = await wait_types(receiver, "/e2e", set(wanted))
            by_type: dict[str, dict[str, Any]] = {}
            for received in got:
                payload = StandardWebhook(secret).verify(received.body, received.headers)
                assert payload == received.json
                by_type.setdefault(payload["type"], payload)
            assert set(by_type) == set(wanted)  # and nothing it did not subscribe to
            for payload in by_type.values():
                assert payload["data"]["tenant_id"] == tenant["id"]
                assert payload["data"]["slug"] == "whe-acme"
                assert payload["timestamp"].endswith("Z")
            assert by_type["tenant.created"]["data"]["status"] == "active"
            assert by_type["tenant.suspended"]["data"]["status"] == "suspended"
            assert by_type["tenant.purged"]["data"]["status"] == "deleted"
            backup = by_type["backup.completed"]["data"]
            assert backup["id"] == done["result"]["backup_id"]
            assert backup["state"] == "completed"
            assert backup["operation_id"] == op["id"]
            for payload in by_type.values():
                assert "password" not in str(payload["data"])
            assert secret not in service.log_path.read_text()
    finally:
        service.stop()


async def test_deliveries_pending_at_a_kill_9_are_delivered_after_the_restart(
    inst: Installation, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there yet: every attempt fails and the deliveries stay pending
    service = TenantServiceProcess(inst, tmp_path / "first.log", env=FAST).start()
    try:
        async with admin(service) as client:
            hook = await client.post(
                "/admin/webhooks",
                json={"url": f"http://127.0.0.1:{port}/late", "events": ["tenant.created", "tenant.resumed"]},
            )
            assert hook.status_code == 201, hook.text
            hook_id, secret = hook.json()["id"], hook.json()["secret"]
            await client.post("/admin/tenants", json={"slug": "whe-late", "name": "Late"})
            await client.post("/admin/tenants/whe-late/suspend")
            await client.post("/admin/tenants/whe-late/resume")
            async with asyncio.timeout(30):
                while True:
                    items = (await client.get(f"/admin/webhooks/{hook_id}/deliveries")).json()["items"]
                    if len(items) == 2 and all(d["attempts"] >= 1 and d["last_error"] for d in items):
                        break
                    await asyncio.sleep(0.1)
            assert all(d["status"] == "pending" for d in items)
            assert all(d["last_error"].startswith("connection failed") for d in items), items
        service.kill()
    finally:
        service.stop()

    async with webhook_receiver(port) as receiver:
        restarted = TenantServiceProcess(inst, tmp_path / "second.log", env=FAST).start()
        try:
            got = await wait_types(receiver, "/late", {"tenant.created", "tenant.resumed"})
            for received in got:
                StandardWebhook(secret).verify(received.body, received.headers)
            async with admin(restarted) as client, asyncio.timeout(30):
                while True:
                    items = (await client.get(f"/admin/webhooks/{hook_id}/deliveries")).json()["items"]
                    if all(d["status"] == "delivered" for d in items):
                        break
                    await asyncio.sleep(0.1)
            assert len(items) == 2
        finally:
            restarted.stop()
