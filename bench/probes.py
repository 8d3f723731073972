"""Where the time goes in the two slow paths of sections 3 and 5, step by step (``python -m bench.probes``).

* ``cold``: a tenant app's first query for a tenant (credential vend over HTTP, engine creation, connection with
  SCRAM, SQLAlchemy's first-connect dialect initialisation, the query) next to a warm query; the tenant-service
  runs as a real process, the app's database layer (tenantry_app.TenantDatabases) in this process.
* ``provision``: a synchronous tenant create in this process (registry writes, CREATE ROLE, the clone, grants,
  activation; REASSIGN OWNED in the new database only for a template made by an earlier version) next to a raw
  CREATE DATABASE of the same template.

Each step is timed by wrapping the library function that performs it; the numbers are medians in milliseconds.
Everything runs on throw-away servers in a temporary directory, like ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.platform import PYCACHE, START_TIMEOUT, Admin, Backends, installation, tenant_service
from bench.procs import Registry
from bench.results import median
from tenantry_devtools.platform import Installation
from tenantry_devtools.processes import use_bytecode_cache

Timings = dict[str, list[float]]


def _record(timings: Timings, name: str, started: float) -> None:
    timings.setdefault(name, []).append((time.perf_counter() - started) * 1000)


def _time_async(timings: Timings, owner: Any, attribute: str, name: str) -> None:
    original = getattr(owner, attribute)

    @functools.wraps(original)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            _record(timings, name, started)

    setattr(owner, attribute, timed)


def _time_sync(timings: Timings, owner: Any, attribute: str, name: str) -> None:
    original = getattr(owner, attribute)

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            _record(timings, name, started)

    setattr(owner, attribute, timed)


def _print(title: str, timings: Timings) -> None:
    print(title)
    for name, values in timings.items():
        print(f"  {name:<46} n={len(values):<4} median {median(values):8.2f} ms")


async def _cold(admin: Admin, service_url: str, service_token: str, tenants: int) -> Timings:
    import asyncpg  # noqa: PLC0415 - instrumented below
    from sqlalchemy import text  # noqa: PLC0415
    from sqlalchemy.dialects.postgresql import asyncpg as sa_asyncpg  # noqa: PLC0415

    from tenantry_app.credentials import CredentialClient  # noqa: PLC0415
    from tenantry_app.databases import TenantDatabases  # noqa: PLC0415

    timings: Timings = {}
    _time_async(timings, CredentialClient, "get", "credentials.get (vend over HTTP; cached after)")
    _time_sync(timings, TenantDatabases, "_create", "create_async_engine")
    _time_async(timings, asyncpg, "connect", "asyncpg.connect (new backend, SCRAM)")
    dialect = sa_asyncpg.PGDialect_asyncpg
    _time_async(timings, dialect, "setup_asyncpg_json_codec", "SQLAlchemy json codec setup (each connection)")
    _time_async(timings, dialect, "setup_asyncpg_jsonb_codec", "SQLAlchemy jsonb codec setup (each connection)")
    _time_sync(timings, dialect, "initialize", "SQLAlchemy dialect initialize (first connect)")
    created = [admin.create_tenant(f"cold-{i:03d}", plan=None) for i in range(tenants + 1)]
    credentials = CredentialClient(service_url, service_token)
    databases = TenantDatabases(credentials, budget=tenants + 1)
    query = text("SELECT id, body, created_at FROM notes ORDER BY id DESC LIMIT 200")

    async def run(tenant_id: str, name: str | None) -> None:
        started = time.perf_counter()
        async with databases.session(tenant_id) as session:
            (await session.execute(query)).all()
        if name:
            _record(timings, name, started)

    try:
        warm = created[0].id
        for _ in range(20):
            await run(warm, None)
        timings.clear()
        for tenant in created[1:]:
            for _ in range(5):
                await run(warm, "WARM query (session + SELECT)")
            await run(tenant.id, "COLD query (first for the tenant), total")
    finally:
        await databases.close()
        await credentials.close()
    return timings


async def _provision(inst: Installation, tenants: int) -> Timings:
    import asyncpg  # noqa: PLC0415

    from tenant_service.config import Settings  # noqa: PLC0415
    from tenant_service.context import AppContext  # noqa: PLC0415
    from tenant_service.provisioning import cluster, provisioner  # noqa: PLC0415
    from tenant_service.tenants.schemas import TenantCreate  # noqa: PLC0415
    from tenant_service.tenants.service import TenantService  # noqa: PLC0415

    timings: Timings = {}
    steps: list[tuple[Any, str, str]] = [
        (TenantService, "create", "TenantService.create, total"),
        (provisioner.Provisioner, "provision", "  provision (after the registry insert)"),
        (cluster.TenantCluster, "ensure_role", "    ensure_role (CREATE ROLE + COMMENT, pooled conn)"),
        (cluster.TenantCluster, "ensure_database", "    ensure_database (clone, COMMENT/REVOKE/GRANT)"),
        (cluster.TenantCluster, "_clone", "      CREATE DATABASE ... TEMPLATE (the clone)"),
        (cluster.TenantCluster, "secure_database", "    secure_database (earlier templates only)"),
    ]
    for owner, attribute, name in steps:
        _time_async(timings, owner, attribute, name)
    _time_async(timings, asyncpg, "connect", "asyncpg.connect (new admin connections)")
    os.environ.update(inst.env())
    ctx = AppContext.build(Settings.from_env())
    try:
        service = TenantService(ctx)
        await service.create(TenantCreate(slug="warm", name="warm"), actor="probe")
        timings.clear()
        conn = await asyncpg.connect(inst.pg_url, timeout=10)
        try:
            for i in range(tenants):
                await service.create(TenantCreate(slug=f"probe-{i:03d}", name="probe"), actor="probe")
                started = time.perf_counter()
                await conn.execute(
                    f'CREATE DATABASE "{inst.prefix}raw_{i}" TEMPLATE "{inst.template}" STRATEGY WAL_LOG'
                )
                _record(timings, "raw CREATE DATABASE (open connection)", started)
        finally:
            await conn.close(timeout=5)
    finally:
        await ctx.close()
    return timings


def main(argv: list[str] | None = None) -> None:
    """Run one probe and print its table."""
    parser = argparse.ArgumentParser(prog="python -m bench.probes", description=__doc__)
    parser.add_argument("probe", choices=["cold", "provision"])
    parser.add_argument("-n", type=int, default=20, help="tenants to measure")
    args = parser.parse_args(argv)
    use_bytecode_cache(PYCACHE)
    root = Path(tempfile.mkdtemp(prefix="tenantry-probe-"))
    root.chmod(0o755)
    registry = Registry()
    backends = Backends(root)
    inst: Installation | None = None
    try:
        backends.start(registry)
        inst = installation(backends, "probe")
        asyncio.run(inst.create())
        if args.probe == "cold":
            service = registry.add(tenant_service(inst, root / "logs")).start(timeout=START_TIMEOUT)
            admin = Admin(service.url, inst.admin_token)
            try:
                timings = asyncio.run(_cold(admin, service.url, inst.service_token, args.n))
            finally:
                admin.close()
            _print(f"cold vs warm tenant query, {args.n} cold tenants (ms)", timings)
        else:
            _print(f"synchronous tenant create, {args.n} tenants (ms)", asyncio.run(_provision(inst, args.n)))
    finally:
        registry.stop_since(0)
        if inst is not None:
            with contextlib.suppress(Exception):  # nothing to drop when the servers never came up
                asyncio.run(inst.drop())
        registry.stop_all()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
