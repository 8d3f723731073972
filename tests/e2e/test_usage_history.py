"""Usage history end to end (contract §13, issue 19): the tenant-service, a gateway (flushing every second) and the
notes app as processes, on a Redis of this module's own (it is killed here).

1,000 requests show in the tenant's hourly usage within 60 s; a Redis restart after the flush loses none of them; a
tenant-service killed right after committing a flush (failpoint ``usage.after_commit``) counts each request once
when the gateway sends the same batch again; a gateway stopped before its next flush flushes on the way out; a
tenant crossing 80 % and 100 % of its daily quota while its traffic hovers at the limit gets exactly one
``quota.threshold`` event per threshold. The registry's side alone is in tests/integration/test_usage_ingest.py.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from support.assertions import uniq
from support.platform import Installation
from support.stacks import make_tenant
from tenantry_devtools.platform import GatewayProcess, Platform, Tenant, TenantServiceProcess
from tenantry_devtools.processes import wait_until
from tenantry_devtools.servers import LocalRedis

pytestmark = pytest.mark.e2e

LIMITS = {"requests_per_minute": 1_000_000, "requests_per_day": 100_000_000}


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    folder: Path = tmp_path_factory.mktemp("usage-redis")
    with LocalRedis(folder / "data", log_file=folder / "redis.log") as server:
        yield server


@pytest.fixture(scope="module")
async def inst(pg_url: str, own_redis: LocalRedis) -> AsyncIterator[Installation]:
    installation = Installation.isolated(pg_url, own_redis.url, "usage")
    await installation.create()
    try:
        yield installation
    finally:
        await installation.drop()


@pytest.fixture(scope="module")
def platform(inst: Installation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    started = Platform.launch(
        inst,
        tmp_path_factory.mktemp("usage"),
        gateway_env={"DIRECTORY_REFRESH_SECONDS": "0.5", "USAGE_FLUSH_SECONDS": "1"},
    )
    try:
        yield started
    finally:
        started.stop()


def registry_value(inst: Installation, sql: str, *args: Any) -> Any:
    async def fetch() -> Any:
        conn = await asyncpg.connect(inst.database_url, timeout=10)
        try:
            return await conn.fetchval(sql, *args, timeout=30)
        finally:
            await conn.close()

    return asyncio.run(fetch())


def counted(inst: Installation, tenant: Tenant) -> tuple[int, int]:
    """Served and rejected requests of the tenant in the registry's hourly usage (every hour)."""
    raw = registry_value(
        inst,
        "SELECT json_build_array(coalesce(sum(requests), 0), coalesce(sum(rejected), 0)) FROM usage_hourly "
        "WHERE tenant_id = $1",
        uuid.UUID(tenant.id),
    )
    served, rejected = json.loads(raw)
    return int(served), int(rejected)


def settled(inst: Installation, tenant: Tenant, seconds: float = 3.0) -> tuple[int, int]:
    """The tenant's counts once they stopped changing for ``seconds`` (three flush intervals)."""
    last = counted(inst, tenant)
    while True:
        time.sleep(seconds)
        now = counted(inst, tenant)
        if now == last:
            return now
        last = now


def hammer(url: str, tenant: Tenant, count: int) -> dict[int, int]:
    """``count`` requests of the tenant to ``/notes``; the statuses seen, with how often."""
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=url, headers={"X-API-Key": tenant.key}, timeout=30) as client:
        for _ in range(count):
            status = client.get("/notes").status_code
            statuses[status] = statuses.get(status, 0) + 1
    return statuses


def test_requests_appear_in_the_hourly_usage_and_survive_a_redis_restart(
    platform: Platform, inst: Installation, own_redis: LocalRedis
) -> None:
    tenant = make_tenant(platform, uniq("usage-thousand"), limits=LIMITS)
    before, _ = settled(inst, tenant)
    started = time.monotonic()
    assert hammer(platform.gateway.url, tenant, 1000) == {200: 1000}
    wait_until(lambda: counted(inst, tenant)[0] == before + 1000, timeout=60)
    assert time.monotonic() - started < 60
    history = platform.admin.get(f"/admin/tenants/{tenant.id}/usage").json()["history"]
    assert sum(bucket["requests"] for bucket in history) == before + 1000
    own_redis.kill()  # every quota counter is gone with it
    own_redis.start()
    assert counted(inst, tenant) == (before + 1000, 0)
    wait_until(lambda: hammer(platform.gateway.url, tenant, 1) == {200: 1}, timeout=30)
    assert settled(inst, tenant)[0] >= before + 1001
    wait_until(
        lambda: platform.admin.get(f"/admin/tenants/{tenant.id}/usage").json()["quota_counters_available"], timeout=30
    )


def test_a_tenant_service_killed_after_committing_a_flush_counts_each_request_once(
    platform: Platform, inst: Installation, tmp_path: Path
) -> None:
    tenant = make_tenant(platform, uniq("usage-kill"), limits=LIMITS)
    before, _ = settled(inst, tenant)
    port = platform.service.port
    platform.service.stop()
    dying = TenantServiceProcess(
        inst, tmp_path / "dying.log", env={"TENANTRY_FAILPOINTS": "usage.after_commit=kill"}, port=port
    )
    dying.start()
    try:
        assert hammer(platform.gateway.url, tenant, 300) == {200: 300}
        assert dying.wait_exit(timeout=30) != 0  # killed by the failpoint, after its commit
        committed = counted(inst, tenant)[0]  # the batch it committed, never acknowledged
        assert before < committed <= before + 300
        assert hammer(platform.gateway.url, tenant, 200) == {200: 200}  # counted while the service is down
    finally:
        dying.stop()
    platform.service.start()
    wait_until(lambda: counted(inst, tenant)[0] == before + 500, timeout=60)
    assert settled(inst, tenant)[0] == before + 500
    metrics = httpx.get(platform.gateway.url + "/_gateway/metrics", timeout=10).text
    duplicates = [line for line in metrics.splitlines() if line.startswith("tenantry_gateway_usage_batches_total")]
    assert any('outcome="duplicate"' in line and not line.endswith(" 0.0") for line in duplicates), duplicates
    assert "tenantry_gateway_usage_flush_lag_seconds" in metrics


def test_each_worker_of_a_gateway_flushes_what_it_counted_when_it_stops(
    platform: Platform, inst: Installation, tmp_path: Path
) -> None:
    tenant = make_tenant(platform, uniq("usage-stop"), limits=LIMITS)
    before, _ = settled(inst, tenant)
    late = GatewayProcess(
        inst,
        platform.service.url,
        platform.notes.url,
        tmp_path / "gateway.log",
        env={"USAGE_FLUSH_SECONDS": "60", "DIRECTORY_REFRESH_SECONDS": "0.5", "GATEWAY_WORKERS": "2"},
    )
    late.start()
    try:
        for _ in range(10):  # new connections: both workers take some
            assert hammer(late.url, tenant, 10) == {200: 10}
    finally:
        late.stop()
    assert counted(inst, tenant)[0] == before + 100


def test_crossing_80_and_100_percent_alerts_once_per_threshold_while_usage_hovers(
    platform: Platform, inst: Installation
) -> None:
    plan = "p" + uuid.uuid4().hex[:10]
    put = platform.admin.put(
        f"/admin/plans/{plan}", json={"limits": {"requests_per_minute": 1_000_000, "requests_per_day": 60}}
    )
    assert put.status_code == 200, put.text
    tenant = make_tenant(platform, uniq("usage-alerts"), plan=plan)
    seen: dict[int, int] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # a few requests every 0.2 s: well past the limit, over many flushes
        for status, times in hammer(platform.gateway.url, tenant, 4).items():
            seen[status] = seen.get(status, 0) + times
        time.sleep(0.2)
    assert seen.get(429, 0) > 20
    served, rejected = settled(inst, tenant)
    # 60 unless Redis did not answer a quota call in time (failure mode open: served, unmetered, yet counted).
    assert served >= 60
    assert rejected == seen[429]
    events = registry_value(
        inst,
        "SELECT coalesce(json_agg(body ORDER BY seq), '[]') FROM event_outbox WHERE tenant_id = $1 "
        "AND type = 'quota.threshold'",
        uuid.UUID(tenant.id),
    )
    data = [event["data"] for event in json.loads(events)]
    assert [d["threshold"] for d in data] == [0.8, 1.0]
    assert all(d["requests_per_day"] == 60 and d["slug"] == tenant.slug for d in data)
    assert data[0]["requests"] >= 48
    assert data[1]["requests"] >= 60
    alerts = registry_value(inst, "SELECT count(*) FROM quota_alerts WHERE tenant_id = $1", uuid.UUID(tenant.id))
    assert alerts == 2
