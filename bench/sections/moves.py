"""Section 8: a tenant's database moved between two PostgreSQL servers (contract §11). A large tenant moved in
logical and in dump mode, next to a raw ``pg_dump -Fc | pg_restore`` of the same database between the same servers;
then a smaller tenant moved back and forth in both modes while clients write notes through the gateway, to see the
write pause the clients see."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import asyncpg
import httpx

from bench.context import BenchContext, SectionReport, say
from bench.cutover import HoldSpan, longest_gap, parse_hold_log
from bench.platform import BENCH_GATEWAY_SETTINGS, BENCH_PLAN, START_TIMEOUT, Admin, file_size, run_async
from bench.results import Target, format_number, median, paired_ratio, percentile
from bench.sections.backups import (
    INSERT_ROWS,
    POLL_SECONDS,
    OperationFailedError,
    OperationRun,
    median_steps,
    run_operation,
)
from bench.sections.common import in_installation, run_order
from tenantry_devtools.platform import Installation, Platform, Tenant, with_database
from tenantry_devtools.processes import wait_until
from tenantry_devtools.servers import LocalPostgres

NAME = "moves"
TITLE = "8. Moves between database servers"
FIRST: Final = "default"
SECOND: Final = "second"
LOGICAL: Final = "logical"
DUMP: Final = "dump"
MB: Final = 1_000_000
#: Notes written through the app before the bulk data (the app's own table is part of every move).
NOTES: Final = 20
#: The tenant-service looks for queued operations this often besides being woken by the request.
OPERATION_POLL_SECONDS: Final = "0.2"
#: ``CUTOVER_HOLD_SECONDS`` of the tenant-service (its default): the longest a cutover holds requests.
HOLD_SECONDS: Final = 5
#: Each writer's pause between an acknowledgement and its next write.
WRITE_PAUSE_SECONDS: Final = 0.01
#: How often the moves under writes are polled: seldom, as an operator's client, so that the harness's own
#: requests do not slow down the tenant-service during the cutover it measures.
PAUSE_POLL_SECONDS: Final = 0.5
#: Seconds of writes between two moves under load (the last part of it is each move's baseline).
QUIET_SECONDS: Final = 1.5
#: Share of the data in the table with a primary key; the rest goes to the one without.
KEYED_SHARE: Final = 0.75
FIRST_BATCH: Final = 2_000
MAX_BATCH: Final = 250_000
CREATE_TABLES: Final = (
    "CREATE TABLE bench_rows (id bigserial PRIMARY KEY, payload text NOT NULL, n int NOT NULL, "
    "created timestamptz NOT NULL)",
    "CREATE TABLE bench_events (at timestamptz NOT NULL, kind int NOT NULL, payload text NOT NULL)",
    "CREATE INDEX bench_events_at ON bench_events (at)",
)
INSERT_EVENTS: Final = (
    "INSERT INTO bench_events (at, kind, payload) SELECT now() - random() * interval '365 days', (g % 16)::int, "
    "md5(random()::text) || ' ' || md5(g::text) || ' ' || left(md5(random()::text), 1 + (g % 32)::int) "
    "FROM generate_series($1::bigint, $2::bigint) AS g"
)
TABLES: Final = ("notes", "bench_rows", "bench_events")


def run(ctx: BenchContext) -> dict[str, Any]:
    """Start two clusters of the section's own, an installation on the first with the second as an extra server,
    and measure moves between them."""
    report = SectionReport(ctx, NAME, TITLE)
    settings = ctx.settings
    report.settings = {
        "data_mb": settings.move_mb,
        "runs": settings.runs,
        "pause_data_mb": settings.move_pause_mb,
        "moves_per_mode_under_writes": settings.move_pauses,
        "writers": settings.move_writers,
    }
    clusters = {
        name: LocalPostgres(ctx.root / NAME / name, log_file=ctx.logs / NAME / f"postgres-{name}.log")
        for name in (FIRST, SECOND)
    }
    for name, cluster in clusters.items():
        ctx.registry.on_exit(f"postgres {name} ({NAME})", cluster.stop)
    try:
        for cluster in clusters.values():
            cluster.start(timeout=120)
        return in_installation(ctx, report, NAME, partial(_run, ctx, report, clusters), pg_url=clusters[FIRST].url)
    except Exception as exc:  # noqa: BLE001 - recorded in the report; the other sections still run
        report.error(f"section aborted: {type(exc).__name__}: {exc}")
        return report.finish()
    finally:
        for cluster in clusters.values():
            cluster.stop()


# --------------------------------------------------------------------------- the tenants' data


async def _grow(conn: Any, insert: str, size_sql: str, until: int) -> int:
    """Insert batches with ``insert`` (numbered rows ``$1..$2``) until the database holds ``until`` bytes; the rows
    inserted."""
    base = int(await conn.fetchval(size_sql))
    rows, batch = 0, FIRST_BATCH
    while True:
        await conn.execute(insert, rows + 1, rows + batch, timeout=1800)
        rows += batch
        size = int(await conn.fetchval(size_sql))
        if size >= until:
            return rows
        per_row = max(1.0, (size - base) / rows)
        batch = max(1000, min(MAX_BATCH, int((until - size) / per_row) + 1))


async def _fill(url: str, target_bytes: int) -> dict[str, Any]:
    """As the database's owner (the tenant's role): ``bench_rows`` (a primary key) until about
    :data:`KEYED_SHARE` of ``target_bytes``, then ``bench_events`` (no primary key, an index) until the database
    holds ``target_bytes``; vacuumed and analysed. Its contents."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        role = await conn.fetchval("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()")
        await conn.execute(f'SET ROLE "{role}"')
        for statement in CREATE_TABLES:
            await conn.execute(statement)
        size_sql = "SELECT pg_database_size(current_database())"
        base = int(await conn.fetchval(size_sql))
        keyed = await _grow(conn, INSERT_ROWS, size_sql, base + int((target_bytes - base) * KEYED_SHARE))
        events = await _grow(conn, INSERT_EVENTS, size_sql, target_bytes)
        await conn.execute("RESET ROLE")
        await conn.execute("VACUUM (ANALYZE)", timeout=1800)
        await conn.execute("CHECKPOINT", timeout=600)
        return {
            "role": role,
            "bench_rows": keyed,
            "bench_events": events,
            "database_bytes": int(await conn.fetchval(size_sql)),
        }
    finally:
        await conn.close(timeout=5)


async def _counts(url: str) -> dict[str, int]:
    """Rows of each of :data:`TABLES`."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}", timeout=600)) for t in TABLES}  # noqa: S608
    finally:
        await conn.close(timeout=5)


async def _note_bodies(url: str) -> set[str]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return {r[0] for r in await conn.fetch("SELECT body FROM notes", timeout=600)}
    finally:
        await conn.close(timeout=5)


async def _execute(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement, timeout=600)
    finally:
        await conn.close(timeout=5)


# --------------------------------------------------------------------------- the raw copy


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed (the PostgreSQL client)")
    return found


def raw_copy_argv(source: LocalPostgres, target: LocalPostgres, database: str, scratch: str) -> list[list[str]]:
    """``pg_dump -Fc`` of ``database`` as the superuser, and ``pg_restore`` of its output into ``scratch``."""
    user = urlsplit(source.url).username or "postgres"
    return [
        [
            _tool("pg_dump"), "-Fc", "--no-password", "-h", "127.0.0.1", "-p", str(source.port), "-U", user,
            "-d", database,
        ],
        [
            _tool("pg_restore"), "--no-owner", "--no-privileges", "--no-password", "-h", "127.0.0.1",
            "-p", str(target.port), "-U", user, "-d", scratch,
        ],
    ]  # fmt: skip


def timed_pipe(argvs: list[list[str]], log: Path) -> float:
    """Run ``argvs[0] | argvs[1]`` (stderr of both to ``log``); the wall seconds until both have exited.

    Raises:
        RuntimeError: either failed.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as errors:
        started = time.perf_counter()
        producer = subprocess.Popen(argvs[0], stdout=subprocess.PIPE, stderr=errors)  # noqa: S603 - built here
        consumer = subprocess.Popen(argvs[1], stdin=producer.stdout, stderr=errors)  # noqa: S603
        assert producer.stdout is not None
        producer.stdout.close()  # the consumer holds the pipe; the producer gets SIGPIPE if it stops early
        codes = (consumer.wait(timeout=3600), producer.wait(timeout=3600))
        wall = time.perf_counter() - started
    if any(codes):
        raise RuntimeError(f"pg_dump | pg_restore exited {codes}; see {log}")
    return wall


# --------------------------------------------------------------------------- moves


@dataclass
class Move:
    """One move the harness asked for and followed to its end."""

    mode: str
    source: str
    target: str
    op: OperationRun

    @property
    def seconds(self) -> float:
        """The operation's own ``result.seconds`` (its work, from the first step to its end)."""
        return float(self.op.result["seconds"])

    @property
    def write_pause(self) -> float:
        """The operation's ``result.write_pause_seconds``: from the hold placed to the registry switched."""
        return float(self.op.result["write_pause_seconds"])

    @property
    def copy_s(self) -> float:
        """Seconds of the copy, from the progress steps seen: logical, the schema and the tables' initial sync
        (``copying_schema``, ``copying``); dump, the ``cutover`` step, in which the whole database is copied."""
        steps = self.op.step_seconds()
        if self.mode == LOGICAL:
            return steps.get("copying_schema", 0.0) + steps.get("copying", 0.0)
        return steps.get("cutover", 0.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "mode": self.mode,
            "source": self.source,
            "target": self.target,
            "operation_id": self.op.id,
            "wall_s": self.op.wall_s,
            "copy_s": self.copy_s,
            "steps_s": self.op.step_seconds(),
            "result": self.op.result,
        }


def move(http: httpx.Client, slug: str, source: str, target: str, mode: str, poll: float = POLL_SECONDS) -> Move:
    """``POST /admin/tenants/{slug}/move`` in ``mode``, followed to its end (polled every ``poll`` seconds).

    Raises:
        RuntimeError: it failed, ran in another mode, or its verification did not pass.
    """
    op = run_operation(http, f"/admin/tenants/{slug}/move", {"server": target, "mode": mode}, 1800, poll)
    result = op.result
    if result.get("mode") != mode or result.get("verified") is not True or result.get("server") != target:
        raise RuntimeError(f"move of {slug} to {target} in {mode} mode: unexpected result {result}")
    return Move(mode, source, target, op)


def _other(server: str) -> str:
    return SECOND if server == FIRST else FIRST


# --------------------------------------------------------------------------- writers through the gateway


@dataclass
class Writes:
    """What the writers saw: acknowledgements and failures, on the monotonic clock."""

    acks: list[float] = field(default_factory=list)
    bodies: list[str] = field(default_factory=list)
    failures: list[tuple[float, int]] = field(default_factory=list)


class Writers:
    """``clients`` threads each writing ``POST /notes`` through the gateway, one after another on a keep-alive
    connection, with :data:`WRITE_PAUSE_SECONDS` between an answer and the next write."""

    def __init__(self, gateway_url: str, key: str, clients: int) -> None:
        self._url = gateway_url
        self._key = key
        self._stop = threading.Event()
        self.seen = Writes()
        self._threads = [threading.Thread(target=self._work, args=(i,), daemon=True) for i in range(clients)]

    def _work(self, client: int) -> None:
        seen = self.seen
        with httpx.Client(base_url=self._url, headers={"X-API-Key": self._key}, timeout=30) as http:
            sequence = 0
            while not self._stop.is_set():
                body = f"w{client}-{sequence}"
                sequence += 1
                try:
                    status = http.post("/notes", json={"body": body}).status_code
                except httpx.HTTPError:
                    status = 0
                now = time.monotonic()
                if status == 201:
                    seen.acks.append(now)
                    seen.bodies.append(body)
                else:
                    seen.failures.append((now, status))
                self._stop.wait(WRITE_PAUSE_SECONDS)

    def __enter__(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


@dataclass
class PausedMove:
    """A move under the writers, with the window it ran in (monotonic)."""

    move: Move
    requested: float
    finished: float
    gap_s: float | None = None
    baseline_gap_s: float | None = None
    acked: int = 0
    failed: list[int] = field(default_factory=list)
    hold: HoldSpan | None = None
    """The cutover hold, from the tenant-service's log."""

    def measure(self, seen: Writes) -> None:
        """The longest gap between acknowledged writes around the move, and in the last second before it."""
        self.gap_s = longest_gap(seen.acks, self.requested, self.finished)
        self.baseline_gap_s = longest_gap(seen.acks, self.requested - QUIET_SECONDS + 0.5, self.requested - 0.05)
        self.acked = sum(1 for t in seen.acks if self.requested <= t <= self.finished)
        self.failed = [status for t, status in seen.failures if self.requested <= t <= self.finished + 0.5]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            **self.move.to_dict(),
            "longest_write_gap_s": self.gap_s,
            "baseline_gap_s": self.baseline_gap_s,
            "writes_acknowledged": self.acked,
            "writes_failed": self.failed,
            "hold_s": self.hold.seconds if self.hold else None,
            "hold_drained_s": self.hold.drained_s if self.hold else None,
        }


# --------------------------------------------------------------------------- the section


def _create(http: httpx.Client, slug: str) -> Tenant:
    response = http.post("/admin/tenants", json={"slug": slug, "name": slug, "plan": BENCH_PLAN, "server": FIRST})
    if response.status_code != 201:
        raise RuntimeError(f"POST /admin/tenants {slug}: {response.status_code} {response.text[:500]}")
    return Tenant.from_created(response.json())


def _prepare(platform: Platform, http: httpx.Client, clusters: dict[str, LocalPostgres], slug: str, mb: int) -> Tenant:
    """A tenant on the first server with :data:`NOTES` notes written through the gateway, then ``mb`` MB."""
    tenant = _create(http, slug)
    gw = platform.gateway.url
    headers = {"X-API-Key": tenant.key}
    wait_until(lambda: httpx.get(gw + "/notes", headers=headers, timeout=5).status_code == 200, 60, "GET /notes")
    for i in range(NOTES):
        created = httpx.post(gw + "/notes", headers=headers, json={"body": f"note {i}"}, timeout=30)
        if created.status_code != 201:
            raise RuntimeError(f"POST /notes: {created.status_code} {created.text[:300]}")
    say(f"moves: filling {tenant.database} with ~{mb} MB")
    started = time.perf_counter()
    data = run_async(_fill(with_database(clusters[FIRST].url, tenant.database), mb * MB))
    say(
        f"moves: {slug}: {data['bench_rows']:,} + {data['bench_events']:,} rows, "
        f"{data['database_bytes'] / MB:.1f} MB in {time.perf_counter() - started:.0f} s"
    )
    return tenant


def _run(ctx: BenchContext, report: SectionReport, clusters: dict[str, LocalPostgres], inst: Installation) -> None:
    platform = Platform.launch(
        inst,
        ctx.logs / NAME,
        service_env={
            "EXTRA_DATABASE_SERVERS": f"{SECOND}={clusters[SECOND].url}",
            "OPERATION_POLL_SECONDS": OPERATION_POLL_SECONDS,
            "CUTOVER_HOLD_SECONDS": str(HOLD_SECONDS),
        },
        gateway_env=BENCH_GATEWAY_SETTINGS,
        timeout=START_TIMEOUT,
    )
    for process in platform.processes:
        ctx.registry.add(process)
    admin = Admin(platform.service.url, inst.admin_token)
    admin.put_plan()
    http = admin.client()
    try:
        servers = {s["name"]: s for s in http.get("/admin/servers").json()["items"]}
        if not all(servers.get(name, {}).get("can_move_online") for name in clusters):
            raise RuntimeError(f"both servers must be able to move online: {servers}")
        big = _copies(ctx, report, platform, http, clusters)
        paused = _pauses(ctx, report, platform, http, clusters)
        _report(ctx, report, big, paused)
    finally:
        http.close()
        admin.close()


@dataclass
class Copies:
    """Part 1: the large tenant's moves and the raw copies, run by run."""

    data: dict[str, Any]
    raw_s: list[float]
    logical: list[Move]
    dump: list[Move]


def _copies(
    ctx: BenchContext,
    report: SectionReport,
    platform: Platform,
    http: httpx.Client,
    clusters: dict[str, LocalPostgres],
) -> Copies:
    """The large tenant: per run, in alternating order, a raw ``pg_dump -Fc | pg_restore`` from the server the
    tenant is on to a scratch database on the other, a logical move and a dump move (each to the other server)."""
    slug = "mv-big"
    tenant = _prepare(platform, http, clusters, slug, ctx.settings.move_mb)
    data = run_async(_fill_summary(clusters[FIRST], tenant.database))
    scratch = f"{platform.installation.prefix}raw_copy"
    where = FIRST
    # Warm-up, not timed: the raw copy once (caches), and one move, so that every timed move, like a move in
    # production after the first, finds a retired copy of the tenant on its target and drops it first.
    _raw_copy(ctx, report, clusters, tenant.database, where, scratch, data["counts"])
    move(http, slug, where, _other(where), DUMP)
    where = _other(where)
    raw_s: list[float] = []
    moves: dict[str, list[Move]] = {LOGICAL: [], DUMP: []}
    for run_no in range(1, ctx.settings.runs + 1):
        for side in run_order(["raw", LOGICAL, DUMP], run_no):
            if side == "raw":
                raw_s.append(_raw_copy(ctx, report, clusters, tenant.database, where, scratch, data["counts"]))
            else:
                moves[side].append(move(http, slug, where, _other(where), side))
                where = _other(where)
        say(
            f"moves run {run_no}: raw pg_dump | pg_restore {raw_s[-1]:.1f} s; logical move "
            f"{moves[LOGICAL][-1].seconds:.1f} s (copy {moves[LOGICAL][-1].copy_s:.1f} s, write pause "
            f"{moves[LOGICAL][-1].write_pause:.3f} s); dump move {moves[DUMP][-1].seconds:.1f} s (copy "
            f"{moves[DUMP][-1].copy_s:.1f} s, write pause {moves[DUMP][-1].write_pause:.3f} s)"
        )
    moved = run_async(_counts(with_database(clusters[where].url, tenant.database)))
    if moved != data["counts"]:
        report.error(f"after the moves the tenant holds {moved}, not {data['counts']}")
    purged = http.delete(f"/admin/tenants/{slug}", params={"purge": "true"})
    if purged.status_code != 200:
        report.error(f"purge {slug}: {purged.status_code} {purged.text[:300]}")
    return Copies(data, raw_s, moves[LOGICAL], moves[DUMP])


async def _fill_summary(cluster: LocalPostgres, database: str) -> dict[str, Any]:
    url = with_database(cluster.url, database)
    conn = await asyncpg.connect(url, timeout=10)
    try:
        size = int(await conn.fetchval("SELECT pg_database_size(current_database())"))
        tables = {t: int(await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", t)) for t in TABLES}
    finally:
        await conn.close(timeout=5)
    return {"database_bytes": size, "table_bytes": tables, "counts": await _counts(url)}


def _raw_copy(
    ctx: BenchContext,
    report: SectionReport,
    clusters: dict[str, LocalPostgres],
    database: str,
    where: str,
    scratch: str,
    counts: dict[str, int],
) -> float:
    """The raw copy from ``where`` into a fresh scratch database on the other server (created and dropped outside
    the timing, its rows checked)."""
    source, target = clusters[where], clusters[_other(where)]
    run_async(_execute(target.url, f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)', f'CREATE DATABASE "{scratch}"'))
    argvs = raw_copy_argv(source, target, database, scratch)
    report.command('CREATE DATABASE "<scratch>";   # on the other server, not timed')
    shown = " | ".join(shlex.join(a) for a in argvs)
    for text, placeholder in (
        (database, "<tenant database>"),
        (scratch, "<scratch>"),
        (f"-p {source.port} ", "-p <source port> "),
        (f"-p {target.port} ", "-p <target port> "),
    ):
        shown = shown.replace(text, placeholder)
    report.command(shown + "   # timed (wall, until both exit)")
    seconds = timed_pipe(argvs, ctx.logs / NAME / "raw-copy.log")
    copied = run_async(_counts(with_database(target.url, scratch)))
    run_async(_execute(target.url, f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'))
    if copied != counts:
        raise RuntimeError(f"the raw copy holds {copied}, not {counts}")
    return seconds


def _pauses(
    ctx: BenchContext,
    report: SectionReport,
    platform: Platform,
    http: httpx.Client,
    clusters: dict[str, LocalPostgres],
) -> list[PausedMove]:
    """The smaller tenant moved back and forth, :attr:`Settings.move_pauses` times per mode (the modes alternate
    which goes first, so each mode moves in both directions), while the writers write its notes all along. A move
    that fails is recorded (``report.data["failed_moves"]``) and the next one starts from where the tenant stayed."""
    settings = ctx.settings
    slug = "mv-live"
    tenant = _prepare(platform, http, clusters, slug, settings.move_pause_mb)
    report.data["pause_tenant"] = run_async(_fill_summary(clusters[FIRST], tenant.database))
    where = FIRST
    done: list[PausedMove] = []
    failed_moves: list[dict[str, Any]] = []
    report.data["failed_moves"] = failed_moves
    log_offset = file_size(platform.service.log_path)
    with Writers(platform.gateway.url, tenant.key, settings.move_writers) as writers:
        time.sleep(QUIET_SECONDS)
        for pair in range(1, settings.move_pauses + 1):
            for mode in run_order([LOGICAL, DUMP], pair):
                requested = time.monotonic()
                try:
                    one = move(http, slug, where, _other(where), mode, poll=PAUSE_POLL_SECONDS)
                except OperationFailedError as exc:
                    failed_moves.append(
                        {"mode": mode, "source": where, "target": _other(where), "operation": exc.operation}
                    )
                    say(f"moves: a {mode} move under writes failed: {exc}")
                else:
                    done.append(PausedMove(one, requested, time.monotonic()))
                    where = _other(where)
                time.sleep(QUIET_SECONDS)
            say(
                f"moves under writes {pair}: "
                + ", ".join(f"{p.move.mode} write pause {p.move.write_pause:.3f} s" for p in done[-2:])
                + f"; {len(failed_moves)} moves failed"
                + f"; {len(writers.seen.acks)} writes acknowledged, {len(writers.seen.failures)} failed"
            )
    seen = writers.seen
    with platform.service.log_path.open("rb") as fh:
        fh.seek(log_offset)
        holds = {span.hold_id: span for span in parse_hold_log(fh.read().decode("utf-8", "replace"))}
    for paused in done:
        paused.measure(seen)
        paused.hold = holds.get(uuid.UUID(paused.move.op.id).hex)
    present = run_async(_note_bodies(with_database(clusters[where].url, tenant.database)))
    missing = [b for b in seen.bodies if b not in present]
    report.data["writes"] = {"acknowledged": len(seen.bodies), "missing_after_moves": len(missing)}
    if missing:
        report.error(f"{len(missing)} acknowledged writes are missing after the moves, e.g. {missing[:5]}")
    return done


# --------------------------------------------------------------------------- the report


def _n(value: float | None) -> str:
    return format_number(value)


def _stat(values: list[float], pct: float) -> str:
    return format_number(percentile(values, pct)) if values else "n/a"


def _steps_text(moves: list[Move]) -> str:
    if not moves:
        return "n/a"
    return ", ".join(f"{name} {format_number(s)}" for name, s in median_steps([m.op for m in moves]).items())


def _report(ctx: BenchContext, report: SectionReport, big: Copies, paused: list[PausedMove]) -> None:
    settings = ctx.settings
    size = int(big.data["database_bytes"])
    small = int(report.data["pause_tenant"]["database_bytes"])
    logical, dump = big.logical, big.dump
    report.method = [
        "Two throw-away PostgreSQL clusters of the section's own on one machine (tenantry_devtools' LocalPostgres: "
        "`wal_level=logical`, `fsync=off`), `default` holding the registry and `second` registered from "
        f"`EXTRA_DATABASE_SERVERS`; the tenant-service (`OPERATION_POLL_SECONDS={OPERATION_POLL_SECONDS}`, "
        f"`CUTOVER_HOLD_SECONDS={HOLD_SECONDS}`), "
        "a gateway (1 worker) and the notes app as real processes, not pinned. `pg_dump`/`pg_restore` from `PATH` "
        "for the platform and the raw copy.",
        f"Large tenant: created on `default`, {NOTES} notes written through the gateway, then filled as its own "
        "role: `bench_rows` (bigserial primary key, ~100 characters of md5 text, an int, a timestamptz) to "
        f"{format_number(KEYED_SHARE * 100)} % of the size, `bench_events` (**no primary key**, an index on a "
        f"timestamptz) to the rest, until `pg_database_size` reached {format_number(size / MB)} MB; "
        "`VACUUM (ANALYZE)`, `CHECKPOINT`.",
        "Per run, in alternating order: the raw `pg_dump -Fc | pg_restore --no-owner --no-privileges` (one job) of "
        "the tenant's database as the superuser, from the server it is on into a scratch database just created on "
        "the other (created, counted and dropped outside the timing); a move in `logical` mode and one in `dump` "
        'mode (`POST /admin/tenants/{ref}/move {"server", "mode"}`), each to the other server, followed with '
        f"`GET /admin/operations/{{id}}` every {int(POLL_SECONDS * 1000)} ms. Before the runs, one raw copy and "
        "one dump move, not timed, so that every timed move finds a retired copy on its target (as every move "
        "after a tenant's first) and drops it in its `preparing` step. Every move must succeed in the mode asked "
        "for with `verified: true`; every copy is checked to hold every row.",
        "Total move time is the operation's `result.seconds`. Copy time comes from the progress steps seen "
        f"(±{int(POLL_SECONDS * 1000)} ms): logical, `copying_schema` + `copying` (schema as the tenant, then the "
        "subscription's initial table sync); dump, the `cutover` step (the whole `pg_dump | pg_restore` as the "
        "tenant runs inside the hold). The write pause is the operation's `result.write_pause_seconds` (hold placed "
        "→ registry switched).",
        f"Write pause under writes: a smaller tenant ({format_number(small / MB)} MB, filled the same way) moved "
        f"{settings.move_pauses} time(s) per mode back and forth (modes alternating which goes first) while "
        f"{settings.move_writers} clients `POST /notes` through the gateway all along (httpx, one keep-alive "
        f"connection each, {int(WRITE_PAUSE_SECONDS * 1000)} ms between an answer and the next write, "
        f"{format_number(QUIET_SECONDS)} s between moves). Per move: the longest time between two successive "
        "acknowledged (201) writes, of all clients, that overlaps the move request → operation seen succeeded "
        f"(polled every {int(PAUSE_POLL_SECONDS * 1000)} ms, so that the harness does not load the tenant-service "
        "during the cutover it measures); the "
        "same in the last second before the move as a baseline. Afterwards every acknowledged note is checked to be "
        "in the tenant's database.",
    ]
    data = big.data
    data_table = report.table("The large tenant's data", ["table", "rows", "MB (pg_total_relation_size)"])
    for table in TABLES:
        data_table.rows.append(
            [f"`{table}`", f"{data['counts'][table]:,}", format_number(data["table_bytes"][table] / MB)]
        )
    data_table.rows.append(["database (pg_database_size)", "", format_number(size / MB)])

    raw = big.raw_s
    rows: list[list[str]] = [
        ["raw `pg_dump -Fc | pg_restore` (superuser, scratch database)", _n(median(raw)), _n(median(raw)), "1", ""]
    ]
    for mode, moves in ((LOGICAL, logical), (DUMP, dump)):
        total = [m.seconds for m in moves]
        copy = [m.copy_s for m in moves]
        pause = [m.write_pause for m in moves]
        rows.append(
            [
                f"`{mode}` move",
                _n(median(total)),
                _n(median(copy)),
                _n(paired_ratio(copy, raw)[0]),
                _n(median(pause)),
            ]
        )
    copies = report.table(
        f"Moving a {format_number(size / MB)} MB tenant between the two servers (medians over {settings.runs} runs; "
        "ratio: median of each run's copy ÷ the same run's raw copy)",
        ["", "total move (s)", "copy (s)", "copy ÷ raw", "write pause (operation's, s)"],
    )
    copies.rows += rows

    by_mode = {mode: [p for p in paused if p.move.mode == mode] for mode in (LOGICAL, DUMP)}

    def column(mode: str, value: Any) -> list[float]:
        return [v for v in (value(p) for p in by_mode[mode]) if v is not None]

    metrics: list[tuple[str, Any]] = [
        ("longest gap between acknowledged writes around the move (s)", lambda p: p.gap_s),
        ("operation's `write_pause_seconds` (s)", lambda p: p.move.write_pause),
        ("hold: placed → every gateway worker drained (s, tenant-service log)", lambda p: p.hold and p.hold.drained_s),
        ("hold: placed → released (s, tenant-service log)", lambda p: p.hold and p.hold.seconds),
        ("operation's `seconds` (s)", lambda p: p.move.seconds),
        ("longest gap in the second before the move (s)", lambda p: p.baseline_gap_s),
        ("writes acknowledged during the move", lambda p: float(p.acked)),
        ("writes failed during the move", lambda p: float(len(p.failed))),
    ]
    pauses = report.table(
        f"Write pause under {settings.move_writers} writers: a {format_number(small / MB)} MB tenant "
        f"moved {settings.move_pauses} time(s) per mode",
        ["", "logical p50", "logical max", "dump p50", "dump max"],
    )
    for label, value in metrics:
        pauses.rows.append(
            [
                label,
                _stat(column(LOGICAL, value), 50),
                _stat(column(LOGICAL, value), 100),
                _stat(column(DUMP, value), 50),
                _stat(column(DUMP, value), 100),
            ]
        )
    steps = report.table(
        f"Where a move's time goes: seconds per progress step (medians; seen by polling every "
        f"{int(POLL_SECONDS * 1000)} ms)",
        ["moves", "steps"],
    )
    steps.rows += [
        [f"`logical`, {format_number(size / MB)} MB", _steps_text(logical)],
        [f"`dump`, {format_number(size / MB)} MB", _steps_text(dump)],
    ]

    gaps = {mode: column(mode, lambda p: p.gap_s) for mode in (LOGICAL, DUMP)}
    failed = {mode: sum(len(p.failed) for p in by_mode[mode]) for mode in (LOGICAL, DUMP)}
    logical_copy, logical_text = paired_ratio([m.copy_s for m in logical], raw)
    dump_copy, dump_text = paired_ratio([m.copy_s for m in dump], raw)
    dump_pause = median([m.write_pause for m in dump])
    acknowledged, lost = report.data["writes"]["acknowledged"], report.data["writes"]["missing_after_moves"]
    failed_moves: list[dict[str, Any]] = report.data["failed_moves"]
    report.summary = [
        f"A logical move of the {format_number(size / MB)} MB tenant took {_n(median([m.seconds for m in logical]))} s "
        f"in all, its copy {_n(logical_copy)}x the raw `pg_dump | pg_restore` of the same database "
        f"({_n(median(raw))} s), while the tenant kept serving; the tenant's writes stopped only for the cutover: "
        f"{_n(median([m.write_pause for m in logical]))} s by the operation's count. A dump move's copy took "
        f"{_n(dump_copy)}x the raw copy, all of it inside the cutover, so the write pause is the copy: "
        f"{_n(dump_pause)} s"
        + (
            f", longer than the {HOLD_SECONDS} s hold: requests held past it get 503 `tenant_unavailable`. "
            if dump_pause > HOLD_SECONDS
            else ". "
        )
        + f"Under {settings.move_writers} steady writers, a {format_number(small / MB)} MB tenant's "
        f"writes paused for {_stat(gaps[LOGICAL], 50)} s (p50; max {_stat(gaps[LOGICAL], 100)} s) per logical "
        f"move and {_stat(gaps[DUMP], 50)} s (max {_stat(gaps[DUMP], 100)} s) per dump move; "
        f"{failed[LOGICAL]} writes failed during the logical moves and {failed[DUMP]} during the dump moves; "
        f"{lost} of {acknowledged} acknowledged writes were missing afterwards."
        + (
            f" {len(failed_moves)} of {len(paused) + len(failed_moves)} moves under writes failed before their "
            "switch ("
            + ", ".join(sorted({str((f["operation"].get("error") or {}).get("detail")) for f in failed_moves}))
            + "); the tenant stayed where it was."
            if failed_moves
            else ""
        ),
    ]
    report.data.update(
        {
            "data": data,
            "raw_copy_s": raw,
            "logical_moves": [m.to_dict() for m in logical],
            "dump_moves": [m.to_dict() for m in dump],
            "moves_under_writes": [p.to_dict() for p in paused],
            "medians": {
                "raw_copy_s": median(raw),
                "logical_move_s": median([m.seconds for m in logical]),
                "logical_copy_s": median([m.copy_s for m in logical]),
                "dump_move_s": median([m.seconds for m in dump]),
                "dump_copy_s": median([m.copy_s for m in dump]),
                "logical_copy_vs_raw": logical_copy,
                "dump_copy_vs_raw": dump_copy,
                "logical_gap_p50_s": percentile(gaps[LOGICAL], 50) if gaps[LOGICAL] else None,
                "logical_gap_max_s": max(gaps[LOGICAL], default=None),
                "dump_gap_p50_s": percentile(gaps[DUMP], 50) if gaps[DUMP] else None,
                "dump_gap_max_s": max(gaps[DUMP], default=None),
            },
            "ratio_runs": {"logical": logical_text, "dump": dump_text},
        }
    )
    missing_gaps = [p.move.op.id for p in paused if p.gap_s is None]
    if missing_gaps:
        report.error(f"no write was acknowledged after moves {missing_gaps}: their pause is unknown")
    report.targets += [
        Target(
            "moves.logical_write_pause",
            f"Longest write pause seen by {settings.move_writers} writers through the gateway during a logical move "
            f"({len(by_mode[LOGICAL])} moves, max)",
            max(gaps[LOGICAL], default=None),
            "<=",
            1.0,
            unit="s",
            detail=(
                f"p50 {_stat(gaps[LOGICAL], 50)} s; operation's write_pause_seconds p50 "
                f"{_stat(column(LOGICAL, lambda p: p.move.write_pause), 50)} s, max "
                f"{_stat(column(LOGICAL, lambda p: p.move.write_pause), 100)} s"
            ),
        ),
        Target(
            "moves.logical_no_failed_writes",
            "Writes through the gateway without a 201 during logical moves",
            float(failed[LOGICAL]),
            "==",
            0.0,
            detail=f"{sum(p.acked for p in by_mode[LOGICAL])} writes acknowledged during those moves",
        ),
        Target(
            "moves.no_failed_moves_under_writes",
            "Moves under steady writes that failed (either mode)",
            float(len(failed_moves)),
            "==",
            0.0,
            detail=f"{len(paused)} of {len(paused) + len(failed_moves)} moves succeeded",
        ),
    ]
    for failure in failed_moves:
        error = failure["operation"].get("error") or {}
        report.notes.append(
            f"A `{failure['mode']}` move under writes ({failure['source']} → {failure['target']}, operation "
            f"{failure['operation'].get('id')}) failed: `{error.get('code')}`: {error.get('detail')}. The tenant "
            "stayed on its server and the next move started from there."
        )
