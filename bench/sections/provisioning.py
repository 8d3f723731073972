"""Section 3: ``POST /admin/tenants`` (synchronous) next to a raw ``CREATE DATABASE ... TEMPLATE ... STRATEGY
WAL_LOG`` of the same template on the same server, one at a time and 8 at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import asyncpg

from bench.context import BenchContext, SectionReport, say
from bench.platform import START_TIMEOUT, Admin, count_in_file, file_size, tenant_service
from bench.procs import TreeCpuMeter
from bench.results import Target, format_number, median, paired_ratio, percentile, safe_ratio
from bench.sections.common import in_installation
from tenantry_devtools.platform import Installation

NAME = "provisioning"
TITLE = "3. Provisioning"
#: How a clone that collides with another session on the template shows up.
BUSY_MARKERS: Final = ("is being accessed by other users", "template_in_use", "template busy")


def run(ctx: BenchContext) -> dict[str, Any]:
    """Sequential and parallel creates, API and raw, interleaved per run."""
    report = SectionReport(ctx, NAME, TITLE)
    settings = ctx.settings
    report.settings = {
        "runs": settings.runs,
        "sequential_per_run": settings.prov_sequential,
        "parallel_workers": settings.prov_workers,
        "parallel_per_run": settings.prov_parallel_total,
    }

    def body(inst: Installation) -> None:
        with asyncio.Runner() as runner:
            _run(ctx, report, inst, runner)

    return in_installation(ctx, report, "prov", body)


class Raw:
    """Raw CREATE DATABASE from the installation's template, on connections opened beforehand."""

    def __init__(self, inst: Installation) -> None:
        self.inst = inst
        self.busy_errors = 0
        self.other_errors: list[str] = []
        self.created: list[str] = []

    def statement(self, name: str) -> str:
        """The exact statement."""
        return f'CREATE DATABASE "{name}" TEMPLATE "{self.inst.template}" STRATEGY WAL_LOG'

    async def connect(self) -> Any:
        """A superuser connection to the maintenance database."""
        return await asyncpg.connect(self.inst.pg_url, timeout=10)

    async def create(self, conn: Any, name: str) -> float:
        """Create one database; return the seconds the statement took (errors are counted, not raised)."""
        started = time.perf_counter()
        try:
            await conn.execute(self.statement(name), timeout=120)
        except asyncpg.ObjectInUseError:
            self.busy_errors += 1
        except asyncpg.PostgresError as exc:
            self.other_errors.append(f"{type(exc).__name__}: {exc}")
        else:
            self.created.append(name)
        return time.perf_counter() - started

    async def parallel(self, names: list[str], workers: int) -> float:
        """Create ``names`` with ``workers`` connections at once; return the wall seconds."""
        conns = [await self.connect() for _ in range(workers)]
        queue = list(names)
        try:
            started = time.perf_counter()

            async def worker(conn: Any) -> None:
                while queue:
                    await self.create(conn, queue.pop())

            await asyncio.gather(*(worker(c) for c in conns))
            return time.perf_counter() - started
        finally:
            for conn in conns:
                await conn.close(timeout=5)

    async def drop_created(self) -> None:
        """Drop what was created so far."""
        conn = await self.connect()
        try:
            for name in self.created:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', timeout=120)
        finally:
            await conn.close(timeout=5)
        self.created.clear()


class Phases:
    """The timed phases of one run, with the CPU they cost PostgreSQL and the tenant-service."""

    def __init__(
        self, admin: Admin, raw: Raw, runner: asyncio.Runner, pg_cpu: TreeCpuMeter, ts_cpu: TreeCpuMeter
    ) -> None:
        self.admin = admin
        self.raw = raw
        self.runner = runner
        self.pg_cpu = pg_cpu
        self.ts_cpu = ts_cpu
        self.errors: list[str] = []

    def api_one(self, slug: str) -> float:
        """One synchronous create; milliseconds."""
        started = time.perf_counter()
        try:
            self.admin.create_tenant(slug, plan=None)
        except RuntimeError as exc:
            self.errors.append(str(exc))
        return (time.perf_counter() - started) * 1000

    def api_parallel(self, slugs: list[str], workers: int) -> dict[str, float]:
        """``slugs`` created by ``workers`` threads: wall seconds and CPU seconds."""
        self.pg_cpu.start()
        self.ts_cpu.start()
        wall, errors = self.admin.create_many(slugs, workers, plan=None)
        self.errors += errors
        return {"wall": wall, "pg_cpu": self.pg_cpu.stop(), "ts_cpu": self.ts_cpu.stop()}

    def raw_parallel(self, names: list[str], workers: int) -> dict[str, float]:
        """``names`` created on ``workers`` connections: wall seconds and PostgreSQL CPU seconds."""
        self.pg_cpu.start()
        wall: float = self.runner.run(self.raw.parallel(names, workers))
        return {"wall": wall, "pg_cpu": self.pg_cpu.stop()}


def _run(ctx: BenchContext, report: SectionReport, inst: Installation, runner: asyncio.Runner) -> None:
    settings = ctx.settings
    service = ctx.registry.add(tenant_service(inst, ctx.logs / NAME)).start(timeout=START_TIMEOUT)
    admin = Admin(service.url, inst.admin_token)
    raw = Raw(inst)
    report.method = [
        "The tenant-service runs as a real process (not pinned) on the benchmark's PostgreSQL; the client is "
        "this harness (httpx, keep-alive). A synchronous `POST /admin/tenants` answers 201 once the tenant's "
        "role and database exist and it is active (contract §3: without `Prefer: respond-async`).",
        "Raw baseline: the same template cloned with the statement below on a superuser asyncpg connection opened "
        "beforehand (the time of the statement alone: the physical floor of a clone). Raw databases are dropped "
        "after each run.",
        f"One at a time: {settings.prov_sequential} API creates and {settings.prov_sequential} raw creates per run, "
        f"alternating. {settings.prov_workers} at once: {settings.prov_workers} workers create "
        f"{settings.prov_parallel_total} tenants (threads, one HTTP client each) vs {settings.prov_workers} "
        f"connections creating {settings.prov_parallel_total} databases; the order of API and raw alternates "
        "between runs. Medians over runs.",
        "“Source database is being accessed by other users” errors are counted in the PostgreSQL server log "
        "(every session), the tenant-service log (its retries) and the raw creates.",
    ]
    report.command(raw.statement("<name>") + ";  -- on an open connection (asyncpg), timed per statement")
    report.command(
        "curl -X POST http://127.0.0.1:<port>/admin/tenants -H 'Authorization: Bearer <admin token>' "
        '-H \'Content-Type: application/json\' -d \'{"slug": "<slug>", "name": "<slug>"}\''
    )
    pg_offset, ts_offset = file_size(ctx.backends.pg_log), file_size(service.log_path)

    # Warm-up: the first create of a process pays for imports, pools and the template's pages in cache.
    admin.create_tenant("warm-a", plan=None)
    conn = runner.run(raw.connect())
    runner.run(raw.create(conn, f"{inst.prefix}raw_warm"))

    phases = Phases(admin, raw, runner, TreeCpuMeter(ctx.backends.postgres_pid()), TreeCpuMeter(service.pid))
    total, workers = settings.prov_parallel_total, settings.prov_workers
    per_run: list[dict[str, Any]] = []
    for run_no in range(1, settings.runs + 1):
        api_ms: list[float] = []
        raw_ms: list[float] = []
        for i in range(settings.prov_sequential):
            api_ms.append(phases.api_one(f"p{run_no}-s{i:03d}"))
            raw_ms.append(runner.run(raw.create(conn, f"{inst.prefix}raw_{run_no}_s{i:03d}")) * 1000)
        names = [f"{inst.prefix}raw_{run_no}_c{i:03d}" for i in range(total)]
        slugs = [f"p{run_no}-c{i:03d}" for i in range(total)]
        if run_no % 2:
            api, rawp = phases.api_parallel(slugs, workers), phases.raw_parallel(names, workers)
        else:
            rawp, api = phases.raw_parallel(names, workers), phases.api_parallel(slugs, workers)
        result = {
            "api_ms": api_ms,
            "raw_ms": raw_ms,
            "api_p50_ms": percentile(api_ms, 50),
            "api_p95_ms": percentile(api_ms, 95),
            "raw_p50_ms": percentile(raw_ms, 50),
            "raw_p95_ms": percentile(raw_ms, 95),
            "api_parallel_s": api["wall"],
            "raw_parallel_s": rawp["wall"],
            "api_rate": total / api["wall"],
            "raw_rate": total / rawp["wall"],
            "api_pg_ms": api["pg_cpu"] * 1000 / total,
            "api_ts_ms": api["ts_cpu"] * 1000 / total,
            "raw_pg_ms": rawp["pg_cpu"] * 1000 / total,
        }
        per_run.append(result)
        say(
            f"provisioning run {run_no}: one at a time p50 API {result['api_p50_ms']:.0f} ms, raw "
            f"{result['raw_p50_ms']:.0f} ms; {workers} at once API {result['api_rate']:.1f}/s, raw "
            f"{result['raw_rate']:.1f}/s"
        )
        runner.run(raw.drop_created())
    api_errors = phases.errors
    runner.run(conn.close(timeout=5))
    admin.close()

    busy_pg = count_in_file(ctx.backends.pg_log, BUSY_MARKERS[:1], pg_offset)
    busy_ts = count_in_file(service.log_path, BUSY_MARKERS, ts_offset)
    for error in api_errors[:5]:
        report.error(f"API create failed: {error}")
    for error in raw.other_errors[:5]:
        report.error(f"raw create failed: {error}")
    med = {key: median([r[key] for r in per_run]) for key, value in per_run[0].items() if isinstance(value, float)}
    table = report.table(
        "One at a time (ms; medians over runs of each run's percentile)", ["", "p50 ms", "p95 ms", "API ÷ raw (p50)"]
    )
    table.rows += [
        [
            "POST /admin/tenants (sync)",
            format_number(med["api_p50_ms"]),
            format_number(med["api_p95_ms"]),
            format_number(safe_ratio(med["api_p50_ms"], med["raw_p50_ms"])),
        ],
        [
            "raw CREATE DATABASE … STRATEGY WAL_LOG",
            format_number(med["raw_p50_ms"]),
            format_number(med["raw_p95_ms"]),
            "1",
        ],
    ]
    par = report.table(
        f"{settings.prov_workers} at once ({settings.prov_parallel_total} per run; medians over runs). CPU per "
        f"tenant: PostgreSQL (postmaster and every backend) and the tenant-service process, from /proc",
        ["", "tenants/s", "wall s", "API ÷ raw", "PostgreSQL CPU ms/tenant", "tenant-service CPU ms/tenant"],
    )
    par.rows += [
        [
            "POST /admin/tenants (sync)",
            format_number(med["api_rate"]),
            format_number(med["api_parallel_s"]),
            format_number(safe_ratio(med["api_rate"], med["raw_rate"])),
            format_number(med["api_pg_ms"]),
            format_number(med["api_ts_ms"]),
        ],
        [
            "raw CREATE DATABASE",
            format_number(med["raw_rate"]),
            format_number(med["raw_parallel_s"]),
            "1",
            format_number(med["raw_pg_ms"]),
            "-",
        ],
    ]
    errs = report.table("“Source database is being accessed by other users”", ["Where", "count"])
    errs.rows += [
        ["PostgreSQL server log (all sessions)", str(busy_pg)],
        ["tenant-service log (retries / failures)", str(busy_ts)],
        ["raw creates", str(raw.busy_errors)],
    ]
    report.data = {
        "runs": per_run,
        "medians": med,
        "busy_errors": {"postgres_log": busy_pg, "tenant_service_log": busy_ts, "raw": raw.busy_errors},
        "api_errors": api_errors,
        "raw_errors": raw.other_errors,
    }
    limit = 1.5 * med["raw_p50_ms"] + 50
    parallel, parallel_runs = paired_ratio([r["api_rate"] for r in per_run], [r["raw_rate"] for r in per_run])
    report.targets += [
        Target(
            "provisioning.p50",
            "Provisioning p50, one at a time (≤ 1.5 x raw p50 + 50 ms)",
            med["api_p50_ms"],
            "<=",
            round(limit, 1),
            unit="ms",
            ratio=safe_ratio(med["api_p50_ms"], med["raw_p50_ms"]),
            detail=f"raw p50 {format_number(med['raw_p50_ms'])} ms",
        ),
        Target(
            "provisioning.parallel",
            f"{settings.prov_workers} at once: API tenants/s ÷ raw databases/s",
            parallel,
            ">=",
            0.8,
            detail=(
                f"{parallel_runs}; medians {format_number(med['api_rate'])} ÷ {format_number(med['raw_rate'])} per s"
            ),
        ),
        Target(
            "provisioning.busy_errors",
            "“Source database is being accessed by other users” errors",
            float(busy_pg + busy_ts + raw.busy_errors),
            "==",
            0.0,
        ),
    ]
