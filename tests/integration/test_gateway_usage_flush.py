"""The gateway's usage flushes against a real tenant-service process: a batch that could not be delivered is sent
again under the same id, counts made meanwhile wait in new buckets, and the quota step counts each verdict."""

from __future__ import annotations

import time
import uuid

import pytest

from gateway.directory import TenantEntry
from gateway.errors import GatewayError
from gateway.limit import Limiter
from gateway.resp import RespClient
from gateway.usage import UsageCounter, UsageFlusher
from support.assertions import uniq
from support.platform import Installation, TenantServiceProcess, free_port, registry


async def test_an_undelivered_batch_is_sent_again_under_its_id(
    installation: Installation, service: TenantServiceProcess
) -> None:
    created = service.client().post("/admin/tenants", json={"slug": uniq("flush"), "name": "Flush"})
    assert created.status_code == 201, created.text
    tenant_id = created.json()["id"]
    counter = UsageCounter()
    now = time.time()
    for _ in range(7):
        counter.served(tenant_id, now)
    counter.rejected(tenant_id, now)
    nowhere = UsageFlusher(
        counter, base_url=f"http://127.0.0.1:{free_port()}", token=installation.gateway_token, interval=1, timeout=2
    )
    assert await nowhere.flush() is False
    assert nowhere.pending_batches == 1
    batch_id = nowhere._unacked[0][0]
    counter.served(tenant_id, now)  # counted while the batch waits: a later batch
    nowhere._http.base_url = service.url  # the tenant-service is back
    assert await nowhere.flush() is True
    assert nowhere.pending_batches == 0
    assert nowhere.lag() < 5
    seen = await registry(installation, "SELECT 1 FROM usage_batches WHERE batch_id = $1", uuid.UUID(batch_id))
    assert len(seen) == 1
    rows = await registry(
        installation, "SELECT requests, rejected FROM usage_hourly WHERE tenant_id = $1", uuid.UUID(tenant_id)
    )
    assert [(r["requests"], r["rejected"]) for r in rows] == [(8, 1)]
    await nowhere.stop()


async def test_a_token_without_usage_write_is_retried_not_dropped(
    installation: Installation, service: TenantServiceProcess
) -> None:
    counter = UsageCounter()
    counter.served(str(uuid.uuid4()), time.time())
    flusher = UsageFlusher(counter, base_url=service.url, token=installation.service_token, interval=1, timeout=5)
    assert await flusher.flush() is False  # 403 insufficient_scope: the operator's to fix; the batch waits
    assert flusher.pending_batches == 1
    await flusher._http.aclose()


async def test_the_quota_step_counts_each_verdict(redis_url: str) -> None:
    counter = UsageCounter()
    client = RespClient(redis_url, timeout=2)
    limiter = Limiter(client, failure_mode="open", usage=counter)
    tenant = TenantEntry(
        id=str(uuid.uuid4()), slug="t", status="active", plan="free", requests_per_minute=3, requests_per_day=100,
        upstream_url=None, domains=(), key_hashes=(),
    )  # fmt: skip
    for _ in range(3):
        await limiter.admit(tenant)
    for _ in range(2):
        with pytest.raises(GatewayError):
            await limiter.admit(tenant)
    client.close()
    [count] = counter.take()
    assert (count.requests, count.rejected) == (3, 2)
