"""Section 5: the notes app behind the gateway: a warm tenant's request against a cold tenant's first request, and
the Postgres connections the app holds while hundreds of tenants are active in turn."""

from __future__ import annotations

import asyncio
import http.client
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import asyncpg
import httpx

from bench.context import BenchContext, SectionReport, say
from bench.platform import BENCH_GATEWAY_SETTINGS, START_TIMEOUT, Admin, gateway_accepts
from bench.results import Target, format_number, median, paired_ratio, percentile, safe_ratio
from bench.sections.common import in_installation
from tenantry_devtools.platform import Installation, Platform, Tenant
from tenantry_devtools.processes import wait_until

NAME = "apps"
TITLE = "5. Tenant apps"
APP_NAME = "bench-notes"


def run(ctx: BenchContext) -> dict[str, Any]:
    """Warm vs cold requests, then all tenants in turn (serially, then 8 at once) while counting connections."""
    report = SectionReport(ctx, NAME, TITLE)
    settings = ctx.settings
    report.settings = {
        "tenants": settings.app_tenants,
        "runs": settings.runs,
        "cold_tenants_per_run": settings.cold_per_run,
        "warm_requests_per_cold": settings.warm_per_cold,
    }
    return in_installation(ctx, report, "apps", partial(_run, ctx, report))


def app_budget() -> int:
    """The app's connection budget with its default settings (APP_CONNECTION_BUDGET unset)."""
    from tenantry_app.runtime import AppSettings  # noqa: PLC0415 - only to read the default

    saved = dict(os.environ)
    try:
        os.environ.pop("APP_CONNECTION_BUDGET", None)
        os.environ.setdefault("SERVICE_TOKEN", "unused")
        return AppSettings.from_env().connection_budget
    finally:
        os.environ.clear()
        os.environ.update(saved)


class Client:
    """GET /notes through the gateway on one keep-alive connection, timed."""

    def __init__(self, gateway_url: str) -> None:
        host, port = gateway_url.removeprefix("http://").split(":")
        self._conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def get_notes(self, tenant: Tenant) -> tuple[float, int]:
        """Milliseconds and status of one request."""
        started = time.perf_counter()
        self._conn.request("GET", "/notes", headers={"X-API-Key": tenant.key})
        response = self._conn.getresponse()
        response.read()
        return (time.perf_counter() - started) * 1000, response.status

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


class ConnectionSampler:
    """Samples pg_stat_activity in a thread: the app's connections (by application_name) and tenant roles'."""

    def __init__(self, pg_url: str, role_prefix: str, interval: float = 0.02) -> None:
        self._url = pg_url
        self._prefix = role_prefix
        self._interval = interval
        self._stop = threading.Event()
        self.samples: list[tuple[int, int]] = []
        self._thread = threading.Thread(target=lambda: asyncio.run(self._loop()), name="pg-sampler", daemon=True)

    async def _loop(self) -> None:
        conn = await asyncpg.connect(self._url, timeout=10)
        try:
            while not self._stop.is_set():
                row = await conn.fetchrow(
                    "SELECT count(*) FILTER (WHERE application_name = $1) AS app, "
                    "count(*) FILTER (WHERE starts_with(usename, $2)) AS roles FROM pg_stat_activity",
                    APP_NAME,
                    self._prefix,
                    timeout=10,
                )
                self.samples.append((int(row["app"]), int(row["roles"])))
                await asyncio.sleep(self._interval)
        finally:
            await conn.close(timeout=5)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def maximum(self) -> tuple[int, int]:
        """The largest counts seen: (app connections, tenant-role connections)."""
        return max(s[0] for s in self.samples), max(s[1] for s in self.samples)


def _run(ctx: BenchContext, report: SectionReport, inst: Installation) -> None:
    settings = ctx.settings
    logs = ctx.logs / NAME
    budget = app_budget()
    platform = Platform.launch(inst, logs, gateway_env=BENCH_GATEWAY_SETTINGS, app_name=APP_NAME, timeout=START_TIMEOUT)
    for process in platform.processes:
        ctx.registry.add(process)
    service, gw = platform.service, platform.gateway
    admin = Admin(service.url, inst.admin_token)
    admin.put_plan()
    say(f"apps: provisioning {settings.app_tenants} tenants")
    slugs = [f"a-{i:04d}" for i in range(settings.app_tenants)]
    wall, errors = admin.create_many(slugs, 8)
    if errors:
        raise RuntimeError(f"{len(errors)} tenants could not be created, e.g. {errors[0]}")
    tenants = _tenants(admin, slugs)
    admin.close()
    say(f"apps: {len(tenants)} tenants in {wall:.1f} s")
    wait_until(lambda: gateway_accepts(gw.url, tenants[-1], "/healthz"), 60, "gateway knows every tenant")

    warm_tenant = tenants[0]
    client = Client(gw.url)
    for _ in range(20):
        client.get_notes(warm_tenant)
    warm_ms: list[float] = []
    cold_ms: list[float] = []
    per_run: list[dict[str, float]] = []
    bad: list[str] = []
    floor_ms: list[float] = []
    per_cold = settings.cold_per_run
    needed = settings.runs * per_cold * 2  # half for the app's cold requests, half for the bare-connection floor
    if needed > len(tenants) - 1:
        raise RuntimeError(f"{needed} cold tenants needed, only {len(tenants) - 1} exist (raise --app-tenants)")
    cold_pool, floor_pool = tenants[1 : 1 + needed // 2], tenants[1 + needed // 2 : 1 + needed]
    floor_credentials = _credentials(service.url, inst.service_token, floor_pool)
    for run_no in range(settings.runs):
        run_warm: list[float] = []
        run_cold: list[float] = []
        run_floor: list[float] = []
        chunk = slice(run_no * per_cold, (run_no + 1) * per_cold)
        for tenant, floor_dsn in zip(cold_pool[chunk], floor_credentials[chunk], strict=True):
            for _ in range(settings.warm_per_cold):
                ms, status = client.get_notes(warm_tenant)
                run_warm.append(ms)
                if status != 200:
                    bad.append(f"warm {warm_tenant.slug}: {status}")
            ms, status = client.get_notes(tenant)
            run_cold.append(ms)
            if status != 200:
                bad.append(f"cold {tenant.slug}: {status}")
            run_floor.append(asyncio.run(_bare_connection_ms(floor_dsn)))
        per_run.append(
            {"warm_p50_ms": median(run_warm), "cold_p50_ms": median(run_cold), "floor_p50_ms": median(run_floor)}
        )
        warm_ms += run_warm
        cold_ms += run_cold
        floor_ms += run_floor
        say(
            f"apps run {run_no + 1}: warm p50 {median(run_warm):.2f} ms, cold p50 {median(run_cold):.2f} ms, "
            f"bare new connection p50 {median(run_floor):.2f} ms"
        )

    # Every tenant active in turn: one request each, serially, then 8 clients at once.
    assert inst.prefix is not None  # the bench's installations name their own databases
    loops: dict[str, dict[str, Any]] = {}
    for label, workers in (("serial", 1), ("8 at once", 8)):
        with ConnectionSampler(ctx.backends.pg_url, inst.prefix) as sampler:
            started = time.perf_counter()
            latencies, statuses = _in_turn(gw.url, tenants, workers)
            wall = time.perf_counter() - started
        app_max, roles_max = sampler.maximum()
        failures = sum(1 for s in statuses if s != 200)
        if failures:
            bad.append(f"{label}: {failures} of {len(statuses)} requests failed ({sorted(set(statuses))})")
        loops[label] = {
            "requests": len(statuses),
            "failures": failures,
            "wall_s": wall,
            "p50_ms": percentile(latencies, 50),
            "p95_ms": percentile(latencies, 95),
            "max_app_connections": app_max,
            "max_tenant_role_connections": roles_max,
            "samples": len(sampler.samples),
        }
        say(f"apps {label}: {len(statuses)} tenants in {wall:.1f} s, max {app_max} app connections")
    client.close()
    engines = platform.notes.engines()
    for problem in bad[:10]:
        report.error(problem)

    warm_p50 = median([r["warm_p50_ms"] for r in per_run])
    cold_p50 = median([r["cold_p50_ms"] for r in per_run])
    floor_p50 = median([r["floor_p50_ms"] for r in per_run])
    cold_ratio, cold_runs = paired_ratio([r["cold_p50_ms"] for r in per_run], [r["warm_p50_ms"] for r in per_run])
    floor_ratio, _ = paired_ratio([r["floor_p50_ms"] for r in per_run], [r["warm_p50_ms"] for r in per_run])
    report.method = [
        f"tenant-service, gateway (1 worker, full pipeline) and notes app as real processes (not pinned); "
        f"{settings.app_tenants} tenants provisioned through the admin API. The app runs with its defaults: "
        f"connection budget {budget} (APP_CONNECTION_BUDGET), 1 connection per tenant engine; "
        f"`APP_NAME={APP_NAME}` names its connections.",
        "Requests: `GET /notes` with `X-API-Key` through the gateway, one keep-alive connection (Python "
        "http.client), timed by the client from request to the last byte of the response.",
        f"Warm vs cold: per run, {settings.cold_per_run} tenants the app has never served each get one request "
        f"(their first: credential vending, engine creation, connection with SCRAM, query), each preceded by "
        f"{settings.warm_per_cold} requests of a warm tenant; medians per run, then the median over runs.",
        "Floor, in the same runs: after each cold request the bench itself opens a new connection to another "
        "tenant database nobody has connected to yet (asyncpg, that tenant's own role and SCRAM, "
        "`sslmode=disable`) and runs `SELECT 1`: what any design pays that opens a server connection for a "
        "tenant's first request, without gateway, app, SQLAlchemy or credential vending.",
        "Connections: every tenant gets one request, in turn (serially, then 8 clients at once), while a sampler "
        "counts `SELECT count(*) FROM pg_stat_activity` rows with the app's application_name (and, as a check, "
        "with the tenant role prefix) every 20 ms.",
    ]
    report.command("curl -s http://127.0.0.1:<gateway port>/notes -H 'X-API-Key: <tenant API key>'   # timed in Python")
    sampler_sql = "SELECT count(*) FILTER (WHERE application_name = '{app}'), count(*) FILTER (WHERE "
    sampler_sql += "starts_with(usename, '{prefix}')) FROM pg_stat_activity;   -- every 20 ms"
    report.command(sampler_sql.format(app=APP_NAME, prefix=inst.prefix))
    table = report.table(
        "Warm tenant vs a cold tenant's first request (ms; medians over runs)", ["", "p50 ms", "p90 ms", "÷ warm"]
    )
    table.rows += [
        ["warm tenant", format_number(warm_p50), format_number(percentile(warm_ms, 90)), "1"],
        [
            "cold tenant, first request",
            format_number(cold_p50),
            format_number(percentile(cold_ms, 90)),
            format_number(safe_ratio(cold_p50, warm_p50)),
        ],
        [
            "floor: bare new connection + `SELECT 1` to a fresh tenant database (no gateway, no app)",
            format_number(floor_p50),
            format_number(percentile(floor_ms, 90)),
            format_number(safe_ratio(floor_p50, warm_p50)),
        ],
    ]
    conn_table = report.table(
        f"{len(tenants)} tenants active in turn (budget {budget})",
        ["", "requests", "failed", "wall s", "p50 ms", "p95 ms", "max app connections", "max tenant-role conns"],
    )
    for label, loop in loops.items():
        conn_table.rows.append(
            [
                label,
                str(loop["requests"]),
                str(loop["failures"]),
                format_number(loop["wall_s"]),
                format_number(loop["p50_ms"]),
                format_number(loop["p95_ms"]),
                str(loop["max_app_connections"]),
                str(loop["max_tenant_role_connections"]),
            ]
        )
    report.data = {
        "budget": budget,
        "per_run": per_run,
        "warm_ms": warm_ms,
        "cold_ms": cold_ms,
        "floor_ms": floor_ms,
        "loops": loops,
        "engines_after": engines,
    }
    max_connections = max(loop["max_app_connections"] for loop in loops.values())
    report.targets += [
        Target(
            "apps.cold_vs_warm",
            "Cold tenant's first request ÷ warm request (p50)",
            cold_ratio,
            "<=",
            3.0,
            detail=(
                f"{cold_runs}; medians {format_number(cold_p50)} ms ÷ {format_number(warm_p50)} ms; a bare new "
                f"connection alone: {format_number(floor_ratio)} x warm"
            ),
        ),
        Target(
            "apps.connections",
            f"Most Postgres connections of the app with {len(tenants)} tenants in turn",
            float(max_connections),
            "<=",
            float(budget),
            detail=f"budget {budget}",
        ),
    ]


def _credentials(service_url: str, service_token: str, tenants: list[Tenant]) -> list[dict[str, Any]]:
    """Each tenant's own connection parameters, vended by the tenant-service's internal API (as the app gets them)."""
    dsns = []
    with httpx.Client(base_url=service_url, headers={"Authorization": f"Bearer {service_token}"}, timeout=30) as http:
        for tenant in tenants:
            response = http.get(f"/internal/v1/tenants/{tenant.id}/database")
            response.raise_for_status()
            c = response.json()
            dsns.append({k: c[k] for k in ("host", "port", "user", "password", "database")})
    return dsns


async def _bare_connection_ms(params: dict[str, Any]) -> float:
    """Milliseconds for a new connection to a tenant database and its first query."""
    started = time.perf_counter()
    conn = await asyncpg.connect(**params, ssl=False, timeout=30)
    try:
        await conn.fetchval("SELECT 1")
        return (time.perf_counter() - started) * 1000
    finally:
        await conn.close()


def _tenants(admin: Admin, slugs: list[str]) -> list[Tenant]:
    """The created tenants with their keys (create_many keeps them on the admin object)."""
    created = {t.slug: t for t in admin.created}
    return [created[s] for s in slugs]


def _in_turn(gateway_url: str, tenants: list[Tenant], workers: int) -> tuple[list[float], list[int]]:
    """One request per tenant, by ``workers`` clients; latencies and statuses."""
    chunks = [tenants[i::workers] for i in range(workers)]
    latencies: list[float] = []
    statuses: list[int] = []

    def work(chunk: list[Tenant]) -> None:
        client = Client(gateway_url)
        try:
            for tenant in chunk:
                ms, status = client.get_notes(tenant)
                latencies.append(ms)
                statuses.append(status)
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(work, chunks))
    return latencies, statuses
