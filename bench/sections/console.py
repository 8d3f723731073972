"""Section 10: the admin console's pages with 10,000 tenants in the registry.

All tenants but one are registry rows inserted straight into the master database (as in section 2: complete
tenant rows with a domain and an API key each, and one audit entry each); the one whose page is measured is a real
tenant created through the admin API. Twenty webhooks are created through the admin API, and one of them gets a
delivery log of 10,000 delivered events (rows inserted into the registry). A signed-in console session fetches
each page in turn, sequentially, as an admin's browser would: the time from request to the last byte of the HTML,
measured by the client.
"""

from __future__ import annotations

import re
import time
from typing import Any, Final

import asyncpg
import httpx

from bench.context import BenchContext, SectionReport, say
from bench.platform import START_TIMEOUT, Admin, installation, run_async, tenant_service
from bench.results import Target, format_number, percentile
from bench.sections.tenants import _insert_fake_tenants
from tenantry_devtools.platform import Installation

NAME = "console"
TITLE = "12. Admin console: pages with 10,000 tenants"
TENANTS: Final = 10_000
#: Requests per page (after WARMUP of each): enough for a stable p90 on a shared 2-core machine.
REQUESTS: Final = 200
WARMUP: Final = 20
TARGET_P50_MS: Final = 200.0
WEBHOOKS: Final = 20
DELIVERIES: Final = 10_000


def run(ctx: BenchContext) -> dict[str, Any]:
    """One installation with 10,000 tenants, one tenant-service, one signed-in session; every page measured."""
    report = SectionReport(ctx, NAME, TITLE)
    report.settings = {"tenants": TENANTS, "requests_per_page": REQUESTS, "warmup_per_page": WARMUP}
    mark = ctx.registry.mark()
    inst: Installation | None = None
    try:
        inst = installation(ctx.backends, "console")
        run_async(inst.create())
        _run(ctx, report, inst)
    except Exception as exc:  # noqa: BLE001 - recorded in the report; the other sections still run
        report.error(f"section aborted: {type(exc).__name__}: {exc}")
    finally:
        ctx.registry.stop_since(mark)
        if inst is not None:
            run_async(inst.drop())
    return report.finish()


def _run(ctx: BenchContext, report: SectionReport, inst: Installation) -> None:
    service = ctx.registry.add(tenant_service(inst, ctx.logs / NAME, cpus=ctx.cpu_test, name="tenant-service"))
    service.start(timeout=START_TIMEOUT)
    admin = Admin(service.url, inst.admin_token)
    admin.put_plan()
    real = admin.create_tenant("console-bench")
    admin.close()
    webhook_ids = _create_webhooks(service.url, inst.admin_token)
    say(f"console: inserting {TENANTS - 1} registry rows")
    started = time.monotonic()
    run_async(_insert_fake_tenants(inst, TENANTS - 1))
    run_async(_insert_audit(inst))
    run_async(_insert_deliveries(inst, webhook_ids[0]))
    insert_seconds = time.monotonic() - started

    with httpx.Client(base_url=service.url, timeout=30, follow_redirects=False) as client:
        signed = client.post("/console/sign-in", data={"token": inst.admin_token, "next": "/console/tenants"})
        if signed.status_code != 303:
            raise RuntimeError(f"console sign-in: {signed.status_code}")
        first = client.get("/console/tenants")
        cursor = re.search(r'cursor=([^"&]+)"', first.text)
        pages = {
            "tenants list": "/console/tenants",
            "tenants list, next page": f"/console/tenants?cursor={cursor.group(1)}" if cursor else None,
            "search (q=fake-0999)": "/console/tenants?q=fake-0999",
            "search, no match (q=zzz)": "/console/tenants?q=zzz",
            "filter (status, plan, server)": "/console/tenants?status=active&plan=bench&server=default",
            "tenant page": f"/console/tenants/{real.slug}",
            "servers": "/console/servers",
            "plans": "/console/plans",
            "audit log": "/console/audit",
            f"webhooks ({WEBHOOKS})": "/console/webhooks",
            f"webhook, {DELIVERIES:,} deliveries": f"/console/webhooks/{webhook_ids[0]}",
            "webhook, deliveries filtered (none failed)": f"/console/webhooks/{webhook_ids[0]}?status=failed",
        }
        table = report.table(
            f"Console pages, {TENANTS:,} tenants, one signed-in session, {REQUESTS} sequential requests each",
            ["Page", "path", "p50 ms", "p90 ms", "p99 ms", "bytes"],
        )
        data: dict[str, Any] = {}
        for label, path in pages.items():
            if path is None:
                report.error(f"{label}: the first page had no next link")
                continue
            timings, size = _measure(client, path)
            stats = {f"p{p}_ms": percentile(timings, p) for p in (50, 90, 99)}
            data[label] = {"path": path, **stats, "bytes": size}
            table.rows.append(
                [
                    label,
                    f"`{path}`",
                    format_number(stats["p50_ms"]),
                    format_number(stats["p90_ms"]),
                    format_number(stats["p99_ms"]),
                    str(size),
                ]
            )
            report.targets.append(
                Target(
                    f"console.{re.sub(r'[^a-z0-9]+', '_', label.lower()).strip('_')}_p50",
                    f"Console {label}: p50 with {TENANTS:,} tenants",
                    stats["p50_ms"],
                    "<=",
                    TARGET_P50_MS,
                    unit="ms",
                )
            )
            say(f"console: {label}: p50 {stats['p50_ms']:.1f} ms, p90 {stats['p90_ms']:.1f} ms")
    report.data = {"pages": data, "insert_seconds": insert_seconds}
    report.method = [
        __doc__.split("\n\n", 1)[1].replace("\n", " ").strip() if __doc__ else "",
        f"One tenant-service process (1 worker, on core {ctx.cpu_test}); the client runs on the other core. Each "
        f"page gets {WARMUP} unmeasured requests first. The tenants list is a keyset page of 50 (the admin list "
        "service's query, ordered by creation time); search is a case-insensitive substring match on slug and name.",
    ]
    slowest = max(data.items(), key=lambda item: item[1]["p50_ms"]) if data else None
    if slowest:
        report.summary.append(
            f"The slowest page is the {slowest[0]} at p50 {format_number(slowest[1]['p50_ms'])} ms (p90 "
            f"{format_number(slowest[1]['p90_ms'])} ms) with {TENANTS:,} tenants in the registry."
        )


def _measure(client: httpx.Client, path: str) -> tuple[list[float], int]:
    size = 0
    for _ in range(WARMUP):
        client.get(path)
    timings: list[float] = []
    for _ in range(REQUESTS):
        started = time.perf_counter()
        response = client.get(path)
        timings.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code}")
        size = len(response.content)
    return timings, size


def _create_webhooks(url: str, token: str) -> list[str]:
    """Webhooks through the admin API, subscribed to an event the bench never causes (nothing is delivered)."""
    ids = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        for i in range(WEBHOOKS):
            body = {"url": f"http://127.0.0.1:9/bench-{i}", "events": ["quota.threshold"]}
            created = client.post("/admin/webhooks", json=body)
            if created.status_code != 201:
                raise RuntimeError(f"POST /admin/webhooks: {created.status_code} {created.text[:200]}")
            ids.append(created.json()["id"])
    return ids


async def _insert_deliveries(inst: Installation, webhook_id: str) -> None:
    """A delivery log of realistic size: events in the outbox (fanned out), each delivered once to the webhook."""
    conn = await asyncpg.connect(inst.database_url, timeout=10)
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO event_outbox (id, type, body, created_at, fanned_out_at) "
                "SELECT 'msg_bench' || lpad(g::text, 8, '0'), 'quota.threshold', "
                "jsonb_build_object('type', 'quota.threshold', 'data', '{}'::jsonb), "
                "now() - make_interval(secs => g), now() FROM generate_series(1, $1) g",
                DELIVERIES,
            )
            await conn.execute(
                "INSERT INTO webhook_deliveries (id, webhook_id, event_id, status, attempts, next_attempt_at, "
                "retry_until, last_status_code, created_at, last_attempt_at, delivered_at) "
                "SELECT gen_random_uuid(), $2::uuid, 'msg_bench' || lpad(g::text, 8, '0'), 'delivered', 1, now(), "
                "now(), 204, now() - make_interval(secs => g), now(), now() FROM generate_series(1, $1) g",
                DELIVERIES,
                webhook_id,
            )
    finally:
        await conn.close(timeout=5)


async def _insert_audit(inst: Installation) -> None:
    """One audit entry per fake tenant, so the audit pages read a log of realistic size."""
    conn = await asyncpg.connect(inst.database_url, timeout=10)
    try:
        await conn.execute(
            "INSERT INTO audit_log (actor, action, target, tenant_id, after) "
            "SELECT 'admin:bench', 'tenant.create', t.slug, t.id, jsonb_build_object('slug', t.slug) FROM tenants t"
        )
    finally:
        await conn.close(timeout=5)
