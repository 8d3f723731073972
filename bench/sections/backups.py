"""Section 6: a tenant's backup next to a raw ``pg_dump -Fc`` of the same database, a clone (the platform's restore
into a new database) next to a raw ``pg_restore`` of the same archive, and the request hold at the cutover of an
in-place restore, seen by clients sending requests through the gateway all along."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import asyncpg
import httpx

from bench.context import BenchContext, SectionReport, say
from bench.cutover import (
    HistogramDelta,
    HoldSpan,
    Timed,
    elapsed_seconds,
    failed,
    histogram_delta,
    overlapping,
    parse_hold_log,
    parse_prometheus,
)
from bench.platform import BENCH_GATEWAY_SETTINGS, START_TIMEOUT, Admin, file_size, run_async
from bench.results import Target, format_number, median, paired_ratio, percentile
from bench.sections.common import in_installation, run_order
from tenantry_devtools.platform import Installation, Platform, Tenant, with_database
from tenantry_devtools.processes import wait_until

NAME = "backups"
TITLE = "6. Backups and restores"
SLUG = "bk-main"
TABLE = "bench_rows"
#: How often the harness asks for an operation's state.
POLL_SECONDS: Final = 0.05
#: The tenant-service looks for queued operations this often besides being woken by the request (docs/backups.md).
OPERATION_POLL_SECONDS: Final = "0.2"
#: Each load client's pause between an answer and its next request.
LOAD_PAUSE_SECONDS: Final = 0.005
#: Seconds of load before each in-place restore (the latency without one) and after it.
QUIET_SECONDS: Final = 1.0
NOTES: Final = 20
MB: Final = 1_000_000
FINISHED: Final = frozenset({"succeeded", "failed", "cancelled"})
CREATE_TABLE: Final = (
    f"CREATE TABLE {TABLE} (id bigserial PRIMARY KEY, payload text NOT NULL, n int NOT NULL, "
    "created timestamptz NOT NULL)"
)
#: About 175 bytes per row on disk; hex text compresses to about half with pg_dump's zlib, like much real data.
INSERT_ROWS: Final = (
    "INSERT INTO bench_rows (payload, n, created) "
    "SELECT md5(random()::text) || ' ' || md5(random()::text) || ' ' || md5(g::text) || ' ' "
    "|| left(md5(random()::text), 1 + (g % 32)::int), (random() * 1000000)::int, "
    "now() - random() * interval '365 days' FROM generate_series($1::bigint, $2::bigint) AS g"
)
FIRST_BATCH: Final = 50_000
MAX_BATCH: Final = 250_000


def run(ctx: BenchContext) -> dict[str, Any]:
    """Fill one tenant, then alternate raw and platform backups, raw restores and clones, and in-place restores
    under load."""
    report = SectionReport(ctx, NAME, TITLE)
    settings = ctx.settings
    report.settings = {"data_mb": settings.backup_mb, "runs": settings.runs, "hold_clients": settings.hold_clients}
    return in_installation(ctx, report, "backups", partial(_run, ctx, report))


# --------------------------------------------------------------------------- operations through the admin API


@dataclass
class OperationRun:
    """An operation the harness requested and followed to its end."""

    accepted: dict[str, Any]
    """The ``202`` body (a clone's carries the new tenant and its key)."""
    final: dict[str, Any]
    """The operation once it had succeeded."""
    wall_s: float
    """From sending the request to seeing the operation succeeded (polled every :data:`POLL_SECONDS`)."""
    steps: list[tuple[float, str]]
    """Each progress step when first seen, with the seconds since the request."""

    def step_seconds(self) -> dict[str, float]:
        """Seconds spent in each progress step, as far as polling saw them (each step until the next is seen, the
        last until the operation was seen finished)."""
        ends = [t for t, _ in self.steps[1:]] + [self.wall_s]
        spent: dict[str, float] = {}
        for (start, step), end in zip(self.steps, ends, strict=True):
            spent[step] = spent.get(step, 0.0) + end - start
        return spent

    @property
    def work_s(self) -> float:
        """The operation's own ``started_at`` → ``finished_at``."""
        return elapsed_seconds(self.final["started_at"], self.final["finished_at"])

    @property
    def id(self) -> str:
        """The operation's id."""
        return str(self.final["id"])

    @property
    def result(self) -> dict[str, Any]:
        """The operation's ``result``."""
        value: dict[str, Any] = self.final.get("result") or {}
        return value


class OperationFailedError(RuntimeError):
    """An operation the harness followed finished other than succeeded."""

    def __init__(self, message: str, operation: dict[str, Any]) -> None:
        super().__init__(message)
        self.operation = operation
        """The operation as last seen."""


def run_operation(
    http: httpx.Client, path: str, body: dict[str, Any], timeout: float = 3600.0, poll: float = POLL_SECONDS
) -> OperationRun:
    """``POST path`` (answered ``202`` with an operation), then ``GET /admin/operations/{id}`` every ``poll``
    seconds until it finished.

    Raises:
        OperationFailedError: it finished other than succeeded.
        RuntimeError: not accepted, or not finished in time.
    """
    started = time.perf_counter()
    response = http.post(path, json=body)
    if response.status_code != 202:
        raise RuntimeError(f"POST {path}: {response.status_code} {response.text[:500]}")
    accepted: dict[str, Any] = response.json()
    op_id = accepted["id"]
    steps: list[tuple[float, str]] = []
    while True:
        polled = http.get(f"/admin/operations/{op_id}")
        if polled.status_code != 200:
            raise RuntimeError(f"GET /admin/operations/{op_id}: {polled.status_code} {polled.text[:300]}")
        final: dict[str, Any] = polled.json()
        if final["state"] in FINISHED:
            break
        step = (final.get("progress") or {}).get("step") or final["state"]
        if not steps or steps[-1][1] != step:
            steps.append((time.perf_counter() - started, str(step)))
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"POST {path}: operation {op_id} still {final['state']} after {timeout:.0f} s")
        time.sleep(poll)
    wall = time.perf_counter() - started
    if final["state"] != "succeeded":
        raise OperationFailedError(f"POST {path}: operation {op_id} {final['state']}: {final.get('error')}", final)
    return OperationRun(accepted, final, wall, steps)


def _get(http: httpx.Client, path: str) -> dict[str, Any]:
    response = http.get(path)
    if response.status_code != 200:
        raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
    body: dict[str, Any] = response.json()
    return body


# --------------------------------------------------------------------------- raw tools and the database


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed (the PostgreSQL client)")
    return found


def pg_dump_argv(port: int, user: str, database: str) -> list[str]:
    """The raw backup: a custom-format dump of the database, thrown away."""
    return [
        _tool("pg_dump"), "-Fc", "--no-password", "-h", "127.0.0.1", "-p", str(port), "-U", user, "-d", database,
        "-f", "/dev/null", "--no-sync",
    ]  # fmt: skip


def pg_restore_argv(port: int, user: str, database: str, archive: Path) -> list[str]:
    """The raw restore of an archive into an empty database (one job, as the platform's)."""
    return [
        _tool("pg_restore"), "--no-owner", "--no-privileges", "--no-password", "-h", "127.0.0.1", "-p", str(port),
        "-U", user, "-d", database, str(archive),
    ]  # fmt: skip


def _timed(argv: list[str]) -> float:
    """Run a tool; its wall seconds.

    Raises:
        RuntimeError: it failed.
    """
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3600, check=False)  # noqa: S603 - built here
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} exited {done.returncode}: {done.stderr[-1500:]}")
    return wall


async def _fill(url: str, target_bytes: int) -> dict[str, Any]:
    """Create and fill :data:`TABLE` as the database's owner (the tenant's role, so that its own ``pg_dump`` reads
    it) until the database holds ``target_bytes``; vacuum and analyse it; its sizes."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        role = await conn.fetchval("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()")
        await conn.execute(f'SET ROLE "{role}"')
        await conn.execute(CREATE_TABLE)
        size_sql = "SELECT pg_database_size(current_database())"
        base = int(await conn.fetchval(size_sql))
        rows, batch = 0, FIRST_BATCH
        while True:
            await conn.execute(INSERT_ROWS, rows + 1, rows + batch, timeout=1800)
            rows += batch
            size = int(await conn.fetchval(size_sql))
            if size >= target_bytes:
                break
            per_row = max(1.0, (size - base) / rows)
            batch = max(1000, min(MAX_BATCH, int((target_bytes - size) / per_row) + 1))
        await conn.execute("RESET ROLE")
        await conn.execute(f"VACUUM (ANALYZE) {TABLE}", timeout=1800)
        await conn.execute("CHECKPOINT", timeout=600)
        return {
            "role": role,
            "rows": rows,
            "table_bytes": int(await conn.fetchval(f"SELECT pg_total_relation_size('{TABLE}')")),
            "database_bytes": int(await conn.fetchval(size_sql)),
        }
    finally:
        await conn.close(timeout=5)


async def _recreate(pg_url: str, database: str) -> None:
    conn = await asyncpg.connect(pg_url, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)', timeout=600)
        await conn.execute(f'CREATE DATABASE "{database}" TEMPLATE template0', timeout=600)
    finally:
        await conn.close(timeout=5)


async def _drop(pg_url: str, database: str) -> None:
    conn = await asyncpg.connect(pg_url, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)', timeout=600)
    finally:
        await conn.close(timeout=5)


async def _contents(url: str) -> tuple[int, int]:
    """Rows of :data:`TABLE` and the database's size."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        rows = int(await conn.fetchval(f"SELECT count(*) FROM {TABLE}", timeout=600))  # noqa: S608
        return rows, int(await conn.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await conn.close(timeout=5)


# --------------------------------------------------------------------------- clients through the gateway


class Load:
    """``clients`` threads sending ``GET /notes`` of one tenant through the gateway, each on its own keep-alive
    connection, one request after another (with :data:`LOAD_PAUSE_SECONDS` between), every one timed."""

    def __init__(self, gateway_url: str, key: str, clients: int) -> None:
        self._url = gateway_url
        self._key = key
        self._stop = threading.Event()
        self.requests: list[Timed] = []
        self._threads = [threading.Thread(target=self._work, name=f"load-{i}", daemon=True) for i in range(clients)]

    def _work(self) -> None:
        with httpx.Client(base_url=self._url, headers={"X-API-Key": self._key}, timeout=60) as http:
            while not self._stop.is_set():
                sent, started = time.time(), time.perf_counter()
                try:
                    status = http.get("/notes", params={"limit": NOTES}).status_code
                except httpx.HTTPError:
                    status = 0
                self.requests.append(Timed(sent, (time.perf_counter() - started) * 1000, status))
                self._stop.wait(LOAD_PAUSE_SECONDS)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)


def _scrape(gateway_url: str) -> dict[str, float]:
    response = httpx.get(gateway_url + "/_gateway/metrics", timeout=10)
    response.raise_for_status()
    return parse_prometheus(response.text)


@dataclass
class Cutover:
    """One in-place restore under load."""

    op: OperationRun
    hold: HoldSpan | None
    baseline: list[Timed]
    during: list[Timed]
    held: list[Timed]
    waits: HistogramDelta
    pre_restore_s: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "operation_id": self.op.id,
            "wall_s": self.op.wall_s,
            "work_s": self.op.work_s,
            "pre_restore_backup_s": self.pre_restore_s,
            "hold_s": self.hold.seconds if self.hold else None,
            "hold_drained_s": self.hold.drained_s if self.hold else None,
            "baseline_p50_ms": percentile([r.ms for r in self.baseline], 50) if self.baseline else None,
            "requests_during": len(self.during),
            "max_ms_during": max((r.ms for r in self.during), default=None),
            "failed_during": [[r.sent, r.ms, r.status] for r in failed(self.during)],
            "held_requests": len(self.held),
            "held_ms": [round(r.ms, 3) for r in self.held],
            "gateway_held": self.waits.count,
            "gateway_wait_sum_s": self.waits.sum,
            "gateway_wait_buckets": self.waits.buckets,
        }


# --------------------------------------------------------------------------- the section


def _run(ctx: BenchContext, report: SectionReport, inst: Installation) -> None:
    platform = Platform.launch(
        inst,
        ctx.logs / NAME,
        service_env={"OPERATION_POLL_SECONDS": OPERATION_POLL_SECONDS},
        gateway_env=BENCH_GATEWAY_SETTINGS,
        timeout=START_TIMEOUT,
    )
    for process in platform.processes:
        ctx.registry.add(process)
    admin = Admin(platform.service.url, inst.admin_token)
    admin.put_plan()
    tenant = admin.create_tenant(SLUG)
    admin.close()
    http = admin.client()
    try:
        _measure(ctx, report, inst, platform, tenant, http)
    finally:
        http.close()


def _measure(
    ctx: BenchContext, report: SectionReport, inst: Installation, platform: Platform, tenant: Tenant, http: httpx.Client
) -> None:
    settings = ctx.settings
    service, gw = platform.service, platform.gateway
    pg_url = ctx.backends.pg_url
    port = ctx.backends.postgres.port
    superuser = urlsplit(pg_url).username or "postgres"
    tenant_url = with_database(pg_url, tenant.database)

    # The tenant's data: a few notes through the app (what the load reads), then the bulk as its own role.
    key_header = {"X-API-Key": tenant.key}
    wait_until(lambda: httpx.get(gw.url + "/notes", headers=key_header, timeout=5).status_code == 200, 60, "GET /notes")
    for i in range(NOTES):
        created = httpx.post(gw.url + "/notes", headers=key_header, json={"body": f"note {i}"}, timeout=30)
        if created.status_code != 201:
            raise RuntimeError(f"POST /notes: {created.status_code} {created.text[:300]}")
    say(f"backups: filling {tenant.database} with ~{settings.backup_mb} MB")
    fill_started = time.perf_counter()
    data = run_async(_fill(tenant_url, settings.backup_mb * MB))
    say(
        f"backups: {data['rows']:,} rows, database {data['database_bytes'] / MB:.1f} MB, table "
        f"{data['table_bytes'] / MB:.1f} MB in {time.perf_counter() - fill_started:.0f} s"
    )
    db_bytes: int = data["database_bytes"]
    report.data["data"] = data

    # ---- backups: raw pg_dump -Fc to /dev/null vs POST .../backups, alternating
    dump_argv = pg_dump_argv(port, superuser, tenant.database)
    report.command(shlex.join(dump_argv) + "   # timed (wall)")
    report.command(
        f"curl -X POST http://127.0.0.1:<port>/admin/tenants/{SLUG}/backups -H 'Authorization: Bearer <admin token>' "
        "-H 'Content-Type: application/json' -d '{\"note\": \"bench run <run>\"}'   # 202, then:"
    )
    report.command(
        "curl http://127.0.0.1:<port>/admin/operations/<id> -H 'Authorization: Bearer <admin token>'   "
        f"# every {int(POLL_SECONDS * 1000)} ms until succeeded; started_at → finished_at"
    )
    _timed(dump_argv)  # warm-up: the table's pages in the server's cache, the tool's in the OS's
    raw_dump: list[float] = []
    backup_runs: list[OperationRun] = []
    backups: list[dict[str, Any]] = []
    for run_no in range(1, settings.runs + 1):
        for side in run_order(["raw", "platform"], run_no):
            if side == "raw":
                raw_dump.append(_timed(dump_argv))
            else:
                op = run_operation(http, f"/admin/tenants/{SLUG}/backups", {"note": f"bench run {run_no}"})
                backup_runs.append(op)
                backups.append(_get(http, f"/admin/tenants/{SLUG}/backups/{op.result['backup_id']}"))
        say(
            f"backups run {run_no}: pg_dump {db_bytes / MB / raw_dump[-1]:.1f} MB/s, platform backup "
            f"{db_bytes / MB / backup_runs[-1].work_s:.1f} MB/s (request → succeeded "
            f"{db_bytes / MB / backup_runs[-1].wall_s:.1f} MB/s)"
        )
    source = backups[0]
    archive_bytes = int(source["size_bytes"])

    # ---- the archive, downloaded once (what pg_restore reads)
    archive = ctx.root / "backups" / "bench.dump"
    archive.parent.mkdir(parents=True, exist_ok=True)
    download_path = f"/admin/tenants/{SLUG}/backups/{source['id']}/download"
    started = time.perf_counter()
    with http.stream("GET", download_path) as response, archive.open("wb") as fh:
        if response.status_code != 200:
            raise RuntimeError(f"GET {download_path}: {response.status_code}")
        for chunk in response.iter_bytes(1 << 20):
            fh.write(chunk)
    download_s = time.perf_counter() - started
    if archive.stat().st_size != archive_bytes:
        raise RuntimeError(f"downloaded {archive.stat().st_size} bytes, the backup says {archive_bytes}")
    report.command(
        f"curl -o bench.dump http://127.0.0.1:<port>{download_path.replace(source['id'], '<backup id>')} "
        "-H 'Authorization: Bearer <admin token>'   # once"
    )

    # ---- restores: raw pg_restore into a fresh database vs a clone from the backup; then an in-place restore
    raw_db = f"{inst.prefix}raw_restore"
    restore_argv = pg_restore_argv(port, superuser, raw_db, archive)
    report.command(f'DROP DATABASE IF EXISTS "{raw_db}" WITH (FORCE); CREATE DATABASE "{raw_db}" TEMPLATE template0;')
    report.command(shlex.join(restore_argv).replace(str(ctx.root), "<tmp>") + "   # timed (wall)")
    report.command(
        "curl -X POST http://127.0.0.1:<port>/admin/tenants -H 'Authorization: Bearer <admin token>' "
        '-H \'Content-Type: application/json\' -d \'{"slug": "bk-clone-<run>", "name": "bk-clone-<run>", '
        '"source": {"backup_id": "<backup id>"}}\'   # 202, followed like a backup'
    )
    report.command(
        "curl -X DELETE 'http://127.0.0.1:<port>/admin/tenants/bk-clone-<run>?purge=true' "
        "-H 'Authorization: Bearer <admin token>'   # after each run, not timed"
    )
    report.command(
        f"curl -X POST http://127.0.0.1:<port>/admin/tenants/{SLUG}/restore -H 'Authorization: Bearer <admin token>' "
        "-H 'Content-Type: application/json' -d '{\"backup_id\": \"<backup id>\"}'   # under load, followed likewise"
    )
    report.command(
        f"GET http://127.0.0.1:<gateway port>/notes?limit={NOTES} with X-API-Key, {settings.hold_clients} clients "
        "(httpx, keep-alive), each request timed; GET /_gateway/metrics before and after each restore"
    )
    raw_restore: list[float] = []
    clones: list[OperationRun] = []
    clone_checks: list[dict[str, int]] = []
    cutovers: list[Cutover] = []
    for run_no in range(1, settings.runs + 1):
        for side in run_order(["raw", "clone"], run_no):
            if side == "raw":
                run_async(_recreate(pg_url, raw_db))
                raw_restore.append(_timed(restore_argv))
                rows, size = run_async(_contents(with_database(pg_url, raw_db)))
                clone_checks.append({"raw_rows": rows, "raw_database_bytes": size})
                run_async(_drop(pg_url, raw_db))
            else:
                slug = f"bk-clone-{run_no}"
                body = {"slug": slug, "name": slug, "source": {"backup_id": source["id"]}}
                op = run_operation(http, "/admin/tenants", body)
                clones.append(op)
                clone_db = op.accepted["tenant"]["database"]["name"]
                rows, size = run_async(_contents(with_database(pg_url, clone_db)))
                clone_checks.append({"clone_rows": rows, "clone_database_bytes": size})
                purged = http.delete(f"/admin/tenants/{slug}", params={"purge": "true"})
                if purged.status_code != 200:
                    raise RuntimeError(f"purge {slug}: {purged.status_code} {purged.text[:300]}")
        cutovers.append(_cutover(http, service.log_path, gw.url, tenant, source["id"], settings.hold_clients))
        last = cutovers[-1]
        say(
            f"restores run {run_no}: pg_restore {db_bytes / MB / raw_restore[-1]:.1f} MB/s, clone "
            f"{db_bytes / MB / clones[-1].work_s:.1f} MB/s; in-place restore {last.op.work_s:.1f} s, hold "
            f"{(last.hold.seconds * 1000 if last.hold else float('nan')):.0f} ms, {len(last.held)} requests held, "
            f"max {max((r.ms for r in last.during), default=float('nan')):.0f} ms, {len(failed(last.during))} failed"
        )
    bad_rows = [c for c in clone_checks if next(iter(c.values())) != data["rows"]]
    if bad_rows:
        report.error(f"a restored database does not hold {data['rows']} rows: {bad_rows}")

    _report(report, settings.hold_clients, data, archive_bytes, raw_dump, backup_runs, raw_restore, clones, cutovers)
    report.data.update(
        {
            "archive_bytes": archive_bytes,
            "download_s": download_s,
            "raw_pg_dump_s": raw_dump,
            "backup_work_s": [op.work_s for op in backup_runs],
            "backup_wall_s": [op.wall_s for op in backup_runs],
            "backup_sizes": [int(b["size_bytes"]) for b in backups],
            "raw_pg_restore_s": raw_restore,
            "clone_work_s": [op.work_s for op in clones],
            "clone_wall_s": [op.wall_s for op in clones],
            "backup_steps_s": [op.step_seconds() for op in backup_runs],
            "clone_steps_s": [op.step_seconds() for op in clones],
            "in_place_restore_steps_s": [c.op.step_seconds() for c in cutovers],
            "restored_contents": clone_checks,
            "cutovers": [c.to_dict() for c in cutovers],
            "pg_dump_version": subprocess.run(  # noqa: S603 - fixed argv
                [_tool("pg_dump"), "--version"], capture_output=True, text=True, check=False, timeout=10
            ).stdout.strip(),
        }
    )
    report.data["download_mb_s"] = archive_bytes / MB / download_s


def _cutover(
    http: httpx.Client, service_log: Path, gateway_url: str, tenant: Tenant, backup_id: str, clients: int
) -> Cutover:
    """One in-place restore while ``clients`` send requests through the gateway."""
    offset = file_size(service_log)
    before = _scrape(gateway_url)
    with Load(gateway_url, tenant.key, clients) as load:
        time.sleep(QUIET_SECONDS)
        requested = time.time()
        op = run_operation(http, f"/admin/tenants/{SLUG}/restore", {"backup_id": backup_id})
        finished = time.time()
        time.sleep(QUIET_SECONDS)
    after = _scrape(gateway_url)
    with service_log.open("rb") as fh:
        fh.seek(offset)
        spans = parse_hold_log(fh.read().decode("utf-8", "replace"))
    hold = next((s for s in spans if s.hold_id == uuid.UUID(op.id).hex), None)
    requests = sorted(load.requests, key=lambda r: r.sent)
    pre_id = op.result.get("pre_restore_backup_id")
    pre_s = None
    if pre_id:
        pre = _get(http, f"/admin/tenants/{SLUG}/backups/{pre_id}")
        pre_s = elapsed_seconds(pre["created_at"], pre["completed_at"])
    return Cutover(
        op=op,
        hold=hold,
        baseline=[r for r in requests if r.done < requested],
        during=[r for r in requests if r.done >= requested and r.sent <= finished],
        held=overlapping(requests, hold.placed, hold.released) if hold else [],
        waits=histogram_delta(before, after),
        pre_restore_s=pre_s,
    )


def _mb_s(size: int, seconds: list[float]) -> list[float]:
    return [size / MB / s for s in seconds]


def _report(
    report: SectionReport,
    clients: int,
    data: dict[str, Any],
    archive_bytes: int,
    raw_dump: list[float],
    backup_runs: list[OperationRun],
    raw_restore: list[float],
    clones: list[OperationRun],
    cutovers: list[Cutover],
) -> None:
    size = int(data["database_bytes"])
    dump_rate = _mb_s(size, raw_dump)
    backup_rate = _mb_s(size, [op.work_s for op in backup_runs])
    backup_wall_rate = _mb_s(size, [op.wall_s for op in backup_runs])
    restore_rate = _mb_s(size, raw_restore)
    clone_rate = _mb_s(size, [op.work_s for op in clones])
    clone_wall_rate = _mb_s(size, [op.wall_s for op in clones])
    inplace = [c.op.work_s for c in cutovers]
    pre = [c.pre_restore_s for c in cutovers if c.pre_restore_s is not None]
    holds = [c.hold.seconds * 1000 for c in cutovers if c.hold is not None]
    drained = [c.hold.drained_s * 1000 for c in cutovers if c.hold is not None and c.hold.drained_s is not None]
    held_ms = [r.ms for c in cutovers for r in c.held]
    during = [r for c in cutovers for r in c.during]
    baseline = [r.ms for c in cutovers for r in c.baseline]
    failures = failed(during)
    gateway_held = sum(c.waits.count for c in cutovers)
    gateway_wait = sum(c.waits.sum for c in cutovers)
    wait_bound = max((c.waits.quantile_bound(1.0) or 0.0 for c in cutovers), default=0.0)

    report.method = [
        "tenant-service (`OPERATION_POLL_SECONDS=0.2`, `OPERATION_WORKERS` 2, file store in the run's temporary "
        "directory, `CUTOVER_HOLD_SECONDS` 5), a gateway (1 worker) whose upstream is the notes app, and the notes "
        "app, as real processes (not pinned) on the benchmark's PostgreSQL; `pg_dump`/`pg_restore` from `PATH` "
        "for both sides.",
        f"One tenant created through the admin API, {NOTES} notes added through the gateway, then its database "
        f"filled as the tenant's own role with `{TABLE}` (bigserial key, ~100 characters of md5 hex text, an int, "
        "a timestamptz; hex text compresses to about half, as much real data does) until `pg_database_size` "
        f"reached {format_number(size / MB)} MB; `VACUUM (ANALYZE)` and `CHECKPOINT`. MB/s = that size in 10^6 "
        "bytes ÷ seconds, for every row below (also the restores: the same database's worth of data).",
        "Backup, per run, in alternating order: the raw `pg_dump -Fc` of that database to `/dev/null` as the "
        "superuser (wall time of the process), and `POST /admin/tenants/{ref}/backups` followed with "
        f"`GET /admin/operations/{{id}}` every {int(POLL_SECONDS * 1000)} ms: the operation's own "
        "`started_at` → `finished_at` (its work: `pg_dump --format=custom` as the tenant's role, streamed "
        "through SHA-256 and AES-256-GCM into the store, fsync, rename, the backup row), and request → seen "
        "succeeded. One raw dump before the runs warms the caches.",
        "Restore: the first platform backup downloaded once (`GET .../backups/{id}/download`) to a file. Per run, "
        "in alternating order: the raw `pg_restore --no-owner --no-privileges` of that file (one job) into a "
        "database just created from `template0` (created and dropped outside the timing), and a clone from the "
        "backup (`POST /admin/tenants` with `source.backup_id`; the operation's `started_at` → `finished_at`: "
        "role and empty database created, the object decrypted and checked into `pg_restore` as the new tenant's "
        "role, schema version checked, tenant activated), purged after the run. Both restored databases are "
        f"checked to hold every row of `{TABLE}`.",
        f"In-place restore, once per run, of the same backup (`POST /admin/tenants/{{ref}}/restore`) while "
        f"{clients} clients send `GET /notes?limit={NOTES}` through the gateway all along (httpx, one keep-alive "
        f"connection each, {int(LOAD_PAUSE_SECONDS * 1000)} ms between an answer and the next request, "
        f"{format_number(QUIET_SECONDS)} s before and after the restore): it restores "
        "into a new database, takes a `pre_restore` backup of the current data, then switches under the "
        "gateways' cutover hold. The hold is read from the tenant-service's log (`hold_placed`, `hold_drained`, "
        "`hold_released`: placed → released); held requests are the client's requests in flight at any moment "
        "of it (their latency is their wait plus the request itself); the gateway's "
        "`tenantry_gateway_hold_wait_seconds` histogram is scraped before and after each restore. Every request "
        "answered between the restore request and the operation's success must be 2xx.",
    ]
    data_table = report.table("The tenant's data", ["", "value"])
    data_table.rows += [
        [f"rows in `{TABLE}`", f"{data['rows']:,}"],
        [f"`{TABLE}` with its index (pg_total_relation_size)", f"{format_number(data['table_bytes'] / MB)} MB"],
        ["database (pg_database_size)", f"{format_number(size / MB)} MB"],
        [
            "custom-format archive (the backup's size_bytes)",
            f"{format_number(archive_bytes / MB)} MB ({format_number(archive_bytes / size * 100)} % of the database)",
        ],
    ]
    backup_table = report.table(
        f"Backup of {format_number(size / MB)} MB (medians over runs)", ["", "seconds", "MB/s", "÷ pg_dump"]
    )
    backup_table.rows += [
        ["raw `pg_dump -Fc` → /dev/null", format_number(median(raw_dump)), format_number(median(dump_rate)), "1"],
        [
            "platform backup: operation started → finished",
            format_number(median([op.work_s for op in backup_runs])),
            format_number(median(backup_rate)),
            format_number(paired_ratio(backup_rate, dump_rate)[0]),
        ],
        [
            "platform backup: request → seen succeeded",
            format_number(median([op.wall_s for op in backup_runs])),
            format_number(median(backup_wall_rate)),
            format_number(paired_ratio(backup_wall_rate, dump_rate)[0]),
        ],
    ]
    restore_table = report.table(
        f"Restore of the same {format_number(size / MB)} MB (medians over runs)",
        ["", "seconds", "MB/s", "÷ pg_restore"],
    )
    restore_table.rows += [
        [
            "raw `pg_restore` into an empty database",
            format_number(median(raw_restore)),
            format_number(median(restore_rate)),
            "1",
        ],
        [
            "clone from the backup: operation started → finished",
            format_number(median([op.work_s for op in clones])),
            format_number(median(clone_rate)),
            format_number(paired_ratio(clone_rate, restore_rate)[0]),
        ],
        [
            "clone from the backup: request → seen succeeded",
            format_number(median([op.wall_s for op in clones])),
            format_number(median(clone_wall_rate)),
            format_number(paired_ratio(clone_wall_rate, restore_rate)[0]),
        ],
        [
            "in-place restore (restore + `pre_restore` backup + cutover): started → finished",
            format_number(median(inplace)),
            format_number(median(_mb_s(size, inplace))),
            "",
        ],
        ["… of which the `pre_restore` backup", format_number(median(pre)) if pre else "n/a", "", ""],
    ]
    hold_table = report.table(
        f"Cutover of the in-place restores ({len(cutovers)} restores, {clients} clients sending GET /notes through "
        "the gateway all along)",
        ["", "p50", "max", "count"],
    )
    hold_table.rows += [
        ["hold: placed → released (ms, per restore)", _num(holds, 50), _num(holds, 100), str(len(holds))],
        ["… placed → every gateway worker drained (ms)", _num(drained, 50), _num(drained, 100), str(len(drained))],
        ["requests in flight during the hold: latency (ms)", _num(held_ms, 50), _num(held_ms, 100), str(len(held_ms))],
        [
            "gateway: held requests' wait (mean; max ≤ bucket bound, ms)",
            format_number(gateway_wait / gateway_held * 1000) if gateway_held else "n/a",
            f"≤ {format_number(wait_bound * 1000)}" if gateway_held else "n/a",
            format_number(gateway_held),
        ],
        [
            "every request while a restore ran: latency (ms)",
            _num([r.ms for r in during], 50),
            _num([r.ms for r in during], 100),
            str(len(during)),
        ],
        [
            "requests before each restore (no operation running): latency (ms)",
            _num(baseline, 50),
            _num(baseline, 100),
            str(len(baseline)),
        ],
        ["non-2xx or no answer while a restore ran", "", "", str(len(failures))],
    ]
    steps = report.table(
        f"Where the operations' time goes: seconds per progress step (medians; the step seen by polling every "
        f"{int(POLL_SECONDS * 1000)} ms, so ±{int(POLL_SECONDS * 1000)} ms; from the request, so the first step "
        "includes the request)",
        ["operation", "steps"],
    )
    for label, ops in (("backup", backup_runs), ("clone", clones), ("in-place restore", [c.op for c in cutovers])):
        steps.rows.append([label, _steps_text(ops)])
    backup_ratio, backup_runs_text = paired_ratio(backup_rate, dump_rate)
    restore_ratio, restore_runs_text = paired_ratio(clone_rate, restore_rate)
    report.data["medians"] = {
        "pg_dump_mb_s": median(dump_rate),
        "backup_mb_s": median(backup_rate),
        "backup_wall_mb_s": median(backup_wall_rate),
        "pg_restore_mb_s": median(restore_rate),
        "clone_mb_s": median(clone_rate),
        "clone_wall_mb_s": median(clone_wall_rate),
        "in_place_restore_s": median(inplace),
        "hold_p50_ms": percentile(holds, 50) if holds else None,
        "hold_max_ms": max(holds, default=None),
        "held_request_p50_ms": percentile(held_ms, 50) if held_ms else None,
        "held_request_max_ms": max(held_ms, default=None),
        "max_ms_during_restores": max((r.ms for r in during), default=None),
    }
    report.targets += [
        Target(
            "backups.backup_vs_pg_dump",
            f"Backup of a {format_number(size / MB)} MB tenant: platform MB/s ÷ raw `pg_dump -Fc` MB/s",
            backup_ratio,
            ">=",
            0.8,
            detail=(
                f"{backup_runs_text}; medians {format_number(median(backup_rate))} ÷ "
                f"{format_number(median(dump_rate))} MB/s"
            ),
        ),
        Target(
            "backups.restore_vs_pg_restore",
            f"Restore (clone) of the {format_number(size / MB)} MB backup: platform MB/s ÷ raw `pg_restore` MB/s",
            restore_ratio,
            ">=",
            0.8,
            detail=(
                f"{restore_runs_text}; medians {format_number(median(clone_rate))} ÷ "
                f"{format_number(median(restore_rate))} MB/s"
            ),
        ),
        Target(
            "backups.no_errors_during_cutover",
            "Requests through the gateway without a 2xx answer during in-place restores",
            float(len(failures)),
            "==",
            0.0,
            detail=(
                f"{len(during)} requests; hold p50 {_num(holds, 50)} ms, max {_num(holds, 100)} ms; held requests' "
                f"latency p50 {_num(held_ms, 50)} ms, max {_num(held_ms, 100)} ms"
            ),
        ),
    ]
    if len(holds) != len(cutovers):
        report.error(f"{len(cutovers) - len(holds)} in-place restores left no hold_released line in the log")


def median_steps(ops: list[OperationRun]) -> dict[str, float]:
    """Median seconds per progress step over ``ops`` (a step an operation did not show counts as 0), in the order
    the steps first appeared."""
    spent = [op.step_seconds() for op in ops]
    names = list(dict.fromkeys(name for one in spent for name in one))
    return {name: median([one.get(name, 0.0) for one in spent]) for name in names}


def _steps_text(ops: list[OperationRun]) -> str:
    if not ops:
        return "n/a"
    return ", ".join(f"{name} {format_number(seconds)}" for name, seconds in median_steps(ops).items())


def _num(values: list[float], pct: float) -> str:
    return format_number(percentile(values, pct)) if values else "n/a"
