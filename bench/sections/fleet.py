"""Section 4: ``tenantctl migrate-tenants`` over a fleet of tenant databases with a one-column migration, next to
a plain bash loop applying the same DDL with ``psql``."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Final

import asyncpg

from bench.context import BenchContext, SectionReport, say
from bench.platform import ROOT, START_TIMEOUT, Admin, run_async, tenant_service
from bench.results import Target, format_number, median, paired_ratio, safe_ratio
from bench.sections.common import in_installation
from tenant_service.provisioning.schema import DEFAULT_MIGRATIONS_DIR
from tenantry_devtools.platform import Installation, with_database

NAME = "fleet"
TITLE = "4. Fleet migration"
SUMMARY: Final = re.compile(r"schema head (\d+): (\d+) migrated, (\d+) already up to date, (\d+) failed")


def run(ctx: BenchContext) -> dict[str, Any]:
    """Provision the fleet, then alternate psql loops and migrate-tenants runs."""
    report = SectionReport(ctx, NAME, TITLE)
    settings = ctx.settings
    report.settings = {
        "tenants": settings.fleet_size,
        "migrate_tenants_concurrency": settings.fleet_concurrency,
        "runs": settings.runs,
    }
    return in_installation(ctx, report, "fleet", partial(_run, ctx, report))


def psql_loop_command(db_list: Path, port: int, ddl: str) -> list[str]:
    """``bash -c 'while read db; do psql ... -c DDL; done < list'``: one psql process per database, in series."""
    psql = shutil.which("psql") or "psql"
    line = (
        f"while read -r db; do {shlex.quote(psql)} -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p {port} -U postgres "
        f'-d "$db" -c {shlex.quote(ddl)} || exit 1; done < {shlex.quote(str(db_list))}'
    )
    return ["bash", "-c", line]


def _run(ctx: BenchContext, report: SectionReport, inst: Installation) -> None:
    settings = ctx.settings
    schema = ctx.root / "fleet-schema"
    shutil.copytree(DEFAULT_MIGRATIONS_DIR, schema, ignore=shutil.ignore_patterns("__pycache__"))
    extra = {"TENANT_MIGRATIONS_DIR": str(schema)}
    service = ctx.registry.add(tenant_service(inst, ctx.logs / NAME, **extra)).start(timeout=START_TIMEOUT)
    admin = Admin(service.url, inst.admin_token)
    say(f"fleet: provisioning {settings.fleet_size} tenants")
    wall, errors = admin.create_many([f"f-{i:04d}" for i in range(settings.fleet_size)], 8, plan=None)
    admin.close()
    ctx.registry.stop(service)
    if errors:
        raise RuntimeError(f"{len(errors)} tenants could not be created, e.g. {errors[0]}")
    say(f"fleet: {settings.fleet_size} tenants in {wall:.1f} s")
    databases = run_async(_databases(inst))
    db_list = ctx.root / "fleet-databases.txt"
    db_list.write_text("\n".join(databases) + "\n")
    port = ctx.backends.postgres.port
    migrate_argv = [
        sys.executable,
        "-m",
        "tenant_service",
        "migrate-tenants",
        "--concurrency",
        str(settings.fleet_concurrency),
    ]

    # Warm-up and fixed cost: a run with nothing to migrate (Python start-up, imports, template check, registry read).
    noop = timed_migrate(inst, migrate_argv, extra)
    report.data["noop_migrate_tenants_s"] = noop[0]

    psql_walls: list[float] = []
    migrate_walls: list[float] = []
    for run_no in range(1, settings.runs + 1):
        version = 2 + run_no
        migration = schema / f"{version:04d}_bench_col_{run_no}.sql"
        ddl_migrate = f"ALTER TABLE notes ADD COLUMN bench_col_{run_no} text"
        ddl_psql = f"ALTER TABLE notes ADD COLUMN psql_col_{run_no} text"
        loop_argv = psql_loop_command(db_list, port, ddl_psql)
        report.command(shlex.join(loop_argv))
        report.command(
            f"TENANT_MIGRATIONS_DIR=<copy of the schema + {migration.name}> "
            + shlex.join(["python", "-m", "tenant_service", *migrate_argv[3:]])
        )

        migration.write_text(f"-- make bench, run {run_no}\n{ddl_migrate};\n")
        if run_no % 2:
            psql_walls.append(_psql_run(loop_argv))
            migrate_walls.append(migrate_run(inst, migrate_argv, extra, version, len(databases)))
        else:
            migrate_walls.append(migrate_run(inst, migrate_argv, extra, version, len(databases)))
            psql_walls.append(_psql_run(loop_argv))
        say(f"fleet run {run_no}: psql loop {psql_walls[-1]:.2f} s, migrate-tenants {migrate_walls[-1]:.2f} s")
    run_async(_check_columns(inst, databases[-1], settings.runs))

    psql_med, migrate_med = median(psql_walls), median(migrate_walls)
    report.method = [
        f"{settings.fleet_size} tenants provisioned through the admin API (8 at once), so each has its own "
        "database and role with the packaged schema (version 2, table `notes`).",
        "Each run adds one column to `notes` in every tenant database, both ways: a new migration file "
        "`000N_bench_col_<run>.sql` (`ALTER TABLE notes ADD COLUMN bench_col_<run> text;`) in a copy of the "
        "schema directory, applied by `tenantctl migrate-tenants` (`TENANT_MIGRATIONS_DIR` points at the copy; "
        "each tenant in its own transaction, as its own role, version recorded in the tenant database and the "
        "registry), and the same DDL on another column name applied by a bash loop running one `psql` per "
        "database (as the superuser, serially, no version bookkeeping).",
        "The wall time of `migrate-tenants` includes the Python process start-up and the template migration; a "
        f"run with nothing to migrate took {noop[0]:.2f} s (bytecode cache warm, as in a deployed image).",
        "The order of the two alternates between runs; medians over runs.",
    ]
    table = report.table(
        f"{settings.fleet_size} tenant databases, one-column migration (medians over runs)",
        ["", "wall s", "per tenant ms", "÷ psql loop"],
    )
    per = settings.fleet_size
    table.rows += [
        [
            f"tenantctl migrate-tenants --concurrency {settings.fleet_concurrency}",
            format_number(migrate_med),
            format_number(migrate_med * 1000 / per),
            format_number(safe_ratio(migrate_med, psql_med)),
        ],
        ["bash loop, one psql per database", format_number(psql_med), format_number(psql_med * 1000 / per), "1"],
        ["tenantctl migrate-tenants with nothing to migrate", format_number(noop[0]), "", ""],
    ]
    report.data.update({"psql_walls_s": psql_walls, "migrate_walls_s": migrate_walls, "databases": len(databases)})
    fleet_ratio, fleet_runs = paired_ratio(migrate_walls, psql_walls)
    report.targets.append(
        Target(
            "fleet.migrate_vs_psql",
            f"migrate-tenants over {settings.fleet_size} tenants ÷ psql loop (concurrency "
            f"{settings.fleet_concurrency})",
            fleet_ratio,
            "<=",
            1.5,
            detail=f"{fleet_runs}; medians {format_number(migrate_med)} s ÷ {format_number(psql_med)} s",
        )
    )


def _psql_run(argv: list[str]) -> float:
    """Run the psql loop; return its wall seconds."""
    started = time.perf_counter()
    done = subprocess.run(  # noqa: S603 - argv built by psql_loop_command
        argv, capture_output=True, text=True, timeout=3600, check=False, env=_psql_env()
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"psql loop failed: {done.stderr[-1000:]}")
    return wall


def migrate_run(inst: Installation, argv: list[str], extra: dict[str, str], version: int, tenants: int) -> float:
    """Run migrate-tenants; check it brought every tenant to ``version``; return its wall seconds."""
    wall, stdout = timed_migrate(inst, argv, extra)
    match = SUMMARY.search(stdout)
    if match is None or int(match.group(1)) != version or int(match.group(2)) != tenants:
        raise RuntimeError(f"migrate-tenants did not migrate every tenant: {stdout[-500:]}")
    if int(match.group(4)):
        raise RuntimeError(f"migrate-tenants failed for some tenants: {stdout[-1000:]}")
    return wall


def _psql_env() -> dict[str, str]:
    return {**os.environ, "PGCONNECT_TIMEOUT": "10"}


def timed_migrate(inst: Installation, argv: list[str], extra: dict[str, str]) -> tuple[float, str]:
    """Run migrate-tenants (``argv``) on ``inst`` with ``extra`` settings; return its wall seconds and stdout."""
    started = time.perf_counter()
    done = subprocess.run(  # noqa: S603 - argv built by the caller
        argv,
        env={**os.environ, **inst.env(**extra)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"migrate-tenants exited {done.returncode}: {done.stdout[-500:]} {done.stderr[-1500:]}")
    return wall, done.stdout


async def _databases(inst: Installation) -> list[str]:
    conn = await asyncpg.connect(inst.database_url, timeout=10)
    try:
        rows = await conn.fetch("SELECT db_name FROM tenants WHERE status = 'active' ORDER BY created_at")
    finally:
        await conn.close(timeout=5)
    return [r["db_name"] for r in rows]


async def _check_columns(inst: Installation, database: str, runs: int) -> None:
    """The last tenant database has every column both ways added."""
    conn = await asyncpg.connect(with_database(inst.pg_url, database), timeout=10)
    try:
        columns = {
            r["column_name"]
            for r in await conn.fetch("SELECT column_name FROM information_schema.columns WHERE table_name = 'notes'")
        }
    finally:
        await conn.close(timeout=5)
    wanted = {f"bench_col_{i}" for i in range(1, runs + 1)} | {f"psql_col_{i}" for i in range(1, runs + 1)}
    if not wanted <= columns:
        raise RuntimeError(f"{database} lacks columns {sorted(wanted - columns)}")
