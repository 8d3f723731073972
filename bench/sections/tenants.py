"""Section 2: the gateway's full pipeline with 1, 1,000 and 10,000 tenants in its directory.

Creating 10,000 real databases is not feasible here, so all tenants but one per directory size are registry rows
inserted straight into the master database: complete tenant rows (status ``active``, the bench plan), one custom
domain and one API key (keyed hash) each, exactly what the directory feed hands to gateways. No database or role
exists for them; the measured tenant is a real one, created through the admin API.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.context import BenchContext, SectionReport, say
from bench.platform import (
    BASE_DOMAIN,
    BENCH_PLAN,
    START_TIMEOUT,
    Admin,
    gateway,
    gateway_accepts,
    installation,
    run_async,
    tenant_service,
)
from bench.results import Target, format_number, safe_ratio
from bench.sections.common import (
    BENCH_PATH,
    Sample,
    check_body,
    measure,
    paired_rps,
    run_order,
    start_upstream,
    summarize,
)
from tenantry_common.apikeys import display_prefix, generate_api_key, hash_api_key
from tenantry_devtools.platform import GatewayProcess, Installation, Tenant, TenantServiceProcess
from tenantry_devtools.processes import wait_until

NAME = "tenants"
TITLE = "2. Tenant count does not matter"


@dataclass
class Stack:
    """One installation with ``count`` tenants, its tenant-service and its gateway."""

    count: int
    inst: Installation
    service: TenantServiceProcess
    gateway: GatewayProcess
    tenant: Tenant
    load_seconds: float = 0.0
    visible_seconds: float = 0.0


def run(ctx: BenchContext) -> dict[str, Any]:
    """Build one stack per directory size, then measure them interleaved."""
    report = SectionReport(ctx, NAME, TITLE)
    settings = ctx.settings
    report.settings = {
        "tenant_counts": list(settings.tenant_counts),
        "runs": settings.runs,
        "duration_s": settings.duration,
        "wrk_threads": settings.threads,
        "wrk_connections": settings.connections,
    }
    mark = ctx.registry.mark()
    installations: list[Installation] = []
    try:
        _run(ctx, report, installations)
    except Exception as exc:  # noqa: BLE001 - recorded in the report; the other sections still run
        report.error(f"section aborted: {type(exc).__name__}: {exc}")
    finally:
        ctx.registry.stop_since(mark)
        ctx.backends.unpin_redis()
        for inst in installations:
            run_async(inst.drop())
    return report.finish()


def _run(ctx: BenchContext, report: SectionReport, installations: list[Installation]) -> None:
    settings = ctx.settings
    logs = ctx.logs / NAME
    upstream = start_upstream(ctx, "tenants-upstream")
    if ctx.cpu_load is not None:
        ctx.backends.pin_redis(ctx.cpu_load)
    stacks: list[Stack] = []
    for count in settings.tenant_counts:
        inst = installation(ctx.backends, f"n{count}")
        installations.append(inst)
        run_async(inst.create())
        service = ctx.registry.add(tenant_service(inst, logs, cpus=ctx.cpu_load, name=f"tenant-service-{count}"))
        service.start(timeout=START_TIMEOUT)
        admin = Admin(service.url, inst.admin_token)
        admin.put_plan()
        tenant = admin.create_tenant("bench")
        admin.close()
        gw = ctx.registry.add(
            gateway(inst, service.url, upstream.url, logs, name=f"gateway-{count}", cpus=ctx.cpu_test)
        )
        gw.start(timeout=START_TIMEOUT)
        wait_until(partial(gateway_accepts, gw.url, tenant), 30, "gateway knows the tenant")
        stack = Stack(count, inst, service, gw, tenant)
        if count > 1:
            say(f"tenants: inserting {count - 1} registry rows")
            started = time.monotonic()
            last = run_async(_insert_fake_tenants(inst, count - 1))
            stack.load_seconds = time.monotonic() - started
            started = time.monotonic()
            wait_until(partial(_feed_has, service.url, inst.gateway_token, count), 120, "directory feed")
            wait_until(partial(gateway_accepts, gw.url, last), 120, f"gateway sees {count} tenants")
            stack.visible_seconds = time.monotonic() - started
            say(f"tenants: gateway-{count} serves all {count} tenants after {stack.visible_seconds:.1f} s")
        check_body(gw.url + BENCH_PATH, _headers(tenant))
        stacks.append(stack)

    report.method = [
        __doc__.split("\n\n", 1)[1].replace("\n", " ").strip() if __doc__ else "",
        "Each directory size has its own installation (registry database), tenant-service and gateway (1 worker, "
        f"pinned to core {ctx.cpu_test}; tenant-services, the upstream nginx, Redis and wrk on core {ctx.cpu_load}). "
        "The runs interleave the sizes (ascending in odd runs, descending in even ones), so a change of machine "
        "load hits them alike and no size always runs first.",
        "The request is row (d) of section 1: `GET /bench` with `Host: bench.localhost` and `X-API-Key`. The "
        "gateways keep their default directory sync (incremental poll every second, full resync every 60 s), "
        "so a full resync of a large directory during a run is part of the measurement.",
        "Target ratio: time per request (1 / req/s) with N tenants ÷ with 1 tenant. The CPU µs/request ratio of "
        "the gateway process is shown too: it is less sensitive to other load on the machine than throughput.",
    ]
    for stack in stacks:
        measure(
            ctx,
            report,
            f"warm-up {stack.count}",
            stack.gateway.url + BENCH_PATH,
            _headers(stack.tenant),
            under_test=None,
            duration=2,
            secrets=_secrets(stack),
        )
    samples: dict[int, list[Sample]] = {s.count: [] for s in stacks}
    for run_no in range(1, settings.runs + 1):
        for stack in run_order(stacks, run_no):
            sample = measure(
                ctx,
                report,
                f"run {run_no}, {stack.count} tenants",
                stack.gateway.url + BENCH_PATH,
                _headers(stack.tenant),
                under_test=stack.gateway,
                secrets=_secrets(stack),
                upstream=upstream,
            )
            samples[stack.count].append(sample)
    summary = {count: summarize(s) for count, s in samples.items()}
    base = summary[stacks[0].count]["rps"]
    base_cpu = summary[stacks[0].count]["cpu_us_per_request"]
    table = report.table(
        "Full pipeline, API key, 1 gateway worker (medians over runs)",
        [
            "Tenants in directory",
            "req/s",
            "p50 ms",
            "p99 ms",
            "CPU µs/req",
            "gateway RSS MB",
            "time/req ÷ 1 tenant",
            "CPU µs/req ÷ 1 tenant",
        ],
    )
    rss = {s.count: _rss_mb(s.gateway.pid) for s in stacks}
    for stack in stacks:
        s = summary[stack.count]
        table.rows.append(
            [
                f"{stack.count:,}",
                format_number(s["rps"]),
                format_number(s["p50_ms"]),
                format_number(s["p99_ms"]),
                format_number(s["cpu_us_per_request"]),
                format_number(rss[stack.count]),
                format_number(safe_ratio(base, s["rps"])),
                format_number(safe_ratio(s["cpu_us_per_request"], base_cpu)),
            ]
        )
    report.data = {
        "counts": {
            str(s.count): {
                **summary[s.count],
                "insert_seconds": s.load_seconds,
                "visible_after_seconds": s.visible_seconds,
                "gateway_rss_mb": rss[s.count],
            }
            for s in stacks
        }
    }
    largest = stacks[-1]
    ratio, runs = paired_rps(summary[stacks[0].count], summary[largest.count])
    report.targets.append(
        Target(
            "tenants.largest_vs_one",
            f"Time per request with {largest.count:,} tenants ÷ with {stacks[0].count:,}",
            ratio,
            "<=",
            1.1,
            ratio=ratio,
            detail=f"{runs}; medians {format_number(base)} ÷ {format_number(summary[largest.count]['rps'])} req/s",
        )
    )


def _headers(tenant: Tenant) -> dict[str, str]:
    return {"Host": f"{tenant.slug}.{BASE_DOMAIN}", "X-API-Key": tenant.key}


def _secrets(stack: Stack) -> dict[str, str]:
    return {stack.tenant.key: "<tenant API key>"}


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _feed_has(base_url: str, gateway_token: str, count: int) -> bool:
    """Whether the directory feed hands out ``count`` tenants."""
    return _feed_size(base_url, gateway_token) == count


def _feed_size(base_url: str, gateway_token: str) -> int:
    """How many tenants the tenant-service's directory feed hands to gateways."""
    try:
        response = httpx.get(
            base_url + "/internal/v1/directory",
            params={"since": 0},
            headers={"Authorization": f"Bearer {gateway_token}"},
            timeout=60,
        )
    except httpx.HTTPError:
        return -1
    return len(response.json()["tenants"]) if response.status_code == 200 else -1


async def _insert_fake_tenants(inst: Installation, count: int) -> Tenant:
    """Insert ``count`` active tenants with a domain and an API key each; return the last (with its key)."""
    secret = inst.api_key_hash_secret.encode()
    tenants, domains, keys = [], [], []
    last: Tenant | None = None
    for i in range(1, count + 1):
        tenant_id = uuid.uuid4()
        slug = f"fake-{i:05d}"
        db_name = f"{inst.prefix}fake_{i:05d}"
        key = generate_api_key()
        tenants.append((tenant_id, slug, slug, "active", BENCH_PLAN, db_name, db_name, "127.0.0.1", 5432, "none", 2, 2))
        domains.append((f"{slug}.bench.example", tenant_id))
        key_id = uuid.uuid4()
        keys.append((key_id, tenant_id, "default", display_prefix(key), hash_api_key(key, secret)))
        last = Tenant(str(tenant_id), slug, key, str(key_id), db_name)
    conn = await asyncpg.connect(inst.database_url, timeout=10)
    try:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "tenants",
                records=tenants,
                columns=[
                    "id",
                    "slug",
                    "name",
                    "status",
                    "plan",
                    "db_name",
                    "db_role",
                    "db_host",
                    "db_port",
                    "db_password_enc",
                    "template_version",
                    "schema_version",
                ],
            )
            await conn.copy_records_to_table("tenant_domains", records=domains, columns=["domain", "tenant_id"])
            await conn.copy_records_to_table(
                "api_keys", records=keys, columns=["id", "tenant_id", "name", "prefix", "key_hash"]
            )
    finally:
        await conn.close(timeout=5)
    assert last is not None
    return last
