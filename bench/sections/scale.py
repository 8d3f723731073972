"""Section 7: N (default 1,000) real tenant databases on one PostgreSQL server — what they cost it.

One pass, not repeated: the creates of the first 100 and the last 100 tenants are the two sides of the comparison,
both measured in that pass. Every database and role the section made is dropped at its end, whatever happens.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

import asyncpg
import httpx
import msgspec
import redis.asyncio as redis

from bench.capacity import (
    IdleResult,
    Span,
    blocks,
    cpu_by_kind,
    disk_usage,
    expected_worker_rate,
    interpolate,
    measure_idle,
    parse_proc_stat,
    parse_status_kb,
    rss_mb,
    setting_seconds,
    window,
)
from bench.context import BenchContext, SectionReport, say
from bench.platform import START_TIMEOUT, Admin, access_token, gateway, run_async, tenant_service
from bench.procs import cpu_seconds, cpu_seconds_with_reaped, descendants
from bench.results import Target, format_number, median, safe_ratio
from bench.sections.common import in_installation
from bench.sections.fleet import migrate_run, timed_migrate
from gateway.directory import Directory, DirectorySync
from tenant_service.provisioning.schema import DEFAULT_MIGRATIONS_DIR, load_migrations
from tenantry_common.directory import DirectoryPage
from tenantry_devtools.platform import Installation, Tenant, TenantServiceProcess, with_database

NAME = "scale"
TITLE = "7. Many tenant databases on one server"
#: Creates in flight at once (as the fleet section provisions).
WORKERS: Final = 8
#: The size of the first and last windows of creates compared.
WINDOW: Final = 100
#: Full directory fetches timed (medians).
DIRECTORY_REPEATS: Final = 5
#: Gateway starts timed with each directory size (median).
GATEWAY_STARTS: Final = 3
#: Seconds the server is left alone after a CHECKPOINT before an idle window starts.
SETTLE_SECONDS: Final = 5.0
#: How often the CPU of PostgreSQL and the tenant-service is sampled during the creates.
CPU_SAMPLE_SECONDS: Final = 0.5
#: Every bench gateway needs an upstream; this one is never called (only /_gateway/ endpoints are used).
UNUSED_UPSTREAM: Final = "http://127.0.0.1:9"
#: Settings of the server reported with the numbers.
PG_SETTINGS: Final = (
    "autovacuum",
    "autovacuum_naptime",
    "autovacuum_max_workers",
    "max_connections",
    "shared_buffers",
    "max_wal_size",
    "checkpoint_timeout",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
)
#: Directories of the data directory whose growth is reported (``base``: databases; ``global``: shared catalogs).
PGDATA_ENTRIES: Final = ("base", "global", "pg_wal")
MB: Final = 1024 * 1024
#: The last window's provisioning rate must be at least this share of the first window's. A create's work does not
#: depend on how many databases exist (a WAL_LOG copy of a fixed-size template, catalog rows through indexes), so
#: the rate should stay flat; but one pass on a 2-core machine is noisy — windows of 100 creates in one pass ranged
#: 16.5 to 26.4 tenants/s (2026-12-02) — so the bound only fails a real slowdown: creates taking twice as long.
RATE_RATIO_LIMIT: Final = 0.5
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
_decode_page: Final = msgspec.json.Decoder(DirectoryPage).decode


def run(ctx: BenchContext) -> dict[str, Any]:
    """Create N tenants on the bench's PostgreSQL and measure what they cost; drop them all at the end."""
    report = SectionReport(ctx, NAME, TITLE)
    settings = ctx.settings
    report.title = f"7. {settings.scale_tenants:,} tenant databases on one server"
    report.settings = {
        "tenants": settings.scale_tenants,
        "create_workers": WORKERS,
        "idle_window_s": settings.scale_idle_seconds,
        "migrate_tenants_concurrency": settings.fleet_concurrency,
        "runs": 1,
    }
    return in_installation(ctx, report, "scale", partial(_run, ctx, report))


@dataclass
class Pass:
    """The creates of one pass."""

    spans: list[Span]
    errors: list[str]
    series: dict[str, list[tuple[float, float]]]
    """Counters sampled over the pass (:func:`snapshot`), as ``(seconds from the start, value)``."""
    wall: float

    def per_tenant_ms(self, name: str, part: dict[str, float]) -> float:
        """CPU milliseconds of counter ``name`` per create of a :func:`~bench.capacity.window`."""
        samples = self.series[name]
        used = interpolate(samples, part["to_s"]) - interpolate(samples, part["from_s"])
        return used * 1000 / (part["last"] - part["first"] + 1)

    def share(self, name: str, part: dict[str, float]) -> float:
        """Counter ``name`` as a percentage of all the machine's CPU time (every core) during a window."""
        used = interpolate(self.series[name], part["to_s"]) - interpolate(self.series[name], part["from_s"])
        total = interpolate(self.series["machine"], part["to_s"]) - interpolate(self.series["machine"], part["from_s"])
        return 100 * used / total if total > 0 else float("nan")

    def at(self, name: str, when: float) -> float:
        """A gauge (e.g. ``dirty_mb``) at a moment."""
        return interpolate(self.series[name], when)


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and everything below it, its reaped children included."""
    return cpu_seconds_with_reaped(pid) + sum(cpu_seconds(p) for p in descendants(pid)[1:])


def snapshot(pg_pid: int, ts_pid: int) -> dict[str, float]:
    """CPU seconds so far of PostgreSQL (all, its backends — live and exited — and its background processes), of
    the tenant-service, and of the whole machine (busy, I/O wait, stolen by the hypervisor, all), and the dirty
    page cache in MB."""
    kinds = cpu_by_kind(pg_pid)
    backends = kinds.get("client backend", 0.0) + kinds.get("exited", 0.0)
    total = sum(kinds.values())
    stat = parse_proc_stat(Path("/proc/stat").read_text())
    ticks = _CLK_TCK
    busy = sum(stat[k] for k in ("user", "nice", "system", "irq", "softirq"))
    dirty = parse_status_kb(Path("/proc/meminfo").read_text(), "Dirty") or 0
    return {
        "pg": total,
        "pg_backends": backends,
        "pg_background": total - backends,
        "ts": _tree_cpu(ts_pid),
        "machine_busy": busy / ticks,
        "machine_iowait": stat["iowait"] / ticks,
        "machine_steal": stat["steal"] / ticks,
        "machine": (busy + stat["idle"] + stat["iowait"] + stat["steal"]) / ticks,
        "dirty_mb": dirty / 1024,
    }


def create_pass(admin: Admin, slugs: list[str], workers: int, pg_pid: int, ts_pid: int) -> Pass:
    """Create ``slugs`` in order with ``workers`` threads taking the next slug from one queue; time every create
    and sample the CPU of PostgreSQL, the tenant-service and the machine meanwhile."""
    queue = deque(slugs)
    lock = threading.Lock()
    spans: list[Span] = []
    errors: list[str] = []
    series: dict[str, list[tuple[float, float]]] = {}
    done = threading.Event()
    origin = time.perf_counter()

    def sample() -> None:
        values = snapshot(pg_pid, ts_pid)
        when = time.perf_counter() - origin
        for name, value in values.items():
            series.setdefault(name, []).append((when, value))

    def sampler() -> None:
        while not done.wait(CPU_SAMPLE_SECONDS):
            sample()

    def work(client: httpx.Client) -> None:
        while True:
            with lock:
                if not queue:
                    return
                slug = queue.popleft()
            started = time.perf_counter()
            try:
                admin.create_tenant(slug, plan=None, client=client)
            except (RuntimeError, httpx.HTTPError) as exc:
                errors.append(str(exc))
                continue
            ended = time.perf_counter()
            with lock:
                spans.append(Span(started - origin, ended - origin))

    clients = [admin.client() for _ in range(workers)]
    sample()
    watcher = threading.Thread(target=sampler, name="scale-cpu", daemon=True)
    watcher.start()
    threads = [threading.Thread(target=work, args=(c,), name=f"scale-create-{i}") for i, c in enumerate(clients)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        wall = time.perf_counter() - origin
        done.set()
        watcher.join(timeout=10)
        sample()
        for client in clients:
            client.close()
    return Pass(spans, errors, series, wall)


# --------------------------------------------------------------------------- PostgreSQL queries


async def _connect(url: str) -> Any:
    return await asyncpg.connect(url, timeout=10)


async def pg_settings(url: str) -> dict[str, str]:
    """The reported settings of the server, with their units (``60s``, ``128MB``)."""
    conn = await _connect(url)
    try:
        rows = await conn.fetch("SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1)", list(PG_SETTINGS))
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close(timeout=5)
    values = {r["name"]: _with_unit(r["setting"], r["unit"]) for r in rows}
    return {"server_version": str(version), **{name: values.get(name, "?") for name in PG_SETTINGS}}


def _with_unit(setting: str, unit: str | None) -> str:
    """``pg_settings`` value in words: ``16384`` of ``8kB`` → ``128MB``; ``60`` ``s`` → ``60s``."""
    if unit == "8kB" and setting.isdigit():
        return f"{int(setting) * 8 // 1024}MB"
    if unit == "MB" and setting.isdigit():
        return f"{setting}MB"
    return f"{setting}{unit or ''}"


async def server_sizes(inst: Installation) -> dict[str, Any]:
    """Catalog and database sizes of the server, the installation's among them, and the WAL position."""
    assert inst.prefix is not None
    assert inst.template is not None
    conn = await _connect(inst.pg_url)
    try:
        shared = await conn.fetch(
            "SELECT c.relname, pg_total_relation_size(c.oid) AS bytes FROM pg_class c "
            "WHERE c.relisshared AND c.relkind = 'r' ORDER BY c.relname"
        )
        tenants = await conn.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(pg_database_size(oid)), 0) AS bytes, "
            "min(pg_database_size(oid)) AS smallest, max(pg_database_size(oid)) AS largest "
            "FROM pg_database WHERE starts_with(datname, $1)",
            inst.prefix,
        )
        result = {
            "shared_catalogs": {r["relname"]: int(r["bytes"]) for r in shared},
            "databases": int(await conn.fetchval("SELECT count(*) FROM pg_database")),
            "roles": int(await conn.fetchval("SELECT count(*) FROM pg_authid")),
            "registry_bytes": int(await conn.fetchval("SELECT pg_database_size($1)", inst.master_db)),
            "template_bytes": int(await conn.fetchval("SELECT pg_database_size($1)", inst.template)),
            "tenant_databases": int(tenants["n"]),
            "tenant_bytes": int(tenants["bytes"]),
            "tenant_smallest": int(tenants["smallest"] or 0),
            "tenant_largest": int(tenants["largest"] or 0),
            "wal_bytes": int(await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")),
        }
    finally:
        await conn.close(timeout=5)
    return result


async def databases_with_stats(inst: Installation) -> tuple[int, int]:
    """Databases the statistics system has seen a session or transaction in: the installation's tenant databases,
    and all databases of the server (autovacuum only schedules databases with a statistics entry; one nobody has
    connected to since the statistics began has none)."""
    assert inst.prefix is not None
    conn = await _connect(inst.pg_url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE starts_with(datname, $1)) AS tenants, count(*) AS all "
            "FROM pg_stat_database WHERE datname IS NOT NULL AND (sessions > 0 OR xact_commit > 0)",
            inst.prefix,
        )
    finally:
        await conn.close(timeout=5)
    return int(row["tenants"]), int(row["all"])


async def catalog_share(inst: Installation, database: str) -> dict[str, int]:
    """What an empty tenant database is made of: its own system catalogs (``pg_catalog`` and
    ``information_schema`` relations that are not shared, with their indexes and TOAST), the tenant's relations
    (everything else), and ``pg_database_size`` (the difference is files such as the relation map)."""
    conn = await _connect(with_database(inst.pg_url, database))
    try:
        row = await conn.fetchrow(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)) FILTER (WHERE n.nspname IN "
            "('pg_catalog', 'information_schema')), 0) AS catalog, "
            "coalesce(sum(pg_total_relation_size(c.oid)) FILTER (WHERE n.nspname NOT IN "
            "('pg_catalog', 'information_schema')), 0) AS tenant, "
            "pg_database_size(current_database()) AS total "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'm') AND NOT c.relisshared"
        )
    finally:
        await conn.close(timeout=5)
    return {"catalog": int(row["catalog"]), "tenant": int(row["tenant"]), "total": int(row["total"])}


async def checkpoint(url: str) -> None:
    """``CHECKPOINT``: nothing left for the checkpointer to write in the idle window that follows."""
    conn = await _connect(url)
    try:
        await conn.execute("CHECKPOINT", timeout=600)
    finally:
        await conn.close(timeout=5)


async def log_autovacuum_starts(url: str, *, on: bool) -> None:
    """Make every autovacuum worker log the database it processes (``log_min_messages = debug1``, the level of
    that line), or put the setting back."""
    conn = await _connect(url)
    try:
        if on:
            await conn.execute("ALTER SYSTEM SET log_min_messages = 'debug1'")
        else:
            await conn.execute("ALTER SYSTEM RESET log_min_messages")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close(timeout=5)


async def bgwriter_stats(url: str) -> dict[str, int]:
    """``pg_stat_bgwriter``: checkpoints and who wrote the dirty buffers out (checkpointer, background writer,
    backends evicting them)."""
    conn = await _connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT checkpoints_timed, checkpoints_req, buffers_checkpoint, buffers_clean, buffers_backend, "
            "buffers_alloc FROM pg_stat_bgwriter"
        )
    finally:
        await conn.close(timeout=5)
    return {key: int(value) for key, value in dict(row).items()}


def idle_window(ctx: BenchContext, pm: int, url: str, label: str, windows: int = 1) -> list[IdleResult]:
    """``windows`` consecutive idle windows of the server after a CHECKPOINT and :data:`SETTLE_SECONDS`, with every
    autovacuum worker's database logged meanwhile."""
    seconds = ctx.settings.scale_idle_seconds
    run_async(checkpoint(url))
    run_async(log_autovacuum_starts(url, on=True))
    results: list[IdleResult] = []
    try:
        time.sleep(SETTLE_SECONDS)
        for number in range(1, windows + 1):
            say(f"scale: idle window {number} of {windows} with {label} ({seconds:.0f} s)")
            results.append(measure_idle(pm, seconds, ctx.backends.pg_log))
    finally:
        run_async(log_autovacuum_starts(url, on=False))
    return results


# --------------------------------------------------------------------------- the directory


async def directory_fetches(base_url: str, token: str, redis_url: str, repeats: int) -> dict[str, Any]:
    """Time full directory loads ``repeats`` times each way: the HTTP fetch alone, the gateway's decode and apply
    of that answer, and the gateway's own ``DirectorySync.sync_once(full=True)`` (fetch, decode, apply)."""
    fetch_ms: list[float] = []
    apply_ms: list[float] = []
    sync_ms: list[float] = []
    size = tenants = 0
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=120
    ) as client:
        for _ in range(repeats):
            started = time.perf_counter()
            response = await client.get("/internal/v1/directory/", params={"since": 0})
            fetched = time.perf_counter()
            response.raise_for_status()
            page = _decode_page(response.content)
            Directory().apply_page(page)
            applied = time.perf_counter()
            fetch_ms.append((fetched - started) * 1000)
            apply_ms.append((applied - fetched) * 1000)
            size, tenants = len(response.content), len(page.tenants)
    events = redis.Redis.from_url(redis_url)
    sync = DirectorySync(
        Directory(), base_url=base_url, token=token, redis_client=events, refresh_seconds=1.0, full_sync_seconds=60.0
    )
    try:
        for _ in range(repeats):
            started = time.perf_counter()
            await sync.sync_once(full=True)
            sync_ms.append((time.perf_counter() - started) * 1000)
        loaded = len(sync.directory.by_id)
    finally:
        await sync.stop()
        await events.aclose()
    return {
        "fetch_ms": fetch_ms,
        "apply_ms": apply_ms,
        "sync_ms": sync_ms,
        "bytes": size,
        "tenants": tenants,
        "loaded": loaded,
    }


def gateway_start(
    ctx: BenchContext, inst: Installation, service: TenantServiceProcess, name: str, known: list[Tenant]
) -> dict[str, Any]:
    """Start a gateway (1 worker) :data:`GATEWAY_STARTS` times, each timed until ``/_gateway/readyz`` answers 200
    (its first full directory load done); check it knows ``known`` (an access token for each); return the times
    (median and all) and its memory after the last start."""
    ready: list[float] = []
    rss: float | None = None
    for attempt in range(1, GATEWAY_STARTS + 1):
        gw = ctx.registry.add(
            gateway(inst, service.url, UNUSED_UPSTREAM, ctx.logs / NAME, name=f"{name}-{attempt}", cpus=None)
        )
        started = time.perf_counter()
        gw.start(timeout=START_TIMEOUT)
        ready.append(time.perf_counter() - started)
        try:
            for tenant in known:
                access_token(gw.url, tenant)
            time.sleep(1.0)
            rss = rss_mb(gw.pid)
        finally:
            ctx.registry.stop(gw)
    return {"ready_s": median(ready), "ready_all_s": ready, "rss_mb": rss}


# --------------------------------------------------------------------------- the section


def _run(ctx: BenchContext, report: SectionReport, inst: Installation) -> None:
    settings = ctx.settings
    count = settings.scale_tenants
    if count < 3:
        raise RuntimeError("--scale-tenants must be at least 3")
    pg = ctx.backends.postgres
    pm = ctx.backends.postgres_pid()
    schema = ctx.root / "scale-schema"
    shutil.copytree(DEFAULT_MIGRATIONS_DIR, schema, ignore=shutil.ignore_patterns("__pycache__"))
    extra = {"TENANT_MIGRATIONS_DIR": str(schema)}
    server = run_async(pg_settings(inst.pg_url))
    report.data["server"] = server
    say(f"scale: server settings {server}")

    # 1. The server with the installation and no tenant: sizes (after a checkpoint: everything on disk), idle CPU.
    run_async(checkpoint(inst.pg_url))
    before = run_async(server_sizes(inst))
    du_before = disk_usage(pg.data_dir, PGDATA_ENTRIES)
    with_stats_empty = run_async(databases_with_stats(inst))
    idle_empty = idle_window(ctx, pm, inst.pg_url, "0 tenant databases")

    # 2. The tenant-service and a gateway with no tenant.
    service = ctx.registry.add(tenant_service(inst, ctx.logs / NAME, **extra)).start(timeout=START_TIMEOUT)
    time.sleep(2.0)
    rss_start = rss_mb(service.pid)
    gw_empty = gateway_start(ctx, inst, service, "gateway-0", [])

    # 3. N creates: one alone (warm-up: the service's first create pays for imports and pools), then N - 1 with
    # WORKERS at once.
    admin = Admin(service.url, inst.admin_token)
    say(f"scale: creating {count} tenants ({WORKERS} at once)")
    admin.create_tenant("s-00000", plan=None)
    slugs = [f"s-{i:05d}" for i in range(1, count)]
    writes_before = run_async(bgwriter_stats(inst.pg_url))
    created = create_pass(admin, slugs, WORKERS, pm, service.pid)
    writes_after = run_async(bgwriter_stats(inst.pg_url))
    if created.errors:
        raise RuntimeError(f"{len(created.errors)} of {count} creates failed, e.g. {created.errors[0]}")
    say(f"scale: {count} tenants in {created.wall:.1f} s")
    time.sleep(3.0)
    rss_created = rss_mb(service.pid)

    # 4. The directory with N tenants, fetched and loaded, and a gateway started with it.
    ts_before = _tree_cpu(service.pid)
    directory = run_async(directory_fetches(service.url, inst.gateway_token, inst.redis_url, DIRECTORY_REPEATS))
    ts_fetch_cpu = (_tree_cpu(service.pid) - ts_before) / (2 * DIRECTORY_REPEATS)
    if directory["tenants"] != count or directory["loaded"] != count:
        raise RuntimeError(f"the directory holds {directory['tenants']} / {directory['loaded']} tenants, not {count}")
    gw_full = gateway_start(ctx, inst, service, f"gateway-{count}", [admin.created[0], admin.created[-1]])
    rss_directory = rss_mb(service.pid)
    admin.close()
    ctx.registry.stop(service)

    # 5. Sizes with N tenant databases, then the idle server with N databases nobody has connected to yet.
    run_async(checkpoint(inst.pg_url))
    after = run_async(server_sizes(inst))
    du_after = disk_usage(pg.data_dir, PGDATA_ENTRIES)
    if after["tenant_databases"] != count:
        raise RuntimeError(f"{after['tenant_databases']} tenant databases exist, not {count}")
    with_stats_new = run_async(databases_with_stats(inst))
    idle_new = idle_window(ctx, pm, inst.pg_url, f"{count} tenant databases never connected to")

    # 6. migrate-tenants over all N: nothing to do, then a one-column migration (every database connected to).
    migrate_argv = [
        sys.executable,
        "-m",
        "tenant_service",
        "migrate-tenants",
        "--concurrency",
        str(settings.fleet_concurrency),
    ]
    noop_s, _ = timed_migrate(inst, migrate_argv, extra)
    version = load_migrations(schema)[-1].version + 1
    migration = schema / f"{version:04d}_scale_col.sql"
    migration.write_text("-- make bench, scale section\nALTER TABLE notes ADD COLUMN scale_col text;\n")
    say(f"scale: migrate-tenants over {count} tenants")
    migrate_s = migrate_run(inst, migrate_argv, extra, version, count)
    say(f"scale: migrate-tenants {migrate_s:.1f} s (nothing to do: {noop_s:.1f} s)")

    # 7. The idle server with N databases that have each been connected to (what live tenants look like).
    share = run_async(catalog_share(inst, admin.created[-1].database))
    with_stats_used = run_async(databases_with_stats(inst))
    idle_used = idle_window(ctx, pm, inst.pg_url, f"{count} tenant databases connected to once", windows=2)

    # 8. Drop them all (timed; the section's clean-up finds nothing left).
    started = time.perf_counter()
    run_async(inst.drop())
    drop_s = time.perf_counter() - started
    say(f"scale: dropped {count} databases and roles in {drop_s:.1f} s")

    _report(
        ctx,
        report,
        Measured(
            count=count,
            created=created,
            before=before,
            after=after,
            du_before=du_before,
            du_after=du_after,
            directory=directory,
            ts_fetch_cpu_s=ts_fetch_cpu,
            gw_empty=gw_empty,
            gw_full=gw_full,
            rss={"start": rss_start, "created": rss_created, "directory": rss_directory},
            idle=[*idle_empty, *idle_new, *idle_used],
            writes=(writes_before, writes_after),
            with_stats=[with_stats_empty, with_stats_new, with_stats_used, with_stats_used],
            share=share,
            noop_s=noop_s,
            migrate_s=migrate_s,
            drop_s=drop_s,
            server=server,
            version=version,
        ),
    )


@dataclass
class Measured:
    """Everything :func:`_run` measured."""

    count: int
    created: Pass
    before: dict[str, Any]
    after: dict[str, Any]
    du_before: dict[str, int]
    du_after: dict[str, int]
    directory: dict[str, Any]
    ts_fetch_cpu_s: float
    gw_empty: dict[str, Any]
    gw_full: dict[str, Any]
    rss: dict[str, float | None]
    idle: list[IdleResult]
    """0 tenant databases; N never connected to; N connected to once (two windows in a row)."""
    writes: tuple[dict[str, int], dict[str, int]]
    with_stats: list[tuple[int, int]]
    share: dict[str, int]
    noop_s: float
    migrate_s: float
    drop_s: float
    server: dict[str, str]
    version: int


def _mb(value: float | None) -> str:
    return format_number(value / MB) if value is not None else "n/a"


def _kb(value: float) -> str:
    return format_number(value / 1024)


def _report(ctx: BenchContext, report: SectionReport, m: Measured) -> None:
    n = m.count
    timed = len(m.created.spans)
    size = min(WINDOW, timed // 2)
    first = window(m.created.spans, 0, size)
    last = window(m.created.spans, timed - size, size)
    whole = window(m.created.spans, 0, timed)
    per_block = blocks(m.created.spans, size)
    for part in (first, last, whole, *per_block):
        for name in ("pg", "pg_backends", "pg_background", "ts"):
            part[f"{name}_cpu_ms"] = m.created.per_tenant_ms(name, part)
        part["machine_busy_pct"] = m.created.share("machine_busy", part)
        part["machine_iowait_pct"] = m.created.share("machine_iowait", part)
        part["machine_steal_pct"] = m.created.share("machine_steal", part)
        part["dirty_mb_at_end"] = m.created.at("dirty_mb", part["to_s"])
    server = m.server
    naptime = server.get("autovacuum_naptime", "?")

    report.method = [
        (__doc__ or "").split("\n\n", 1)[1].replace("\n", " ").strip(),
        f"The server: the bench's own PostgreSQL ({server.get('server_version')}), "
        + ", ".join(f"{k} = {v}" for k, v in server.items() if k != "server_version")
        + " (the bench's cluster turns durability off: tenantry_devtools.servers). Its tenant databases are this "
        "section's alone (an installation of its own); the other sections' installations were dropped before.",
        f"Creates: the tenant-service (one process, not pinned) creates {n:,} tenants through `POST /admin/tenants` "
        f"(synchronous; default plan): the first alone (warm-up, not timed), then {n - 1:,} with {WORKERS} client "
        "threads taking the next slug from one queue. Each create's latency is timed; a window's rate is its "
        "completions ÷ the time from the completion before the window to its last one (tenant numbers count the "
        "warm-up as 1). CPU per tenant, sampled from /proc every "
        f"{CPU_SAMPLE_SECONDS} s and interpolated at the window's ends: PostgreSQL — its backends (the "
        "tenant-service's connections, live and exited) and its background processes (checkpointer, background "
        "writer, WAL writer, autovacuum) — and the tenant-service; the machine's CPU (every core, from /proc/stat: "
        "busy, idle waiting for I/O, stolen by the hypervisor) as a share of all its CPU time; the dirty page cache "
        "(/proc/meminfo "
        "`Dirty`) at the window's end. Buffer writes from `pg_stat_bgwriter` before and after the creates. The "
        "harness's client threads, the tenant-service and PostgreSQL share the machine's cores (nothing pinned).",
        "Target: the last 100 creates' rate at least half the first 100's. A create's work does not depend on how "
        "many databases exist (a WAL_LOG copy of a fixed-size template, catalog rows through indexes), so the rate "
        "should stay flat; one pass on this machine is noisy (windows of 100 in one pass have ranged from 16.5 to "
        "26.4 tenants/s), so the bound fails only a real slowdown — creates taking twice as long with "
        f"{n:,} databases as with none.",
        "Bytes: `pg_database_size` of the template and of every tenant database; the data directory's `base/` "
        "(databases), `global/` (shared catalogs) and `pg_wal/` with `du -s -B1` (blocks allocated) before the "
        "first create and after the last; the shared catalogs (`pg_class.relisshared`) with "
        "`pg_total_relation_size`; WAL written (`pg_current_wal_lsn()` difference).",
        f"Directory: with {n:,} tenants, {DIRECTORY_REPEATS} full fetches `GET /internal/v1/directory/?since=0` "
        "with the gateway token (HTTP time, then the gateway's own decode and `Directory.apply_page` of the "
        f"answer, timed apart), then {DIRECTORY_REPEATS} calls of the gateway's own "
        "`DirectorySync.sync_once(full=True)` (in the harness process, the code a gateway runs every 60 s); "
        f"medians. A real gateway (1 worker) is started {GATEWAY_STARTS} times with 0 and {GATEWAY_STARTS} times "
        "with all tenants: seconds from its start until `/_gateway/readyz` answers 200 (a gateway serves nothing "
        "before its first full directory load is done), medians; it is checked to know the first and the last "
        "tenant (`POST /_gateway/token`), and its VmRSS read 1 s later.",
        "tenant-service memory: VmRSS from /proc 2 s after it is ready (0 tenants), 3 s after the last create, "
        f"and after the {2 * DIRECTORY_REPEATS} full directory fetches and the gateway's starts.",
        f"Idle CPU: windows of {m.idle[0].seconds:.0f} s with no client connected and no platform process running "
        "(the tenant-service and gateways stopped), after a `CHECKPOINT` and "
        f"{SETTLE_SECONDS:.0f} s: with 0 tenant databases, with {n:,} that nobody has connected to yet, and with "
        f"the same {n:,} after `migrate-tenants` connected to each once (two windows in a row). The CPU of every "
        "PostgreSQL process from /proc (utime + stime; exited processes, i.e. autovacuum workers, through the "
        "postmaster's cutime + cstime), as % of one core. Autovacuum workers are counted from the server log: "
        "during the windows `log_min_messages` is `debug1` (`ALTER SYSTEM`, reset afterwards), at which each "
        'worker logs `autovacuum: processing database "<name>"`. Expected workers/s: one per database with '
        "statistics per `autovacuum_naptime`, spaced at least 0.11 s apart (the launcher's floor).",
        f"`tenantctl migrate-tenants --concurrency {ctx.settings.fleet_concurrency}` over all {n:,} tenants: once "
        f"with nothing to migrate, then with one migration (`{m.version:04d}_scale_col.sql`: "
        "`ALTER TABLE notes ADD COLUMN scale_col text;`) in a copy of the schema directory; wall times include "
        "the Python start-up.",
    ]
    report.command(
        "curl -X POST http://127.0.0.1:<port>/admin/tenants -H 'Authorization: Bearer <admin token>' "
        '-H \'Content-Type: application/json\' -d \'{"slug": "s-<n>", "name": "s-<n>"}\'   # 8 at once'
    )
    report.command(
        "curl 'http://127.0.0.1:<port>/internal/v1/directory/?since=0' -H 'Authorization: Bearer <gateway token>'"
    )
    report.command(f"du -s -B1 {' '.join(PGDATA_ENTRIES)}   # in the cluster's data directory")
    report.command(
        f"TENANT_MIGRATIONS_DIR=<copy of the schema + {m.version:04d}_scale_col.sql> python -m tenant_service "
        f"migrate-tenants --concurrency {ctx.settings.fleet_concurrency}"
    )

    prov = report.table(
        f"Provisioning {n:,} tenants, {WORKERS} at once (one pass)",
        [
            "Creates",
            "tenants/s",
            "p50 ms",
            "p95 ms",
            "max ms",
            "PostgreSQL CPU ms/tenant",
            "tenant-service CPU ms/tenant",
        ],
    )
    for label, part in ((f"first {size}", first), (f"last {size}", last), (f"all {timed:,} timed", whole)):
        prov.rows.append(
            [
                label,
                format_number(part["rate"]),
                format_number(part["p50_ms"]),
                format_number(part["p95_ms"]),
                format_number(part["max_ms"]),
                format_number(part["pg_cpu_ms"]),
                format_number(part["ts_cpu_ms"]),
            ]
        )
    trend = report.table(
        f"Every {size} creates, in completion order: PostgreSQL CPU per tenant (backends / background processes), "
        "the machine's CPU: busy, waiting for I/O, stolen by the hypervisor (% of all cores); dirty page cache at "
        "the end",
        [
            "Tenants",
            "tenants/s",
            "p50 ms",
            "p95 ms",
            "PostgreSQL CPU ms/tenant",
            "backends / background",
            "machine busy %",
            "I/O wait %",
            "steal %",
            "dirty MB",
        ],
    )
    for part in per_block:
        trend.rows.append(
            [
                f"{int(part['first']) + 1:,} to {int(part['last']) + 1:,}",
                format_number(part["rate"]),
                format_number(part["p50_ms"]),
                format_number(part["p95_ms"]),
                format_number(part["pg_cpu_ms"]),
                f"{format_number(part['pg_backends_cpu_ms'])} / {format_number(part['pg_background_cpu_ms'])}",
                format_number(part["machine_busy_pct"]),
                format_number(part["machine_iowait_pct"]),
                format_number(part["machine_steal_pct"]),
                format_number(part["dirty_mb_at_end"]),
            ]
        )
    w0, w1 = m.writes
    writes = report.table(
        f"Buffer writes during the {timed:,} timed creates (`pg_stat_bgwriter`, 8 kB buffers)",
        ["", "total", "per tenant"],
    )
    for key, label in (
        ("checkpoints_req", "checkpoints requested (WAL volume)"),
        ("checkpoints_timed", "checkpoints on schedule"),
        ("buffers_checkpoint", "buffers written by the checkpointer"),
        ("buffers_clean", "buffers written by the background writer"),
        ("buffers_backend", "buffers written by backends (evicting dirty buffers)"),
        ("buffers_alloc", "buffers allocated"),
    ):
        delta = w1[key] - w0[key]
        writes.rows.append([label, f"{delta:,}", format_number(delta / timed)])

    b, a = m.before, m.after
    grown = a["tenant_databases"] - b["tenant_databases"]
    disk = report.table(
        f"Bytes: before the first create and with {n:,} tenant databases",
        ["", "before", f"with {n:,}", "per tenant"],
    )
    disk.rows += [
        [
            "template database (`pg_database_size`)",
            _mb(b["template_bytes"]) + " MB",
            _mb(a["template_bytes"]) + " MB",
            "",
        ],
        [
            "tenant databases (`pg_database_size`, sum)",
            _mb(b["tenant_bytes"]) + " MB",
            _mb(a["tenant_bytes"]) + " MB",
            _mb((a["tenant_bytes"] - b["tenant_bytes"]) / grown) + " MB",
        ],
        [
            "of which its own system catalogs (`pg_catalog`, `information_schema`; one database)",
            "",
            "",
            _mb(m.share["catalog"]) + " MB",
        ],
        ["of which the tenant schema's tables, empty (one database)", "", "", _kb(m.share["tenant"]) + " kB"],
    ]
    for entry in PGDATA_ENTRIES:
        grew = (m.du_after.get(entry, 0) - m.du_before.get(entry, 0)) / grown
        disk.rows.append(
            [
                f"data directory `{entry}/` (du)",
                _mb(m.du_before.get(entry, 0)) + " MB",
                _mb(m.du_after.get(entry, 0)) + " MB",
                _kb(grew) + " kB" if abs(grew) < MB / 10 else _mb(grew) + " MB",
            ]
        )
    disk.rows += [
        [
            "data directory, all (du)",
            _mb(m.du_before["total"]) + " MB",
            _mb(m.du_after["total"]) + " MB",
            _mb((m.du_after["total"] - m.du_before["total"]) / grown) + " MB",
        ],
        [
            "WAL written by the creates (LSN difference)",
            "",
            _mb(a["wal_bytes"] - b["wal_bytes"]) + " MB",
            _mb((a["wal_bytes"] - b["wal_bytes"]) / grown) + " MB",
        ],
        [
            "registry database (`pg_database_size`)",
            _mb(b["registry_bytes"]) + " MB",
            _mb(a["registry_bytes"]) + " MB",
            _kb((a["registry_bytes"] - b["registry_bytes"]) / grown) + " kB",
        ],
        ["databases on the server (`pg_database`)", str(b["databases"]), str(a["databases"]), ""],
        ["roles on the server (`pg_authid`)", str(b["roles"]), str(a["roles"]), ""],
    ]
    shared_before, shared_after = b["shared_catalogs"], a["shared_catalogs"]
    catalogs = report.table(
        "Shared catalogs (`pg_total_relation_size`, kB): those that grew, and all of them",
        ["Catalog", "before", f"with {n:,}", "per tenant (bytes)"],
    )
    for name in sorted(shared_after):
        delta = shared_after[name] - shared_before.get(name, 0)
        if delta > 0:
            catalogs.rows.append(
                [f"`{name}`", _kb(shared_before.get(name, 0)), _kb(shared_after[name]), format_number(delta / grown)]
            )
    total_before, total_after = sum(shared_before.values()), sum(shared_after.values())
    catalogs.rows.append(
        [
            "all shared catalogs",
            _kb(total_before),
            _kb(total_after),
            format_number((total_after - total_before) / grown),
        ]
    )

    migrate = report.table(
        f"`tenantctl migrate-tenants --concurrency {ctx.settings.fleet_concurrency}` over {n:,} tenants",
        ["", "wall s", "per tenant ms"],
    )
    migrate.rows += [
        ["one-column migration", format_number(m.migrate_s), format_number(m.migrate_s * 1000 / n)],
        ["nothing to migrate", format_number(m.noop_s), format_number(m.noop_s * 1000 / n)],
        [
            f"drop of all {n:,} databases and roles (`DROP DATABASE … WITH (FORCE)`, one at a time)",
            format_number(m.drop_s),
            format_number(m.drop_s * 1000 / n),
        ],
    ]

    d = m.directory
    directory = report.table(f"The directory with {n:,} tenants (medians of {DIRECTORY_REPEATS})", ["", "ms", ""])
    directory.rows += [
        [
            "`GET /internal/v1/directory/?since=0` (HTTP, loopback)",
            format_number(median(d["fetch_ms"])),
            f"{_kb(d['bytes'])} kB, {d['tenants']:,} tenants "
            f"({format_number(d['bytes'] / max(1, d['tenants']))} bytes each)",
        ],
        ["gateway: decode and apply that answer", format_number(median(d["apply_ms"])), ""],
        [
            "gateway: `DirectorySync.sync_once(full=True)`",
            format_number(median(d["sync_ms"])),
            "fetch + decode + apply",
        ],
        ["tenant-service CPU per full fetch", format_number(m.ts_fetch_cpu_s * 1000), "from /proc"],
        [
            f"gateway start until `/_gateway/readyz` is 200 (median of {GATEWAY_STARTS}): 0 tenants",
            format_number(_ms(m.gw_empty["ready_s"])),
            f"RSS {format_number(m.gw_empty['rss_mb'])} MB",
        ],
        [
            f"gateway start until `/_gateway/readyz` is 200 (median of {GATEWAY_STARTS}): {n:,} tenants",
            format_number(_ms(m.gw_full["ready_s"])),
            f"RSS {format_number(m.gw_full['rss_mb'])} MB",
        ],
    ]
    memory = report.table("tenant-service memory (VmRSS)", ["", "MB"])
    memory.rows += [
        ["started, 0 tenants", format_number(m.rss["start"])],
        [f"idle after {n:,} creates", format_number(m.rss["created"])],
        [
            f"after {2 * DIRECTORY_REPEATS} full directory fetches and the gateway's starts",
            format_number(m.rss["directory"]),
        ],
    ]

    idle = report.table(
        f"PostgreSQL's CPU while idle (autovacuum_naptime {naptime}, autovacuum_max_workers "
        f"{server.get('autovacuum_max_workers')}), % of one core",
        [
            "Tenant databases",
            "databases with statistics: tenants / all",
            "all processes",
            "autovacuum workers",
            "autovacuum launcher",
            "other processes",
            "autovacuum workers started",
            "expected workers/s",
            "distinct databases visited",
            "CPU ms per worker",
        ],
    )
    naptime_s = setting_seconds(naptime) if naptime != "?" else 60.0
    labels = (
        "0",
        f"{n:,}, never connected to",
        f"{n:,}, each connected to once: 1st window",
        f"{n:,}, each connected to once: 2nd window",
    )
    worker_kinds = ("exited", "autovacuum worker")
    for label, result, stats in zip(labels, m.idle, m.with_stats, strict=True):
        workers_pct = result.core_percent(worker_kinds)
        launcher_pct = result.core_percent(["autovacuum launcher"])
        worker_cpu = sum(result.cpu.get(k, 0.0) for k in worker_kinds)
        idle.rows.append(
            [
                label,
                f"{stats[0]:,} / {stats[1]:,}",
                format_number(result.core_percent()),
                format_number(workers_pct),
                format_number(launcher_pct),
                format_number(result.core_percent() - workers_pct - launcher_pct),
                f"{result.workers:,} ({format_number(result.workers / result.seconds)}/s)",
                format_number(expected_worker_rate(stats[1], naptime_s)),
                f"{len(set(result.databases_visited)):,}",
                format_number(worker_cpu * 1000 / result.workers) if result.workers else "",
            ]
        )

    ratio = safe_ratio(last["rate"], first["rate"])
    report.data.update(
        {
            "tenants": n,
            "timed_creates": timed,
            "create_wall_s": m.created.wall,
            "first": first,
            "last": last,
            "all": whole,
            "blocks": per_block,
            "latencies_ms": [round(s.ms, 2) for s in sorted(m.created.spans, key=lambda s: s.end)],
            "sizes_before": m.before,
            "sizes_after": m.after,
            "du_before": m.du_before,
            "du_after": m.du_after,
            "directory": d,
            "tenant_service_cpu_per_full_fetch_s": m.ts_fetch_cpu_s,
            "gateway_empty": m.gw_empty,
            "gateway_full": m.gw_full,
            "tenant_service_rss_mb": m.rss,
            "idle": [r.to_dict() for r in m.idle],
            "databases_with_stats": [list(pair) for pair in m.with_stats],
            "bgwriter_before": w0,
            "bgwriter_after": w1,
            "tenant_database_parts": m.share,
            "migrate_tenants_s": m.migrate_s,
            "migrate_tenants_noop_s": m.noop_s,
            "drop_s": m.drop_s,
        }
    )
    report.targets.append(
        Target(
            "scale.last100_vs_first100",
            f"Provisioning rate of the last {size} of {n:,} tenants ÷ the first {size} (≥ 0.5: no halving)",
            ratio,
            ">=",
            RATE_RATIO_LIMIT,
            ratio=ratio,
            detail=f"{format_number(last['rate'])} ÷ {format_number(first['rate'])} tenants/s",
        )
    )


def _ms(seconds: float | None) -> float | None:
    return seconds * 1000 if seconds is not None else None
