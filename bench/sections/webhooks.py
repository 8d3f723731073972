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


async def _insert_events(inst: Installation, count: int, event: str) -> None:
    """``count`` ``event`` events straight into the outbox, as ``emit()`` writes them."""
    conn = await asyncpg.connect(inst.database_url)
    try:
        await conn.execute(
            """
            INSERT INTO event_outbox (id, type, tenant_id, body, created_at)
            SELECT 'msg_' || md5(random()::text || i::text), $3, gen_random_uuid(),
                   jsonb_build_object('type', $3::text,
                                      'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                                      'data', $2::jsonb || jsonb_build_object('slug', 'bench-' || i)),
                   now()
            FROM generate_series(1, $1) AS i
            """,
            count,
            json.dumps(_DATA),
            event,
        )
    finally:
        await conn.close()


async def _delivered(inst: Installation, webhook_id: str) -> tuple[int, int]:
    conn = await asyncpg.connect(inst.database_url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'delivered') AS done, count(*) AS total FROM webhook_deliveries "
            "WHERE webhook_id = $1::uuid",
            webhook_id,
        )
        assert row is not None
        return int(row["done"]), int(row["total"])
    finally:
        await conn.close()


def run(ctx: BenchContext) -> dict[str, Any]:
    """Drain 10,000 pending events to a local receiver; deliveries per second."""
    report = SectionReport(ctx, NAME, TITLE)
    return in_installation(ctx, report, "webhooks", lambda inst: _run(ctx, report, inst))


#: The two runs: the default share of one endpoint (WEBHOOK_ENDPOINT_CONCURRENCY 8 of 16), and one endpoint
#: allowed every slot — the price of the per-endpoint fairness for a platform with a single receiver.
RUNS: Final = (("default share (8 of 16)", "8", "tenant.updated"), ("every slot (16 of 16)", "16", "tenant.resumed"))


def _run(ctx: BenchContext, report: SectionReport, inst: Installation) -> None:
    logs = ctx.logs / NAME
    base = {"WEBHOOK_CONCURRENCY": "16", "WEBHOOK_TIMEOUT_SECONDS": "10", "WEBHOOK_POLL_SECONDS": "1"}
    report.settings = {"events": EVENTS, **base, "WEBHOOK_ENDPOINT_CONCURRENCY": " and ".join(r[1] for r in RUNS)}
    # 1. One subscription per run (through the admin API), then the service stopped: the events wait for it.
    ports = [free_port() for _ in RUNS]
    first = ctx.registry.add(tenant_service(inst, logs, name="tenant-service-setup")).start(timeout=START_TIMEOUT)
    hooks = []
    with httpx.Client(base_url=first.url, headers={"Authorization": f"Bearer {inst.admin_token}"}, timeout=30) as c:
        for port, (_, _, event) in zip(ports, RUNS, strict=True):
            made = c.post("/admin/webhooks", json={"url": f"http://127.0.0.1:{port}/hook", "events": [event]})
            if made.status_code != 201:
                raise RuntimeError(f"POST /admin/webhooks: {made.status_code} {made.text[:300]}")
            hooks.append(made.json())
    first.stop()
    table = report.table(
        "Draining 10,000 pending events to one endpoint", ["Measure", *(f"share: {r[0]}" for r in RUNS)]
    )
    measures: dict[str, list[str]] = {}
    runs: dict[str, dict[str, Any]] = {}
    for i, ((label, share, event), port, hook) in enumerate(zip(RUNS, ports, hooks, strict=True)):
        settings = {**base, "WEBHOOK_ENDPOINT_CONCURRENCY": share}
        run = _drain(ctx, inst, logs, f"{i}", port, hook, event, settings)
        runs[label] = run
        for measure, value in run["rows"]:
            measures.setdefault(measure, []).append(value)
    table.rows += [[measure, *values] for measure, values in measures.items()]
    report.data = {label: {k: v for k, v in run.items() if k != "rows"} for label, run in runs.items()}
    default = runs[RUNS[0][0]]
    every = runs[RUNS[1][0]]
    done, drain_s, rate = default["delivered"], default["drain_s"], default["rate"]
    report.method += [
        "One installation of its own; two webhooks subscribed through the admin API (one to `tenant.updated`, one "
        f"to `tenant.resumed`), the tenant-service stopped. Each run: {EVENTS:,} events of one webhook's type "
        "inserted into `event_outbox` in one statement, each with a tenant object of about 600 bytes as data, "
        "exactly as `emit()` writes them.",
        "The receiver (`python -m bench.webhook_receiver`, aiohttp, pinned to the load core) answers 204 at once "
        "and checks every signature (HMAC-SHA256, Standard Webhooks).",
        "Then one tenant-service starts (pinned to the test core) with the settings above: its dispatcher fans "
        "the events out into deliveries, claims them (`FOR UPDATE SKIP LOCKED`, leases, at most "
        "`WEBHOOK_ENDPOINT_CONCURRENCY` of one webhook in flight), sends them signed and records the outcomes in "
        "batches. Measured: from the receiver's first request to the moment the registry holds every delivery of "
        "the webhook as `delivered` (polled every 100 ms). The first run has the default share of one endpoint "
        "(8 of 16 slots); the second lets one endpoint take every slot, the setting of a platform with a single "
        "receiver.",
    ]
    report.command(f"python -m bench --only {NAME}")
    for label, run in runs.items():
        if run["stats"]["bad_signatures"] or run["stats"]["unique"] < EVENTS:
            report.error(
                f"{label}: {run['stats']['bad_signatures']} bad signatures, "
                f"{run['stats']['unique']} distinct events received"
            )
    report.targets.append(
        Target(
            id="webhooks.drain_rate",
            description="10,000 pending events drained to a local receiver (default settings)",
            measured=round(rate, 1) if rate is not None else None,
            op=">=",
            limit=TARGET_PER_S,
            unit="deliveries/s",
            detail=f"{done} delivered in {format_number(drain_s)} s",
        )
    )
    report.summary.append(
        f"One tenant-service replica delivered {done:,} signed events to one endpoint in {format_number(drain_s)} s, "
        f"{format_number(rate)} deliveries/s with the default share of one endpoint (target ≥ {TARGET_PER_S:.0f}/s), "
        f"and {format_number(every['rate'])} deliveries/s when one endpoint may take every slot "
        f"(WEBHOOK_ENDPOINT_CONCURRENCY = WEBHOOK_CONCURRENCY); every signature valid at the receiver."
    )


def _drain(
    ctx: BenchContext,
    inst: Installation,
    logs: Any,
    tag: str,
    port: int,
    hook: dict[str, Any],
    event: str,
    settings: dict[str, str],
) -> dict[str, Any]:
    """Start a receiver, put EVENTS ``event`` events in the outbox, start a tenant-service with ``settings`` and
    measure until every delivery of ``hook`` is recorded delivered; the service and receiver are stopped after."""
    receiver = ctx.registry.add(
        ServerProcess(
            f"webhook-receiver-{tag}",
            [*_python(), "-m", "bench.webhook_receiver", "--port", str(port)],
            logs / f"webhook-receiver-{tag}.log",
            env={"WEBHOOK_SECRET": hook["secret"]},
            port=port,
            cpus=ctx.cpu_load,
        )
    ).start(timeout=START_TIMEOUT)
    run_async(_insert_events(inst, EVENTS, event))
    say(f"webhooks: {EVENTS} {event} events in the outbox; starting the dispatcher ({settings})")
    service = ctx.registry.add(tenant_service(inst, logs, cpus=ctx.cpu_test, name=f"tenant-service-{tag}", **settings))
    started = time.time()
    service.start(timeout=START_TIMEOUT)
    deadline = time.monotonic() + 600
    done = total = 0
    while time.monotonic() < deadline:
        done, total = run_async(_delivered(inst, hook["id"]))
        if done >= EVENTS:
            break
        time.sleep(0.1)
    finished = time.time()
    stats = httpx.get(f"{receiver.url}/stats", timeout=10).json()
    service.stop()
    receiver.stop()
    drain_s = finished - stats["first"] if stats["first"] else None
    rate = done / drain_s if drain_s else None
    receiver_rate = (
        (stats["deliveries"] - 1) / (stats["last"] - stats["first"]) if stats["last"] > stats["first"] else None
    )
    rows = [
        ["events in the outbox", str(EVENTS)],
        ["deliveries recorded delivered", f"{done} of {total}"],
        ["requests the receiver got (distinct webhook-id)", f"{stats['deliveries']} ({stats['unique']})"],
        ["bad signatures", str(stats["bad_signatures"])],
        ["service start → first delivery (s)", format_number(stats["first"] - started if stats["first"] else None)],
        ["first delivery → all recorded delivered (s)", format_number(drain_s)],
        ["deliveries/s (recorded)", format_number(rate)],
        ["deliveries/s (at the receiver)", format_number(receiver_rate)],
    ]
    return {"stats": stats, "delivered": done, "total": total, "drain_s": drain_s, "rate": rate, "rows": rows}


def _python() -> list[str]:
    import sys  # noqa: PLC0415

    return [sys.executable]
