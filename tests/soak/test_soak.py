"""Soak: the load checks of tests/hardening/test_hardening_load.py, for minutes instead of seconds.

Not part of ``make test`` (pytest does not recurse into ``soak`` directories: ``norecursedirs`` in
pyproject.toml); ``make soak`` runs it, for ``SOAK_SECONDS`` (default 300). While wrk loads the gateway's full
pipeline, tenants are created and purged in cycles on the tenant-service the gateway syncs from, so the
gateway's directory churns under load. Afterwards: zero 5xx and zero socket errors, the gateway's memory flat
and no fd growth (as in ``make test``), every create and purge answered, the tenant-service's fds flat and no
database or role left behind.
"""

from __future__ import annotations

import asyncio
import os
import secrets

import pytest

from support.load import (
    FD_SLACK,
    PROBE_BOUND_SECONDS,
    RSS_TOLERANCE,
    BurstReport,
    assert_healthy_under_load,
    create_burst,
    pipeline_under_load,
    purge_all,
    settled_gauges,
)
from support.platform import Installation, Tenant, cluster_objects
from support.stacks import GatewayStack

SOAK_SECONDS = int(os.environ.get("SOAK_SECONDS", "300"))
WARMUP_SECONDS = 10
CONNECTIONS = 128
TENANTS_PER_CYCLE = 10

# A generous Redis timeout: an unmetered request (failed open) must not hide among the load.
pytestmark = pytest.mark.stack(gateway_env={"REDIS_TIMEOUT": "5"})


@pytest.mark.timeout(SOAK_SECONDS * 3 + 600)
async def test_soak_full_pipeline_under_load_while_tenants_are_created_and_purged(
    stack: GatewayStack, load_tenant: Tenant, installation: Installation
) -> None:
    service_ports = stack.service_backend_ports()
    bursts: list[BurstReport] = []
    purges: dict[str, int] = {}

    async def cycle(number: int) -> None:
        slugs = [f"soak-{secrets.token_hex(2)}-{number}-{i}" for i in range(TENANTS_PER_CYCLE)]
        bursts.append(await create_burst(stack.service, slugs))
        purges.update(await purge_all(stack.service, slugs))

    await cycle(0)  # the tenant-service's warm-up
    service_before = settled_gauges(stack.service_pid, stack.service.port, service_ports)
    load = asyncio.create_task(
        asyncio.to_thread(
            pipeline_under_load,
            stack,
            load_tenant,
            seconds=SOAK_SECONDS,
            warmup_seconds=WARMUP_SECONDS,
            connections=CONNECTIONS,
        )
    )
    cycles = 1
    while not load.done():
        await cycle(cycles)
        cycles += 1
    report = await load
    service_after = settled_gauges(stack.service_pid, stack.service.port, service_ports)

    print(report.describe(), f"\n{cycles} create/purge cycles; tenant-service: {service_before} -> {service_after}")
    assert_healthy_under_load(report)
    assert cycles > 2, f"only {cycles} create/purge cycles in {SOAK_SECONDS}s"
    for burst in bursts:
        assert burst.errors == [], burst.errors
        assert set(burst.final_status.values()) == {"active"}, burst.final_status
        assert burst.bad_probes(PROBE_BOUND_SECONDS) == []
    assert set(purges.values()) == {200}, {slug: code for slug, code in purges.items() if code != 200}
    service_detail = f"tenant-service after {cycles} cycles: {service_before} -> {service_after}"
    # Its clients are the gateway's directory connections (keep-alive), not the finished creates and purges.
    assert service_after.clients <= service_before.clients + 2, service_detail
    assert service_after.other <= service_before.other + FD_SLACK, service_detail
    assert service_after.rss_kib <= service_before.rss_kib * (1 + RSS_TOLERANCE), service_detail
    # Nothing left behind: every database and role of this installation belongs to a tenant in the registry.
    databases, roles = await cluster_objects(installation.pg_url, installation.prefix)
    listed = stack.admin.get("/admin/tenants", params={"limit": 200}).json()["items"]
    names = {t["database"]["name"] for t in listed}
    assert set(databases) == names
    assert set(roles) <= names | {f"{installation.template}_owner"}
