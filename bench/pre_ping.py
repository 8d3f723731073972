"""``python -m bench.pre_ping``: what noticing a dead pooled connection costs per request in tenantry-app.

Three ways to run one short session (checkout, ``SELECT 1``, checkin) on a pool of one asyncpg connection, on a
throw-away local Postgres, interleaved over several rounds:

* ``plain``: SQLAlchemy's defaults, which do not notice a dead connection before using it;
* ``pool_pre_ping``: SQLAlchemy's pessimistic check; with asyncpg it is BEGIN, ``;``, ROLLBACK on every checkout;
* ``tenantry-app``: ``TenantDatabases`` as shipped: a local ``is_closed()`` check at checkout, commit tracking.

Per session: server transactions (``pg_stat_database``, exact), the app's CPU time and wall time (the fastest
round of each variant: the one least disturbed by other work on the machine; and the median round).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import uvloop
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from tenantry_app import CredentialClient, DatabaseCredentials, TenantDatabases
from tenantry_devtools.servers import LocalPostgres

#: Yields a session factory for one round, and releases everything after it.
Sessions = Callable[[], AbstractAsyncContextManager[Callable[[], AbstractAsyncContextManager[AsyncSession]]]]


@dataclass
class Round:
    """One round of one variant, per session."""

    transactions: float
    cpu_us: float
    wall_us: float


class _Fixed(CredentialClient):
    """Credentials known in advance: no tenant-service in this measurement."""

    def __init__(self, creds: DatabaseCredentials) -> None:
        super().__init__("http://127.0.0.1:9", "unused")
        self._cache["bench"] = creds


def _engine(url: str, *, pre_ping: bool) -> Sessions:
    @asynccontextmanager
    async def sessions() -> AsyncIterator[Callable[[], AbstractAsyncContextManager[AsyncSession]]]:
        engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=pre_ping)
        try:
            yield async_sessionmaker(engine)
        finally:
            await engine.dispose()

    return sessions


def _library(creds: DatabaseCredentials) -> Sessions:
    @asynccontextmanager
    async def sessions() -> AsyncIterator[Callable[[], AbstractAsyncContextManager[AsyncSession]]]:
        credentials = _Fixed(creds)
        databases = TenantDatabases(credentials, budget=1)
        try:
            yield lambda: databases.session("bench")
        finally:
            await databases.close()
            await credentials.close()

    return sessions


async def _transactions(observer: asyncpg.Connection) -> int:
    await observer.execute("SELECT pg_stat_clear_snapshot()")
    value = await observer.fetchval(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
    )
    return int(value)


async def _round(variant: Sessions, observer: asyncpg.Connection, count: int) -> Round:
    async with variant() as new_session:
        async with new_session() as session:  # connect outside the measurement
            await session.execute(text("SELECT 1"))
        before = await _transactions(observer)
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(count):
            async with new_session() as session:
                await session.execute(text("SELECT 1"))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    # The statistics collector reports a backend's counts when it goes idle; the observer's own queries count too.
    await observer.execute("SELECT pg_sleep(1.2)")
    after = await _transactions(observer)
    return Round((after - before - 3) / count, cpu / count * 1e6, wall / count * 1e6)


async def measure(pg: LocalPostgres, rounds: int, count: int) -> dict[str, list[Round]]:
    """Each variant's rounds."""
    creds = DatabaseCredentials(host="127.0.0.1", port=pg.port, database="postgres", user="postgres", password="")
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{pg.port}/postgres"
    variants: dict[str, Sessions] = {
        "plain": _engine(url, pre_ping=False),
        "pool_pre_ping": _engine(url, pre_ping=True),
        "tenantry-app": _library(creds),
    }
    observer = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{pg.port}/postgres")
    try:
        for variant in variants.values():
            await _round(variant, observer, 200)  # warm-up: imports, prepared statements, the server's caches
        results: dict[str, list[Round]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, variant in variants.items():
                results[name].append(await _round(variant, observer, count))
        return results
    finally:
        await observer.close()


def _report(results: dict[str, list[Round]], rounds: int, count: int) -> None:
    plain_cpu = min(r.cpu_us for r in results["plain"])
    plain_wall = min(r.wall_us for r in results["plain"])
    print(f"{rounds} rounds of {count} sessions; µs per session: fastest round (median round)\n")
    print("| variant | server transactions | app CPU µs | vs plain | wall µs | vs plain |")
    print("|---|---|---|---|---|---|")
    for name, values in results.items():
        cpu = min(r.cpu_us for r in values)
        wall = min(r.wall_us for r in values)
        print(
            f"| {name} | {statistics.median(r.transactions for r in values):.2f} "
            f"| {cpu:.0f} ({statistics.median(r.cpu_us for r in values):.0f}) | {cpu - plain_cpu:+.0f} "
            f"| {wall:.0f} ({statistics.median(r.wall_us for r in values):.0f}) | {wall - plain_wall:+.0f} |"
        )


def main() -> None:
    """Start a throw-away Postgres, measure, print a table."""
    parser = argparse.ArgumentParser(prog="python -m bench.pre_ping", description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sessions", type=int, default=3000)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="tenantry-pre-ping-", dir="/tmp"))
    base.chmod(0o755)
    pg = LocalPostgres(base / "data", log_file=base / "postgres.log")
    pg.start()
    try:
        results = uvloop.run(measure(pg, args.rounds, args.sessions))
    finally:
        pg.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)
    _report(results, args.rounds, args.sessions)


if __name__ == "__main__":
    main()
