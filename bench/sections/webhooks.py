"""Section 10: webhooks (contract §13). 10,000 events waiting in the outbox, drained by one tenant-service's
dispatcher to a receiver on loopback: signed deliveries per second."""

from __future__ import annotations

import json
import time
from typing import Any, Final

import asyncpg
import httpx

from bench.context import BenchContext, SectionReport, say
from bench.platform import START_TIMEOUT, run_async, tenant_service
from bench.results import Target, format_number
from bench.sections.common import in_installation
from tenantry_devtools.platform import Installation
from tenantry_devtools.processes import ServerProcess
from tenantry_devtools.servers import free_port

NAME = "webhooks"
TITLE = "11. Webhooks: draining the outbox"
EVENTS: Final = 10_000
TARGET_PER_S: Final = 500.0
#: What one event's data looks like: a tenant object's size (about 600 bytes of JSON).
_DATA: Final = {
    "id": "00000000-0000-0000-0000-000000000000",
    "name": "Bench tenant",
    "status": "active",
    "plan": "bench",
    "domains": ["bench.example.com"],
    "database": {"name": "tenant_bench_000000000000", "host": "127.0.0.1", "port": 5432, "server": "default"},
    "limits": {"requests_per_minute": 600, "requests_per_day": 50000, "max_connections": 10},
    "settings": {},
    "upstream_url": None,
    "created_at": "2026-12-03T00:00:00Z",
    "updated_at": "2026-12-03T00:00:00Z",
}


async def _insert_events(inst: Installation, count: int) -> None:
    """``count`` ``tenant.updated`` events straight into the outbox, as ``emit()`` writes them."""
    conn = await asyncpg.connect(inst.database_url)
    try:
        await conn.execute(
            """
            INSERT INTO event_outbox (id, type, tenant_id, body, created_at)
            SELECT 'msg_' || md5(random()::text || i::text), 'tenant.updated', gen_random_uuid(),
                   jsonb_build_object('type', 'tenant.updated',
                                      'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                                      'data', $2::jsonb || jsonb_build_object('slug', 'bench-' || i)),
                   now()
            FROM generate_series(1, $1) AS i
            """,
            count,
            json.dumps(_DATA),
        )
    finally:
        await conn.close()


async def _delivered(inst: Installation) -> tuple[int, int]:
    conn = await asyncpg.connect(inst.database_url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'delivered') AS done, count(*) AS total FROM webhook_deliveries"
        )
        assert row is not None
        return int(row["done"]), int(row["total"])
    finally:
        await conn.close()


def run(ctx: BenchContext) -> dict[str, Any]:
    """Drain 10,000 pending events to a local receiver; deliveries per second."""
    report = SectionReport(ctx, NAME, TITLE)
    return in_installation(ctx, report, "webhooks", lambda inst: _run(ctx, report, inst))


def _run(ctx: BenchContext, report: SectionReport, inst: Installation) -> None:
    logs = ctx.logs / NAME
    port = free_port()
    settings = {"WEBHOOK_CONCURRENCY": "16", "WEBHOOK_TIMEOUT_SECONDS": "10", "WEBHOOK_POLL_SECONDS": "1"}
    report.settings = {"events": EVENTS, **settings}
    # 1. A subscription (through the admin API), then the service stopped: the events wait for it.
    first = ctx.registry.add(tenant_service(inst, logs, name="tenant-service-setup")).start(timeout=START_TIMEOUT)
    with httpx.Client(base_url=first.url, headers={"Authorization": f"Bearer {inst.admin_token}"}, timeout=30) as c:
        made = c.post("/admin/webhooks", json={"url": f"http://127.0.0.1:{port}/hook", "events": ["tenant.updated"]})
        if made.status_code != 201:
            raise RuntimeError(f"POST /admin/webhooks: {made.status_code} {made.text[:300]}")
        secret = made.json()["secret"]
    first.stop()
    receiver = ctx.registry.add(
        ServerProcess(
            "webhook-receiver",
            [*_python(), "-m", "bench.webhook_receiver", "--port", str(port)],
            logs / "webhook-receiver.log",
            env={"WEBHOOK_SECRET": secret},
            port=port,
            cpus=ctx.cpu_load,
        )
    ).start(timeout=START_TIMEOUT)
    run_async(_insert_events(inst, EVENTS))
    say(f"webhooks: {EVENTS} events in the outbox; starting the dispatcher")
    # 2. The service (pinned like the other measured processes) drains them.
    service = ctx.registry.add(tenant_service(inst, logs, cpus=ctx.cpu_test, name="tenant-service", **settings))
    started = time.time()
    service.start(timeout=START_TIMEOUT)
    deadline = time.monotonic() + 600
    done = total = 0
    while time.monotonic() < deadline:
        done, total = run_async(_delivered(inst))
        if done >= EVENTS:
            break
        time.sleep(0.1)
    finished = time.time()
    stats = httpx.get(f"{receiver.url}/stats", timeout=10).json()
    drain_s = finished - stats["first"] if stats["first"] else None
    rate = done / drain_s if drain_s else None
    receiver_rate = (
        (stats["deliveries"] - 1) / (stats["last"] - stats["first"]) if stats["last"] > stats["first"] else None
    )
    table = report.table("Draining 10,000 pending events", ["Measure", "Value"])
    table.rows += [
        ["events in the outbox", str(EVENTS)],
        ["deliveries recorded delivered", f"{done} of {total}"],
        ["requests the receiver got (distinct webhook-id)", f"{stats['deliveries']} ({stats['unique']})"],
        ["bad signatures", str(stats["bad_signatures"])],
        ["service start → first delivery (s)", format_number(stats["first"] - started if stats["first"] else None)],
        ["first delivery → all recorded delivered (s)", format_number(drain_s)],
        ["deliveries/s (recorded)", format_number(rate)],
        ["deliveries/s (at the receiver)", format_number(receiver_rate)],
    ]
    report.data = {**stats, "delivered": done, "total": total, "drain_s": drain_s, "rate": rate}
    report.method += [
        f"One installation of its own; a webhook subscribed to `tenant.updated` through the admin API, the "
        f"tenant-service stopped, then {EVENTS:,} events inserted into `event_outbox` in one statement, each with a "
        "tenant object of about 600 bytes as data, exactly as `emit()` writes them.",
        "The receiver (`python -m bench.webhook_receiver`, aiohttp, pinned to the load core) answers 204 at once "
        "and checks every signature (HMAC-SHA256, Standard Webhooks).",
        "Then one tenant-service starts (pinned to the test core) with the settings above: its dispatcher fans "
        "the events out into deliveries, claims them (`FOR UPDATE SKIP LOCKED`, leases), sends them signed and "
        "records the outcomes in batches. Measured: from the receiver's first request to the moment the registry "
        "holds every delivery as `delivered` (polled every 100 ms).",
    ]
    report.command(f"python -m bench --only {NAME}")
    if stats["bad_signatures"] or stats["unique"] < EVENTS:
        report.error(f"{stats['bad_signatures']} bad signatures, {stats['unique']} distinct events received")
    report.targets.append(
        Target(
            id="webhooks.drain_rate",
            description="10,000 pending events drained to a local receiver",
            measured=round(rate, 1) if rate is not None else None,
            op=">=",
            limit=TARGET_PER_S,
            unit="deliveries/s",
            detail=f"{done} delivered in {format_number(drain_s)} s",
        )
    )
    report.summary.append(
        f"One tenant-service replica delivered {done:,} signed events in {format_number(drain_s)} s, "
        f"{format_number(rate)} deliveries/s (target ≥ {TARGET_PER_S:.0f}/s), every signature valid at the receiver."
    )


def _python() -> list[str]:
    import sys  # noqa: PLC0415

    return [sys.executable]
