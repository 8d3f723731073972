"""The platform under test, as real processes: throw-away PostgreSQL and Redis, tenant-service installations,
gateways and the notes app (tenantry_devtools' launchers with the bench's settings), with all state in the run's
temporary directory."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import asyncpg
import httpx

from bench.procs import Registry, pin
from bench.redisstats import RedisStats
from tenantry_devtools.platform import GatewayProcess, Installation, Tenant, TenantServiceProcess
from tenantry_devtools.servers import LocalPostgres, LocalRedis, ensure_binaries

ROOT: Final = Path(__file__).resolve().parents[1]
#: Bytecode cache of the child Python processes, outside the repository and kept between runs (a deployed
#: service starts from compiled bytecode too; tenantry_devtools.processes.use_bytecode_cache).
PYCACHE: Final = Path("/tmp/tenantry-bench-pycache")  # noqa: S108 - a cache, not a secret
BASE_DOMAIN: Final = "localhost"
BENCH_PLAN: Final = "bench"
#: High enough that wrk is never rate-limited (checked: every run counts non-2xx answers).
BENCH_LIMITS: Final = {"requests_per_minute": 10**11, "requests_per_day": 10**12, "max_connections": 5}
#: Seconds a platform server may take to become ready on a loaded machine.
START_TIMEOUT: Final = 90.0
#: Every gateway of the bench: no access log and warnings only (the work per request is what is measured).
BENCH_GATEWAY_SETTINGS: Final = {"ACCESS_LOG": "false", "LOG_LEVEL": "WARNING"}


def run_async(coro: Any) -> Any:
    """Run a coroutine to completion from the synchronous harness."""
    return asyncio.run(coro)


class Backends:
    """Throw-away PostgreSQL and Redis on free ports under ``root`` (never the machine's 5432 / 6379)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs = root / "logs"
        self.postgres = LocalPostgres(root / "postgres", log_file=self.logs / "postgres.log")
        self.redis = LocalRedis(root / "redis", log_file=self.logs / "redis.log")
        self.redis_stats: RedisStats | None = None

    def start(self, registry: Registry) -> None:
        """Install missing server binaries (apt-get), then start both servers."""
        ensure_binaries(install=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        registry.on_exit("postgres", self.postgres.stop)
        self.postgres.start(timeout=120)
        registry.on_exit("redis", self.redis.stop)
        self.redis.start()
        self.redis_stats = RedisStats(self.redis.url)

    @property
    def pg_url(self) -> str:
        """Superuser URL of the ``postgres`` database."""
        return self.postgres.url

    @property
    def redis_url(self) -> str:
        """URL of Redis database 0."""
        return self.redis.url

    @property
    def pg_log(self) -> Path:
        """The PostgreSQL server log (errors such as "source database is being accessed" land here)."""
        return self.postgres.log_file

    def stats(self) -> RedisStats:
        """Command counters of the Redis server."""
        if self.redis_stats is None:
            raise RuntimeError("Redis is not started")
        return self.redis_stats

    def pin_redis(self, cpus: str) -> None:
        """Pin the Redis server (every thread) to ``cpus``."""
        pin(self.stats().pid(), cpus)

    def unpin_redis(self) -> None:
        """Let the Redis server run on every core again."""
        pin(self.stats().pid(), ",".join(str(c) for c in sorted(os.sched_getaffinity(0))))

    def postgres_pid(self) -> int:
        """The postmaster's process id (first line of postmaster.pid)."""
        return int((self.postgres.data_dir / "postmaster.pid").read_text().splitlines()[0])

    def postgres_version(self) -> str:
        """``server_version`` of the PostgreSQL server."""
        return str(run_async(_fetchval(self.pg_url, "SHOW server_version")))


async def _fetchval(url: str, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return await conn.fetchval(query, *args, timeout=60)
    finally:
        await conn.close(timeout=5)


# --------------------------------------------------------------------------- processes of the platform


def installation(backends: Backends, label: str, *, pg_url: str | None = None) -> Installation:
    """An installation of its own on the run's servers, or on the PostgreSQL of ``pg_url`` (registry
    ``tenantry_bench_<label>_<hex>``), not created."""
    return Installation.isolated(pg_url or backends.pg_url, backends.redis_url, label=f"bench_{label}")


def tenant_service(
    inst: Installation, logs: Path, *, cpus: str | None = None, name: str = "tenant-service", **extra: str
) -> TenantServiceProcess:
    """The tenant-service of ``inst`` on a free port, logging to ``logs/<name>.log`` (not started)."""
    return TenantServiceProcess(inst, logs / f"{name}.log", env=extra, name=name, cpus=cpus)


def gateway(
    inst: Installation,
    tenant_service_url: str,
    upstream_url: str,
    logs: Path,
    *,
    name: str,
    cpus: str | None,
    workers: int = 1,
    mode: str | None = None,
    env: dict[str, str] | None = None,
) -> GatewayProcess:
    """A gateway with the bench's settings (access log off, log level WARNING, ``workers`` workers, ``mode``, then
    ``env``) on a free port, logging to ``logs/<name>.log`` (not started)."""
    settings = {**BENCH_GATEWAY_SETTINGS, "GATEWAY_WORKERS": str(workers), **(env or {})}
    if mode is not None:
        settings["GATEWAY_MODE"] = mode
    return GatewayProcess(
        inst, tenant_service_url, upstream_url, logs / f"{name}.log", env=settings, name=name, cpus=cpus
    )


class Admin:
    """The tenant-service's admin API."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url
        self._token = token
        self._http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=120)
        self.created: list[Tenant] = []

    def client(self) -> httpx.Client:
        """A new client (one per worker thread: httpx clients are not shared between threads here)."""
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {self._token}"}, timeout=120)

    def put_plan(self, name: str = BENCH_PLAN, limits: dict[str, int] | None = None) -> None:
        """Create or replace a plan."""
        response = self._http.put(f"/admin/plans/{name}", json={"limits": limits or BENCH_LIMITS})
        if response.status_code != 200:
            raise RuntimeError(f"PUT /admin/plans/{name}: {response.status_code} {response.text[:500]}")

    def create_tenant(self, slug: str, plan: str | None = BENCH_PLAN, client: httpx.Client | None = None) -> Tenant:
        """``POST /admin/tenants`` (synchronous: answers once the database exists)."""
        body: dict[str, Any] = {"slug": slug, "name": slug}
        if plan is not None:
            body["plan"] = plan
        response = (client or self._http).post("/admin/tenants", json=body)
        if response.status_code != 201:
            raise RuntimeError(f"POST /admin/tenants {slug}: {response.status_code} {response.text[:500]}")
        tenant = Tenant.from_created(response.json())
        self.created.append(tenant)
        return tenant

    def create_many(self, slugs: list[str], workers: int, plan: str | None = BENCH_PLAN) -> tuple[float, list[str]]:
        """Create ``slugs`` with ``workers`` threads (one HTTP client each); return the wall seconds and errors."""
        clients = [self.client() for _ in range(workers)]
        chunks = [slugs[i::workers] for i in range(workers)]
        errors: list[str] = []

        def work(index: int) -> None:
            for slug in chunks[index]:
                try:
                    self.create_tenant(slug, plan=plan, client=clients[index])
                except (RuntimeError, httpx.HTTPError) as exc:
                    errors.append(str(exc))

        try:
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(work, range(workers)))
            return time.perf_counter() - started, errors
        finally:
            for client in clients:
                client.close()

    def close(self) -> None:
        """Release the client."""
        self._http.close()


def gateway_accepts(gateway_url: str, tenant: Tenant, path: str = "/bench") -> bool:
    """Whether the gateway forwards a request of ``tenant`` (it knows the tenant and its key)."""
    try:
        response = httpx.get(
            gateway_url + path, headers={"X-API-Key": tenant.key, "Host": f"{tenant.slug}.{BASE_DOMAIN}"}, timeout=5
        )
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def access_token(gateway_url: str, tenant: Tenant) -> str:
    """An access token (JWT) for ``tenant`` from ``POST /_gateway/token``."""
    response = httpx.post(gateway_url + "/_gateway/token", headers={"X-API-Key": tenant.key}, timeout=10)
    if response.status_code != 200:
        raise RuntimeError(f"POST /_gateway/token: {response.status_code} {response.text[:300]}")
    token: str = response.json()["access_token"]
    return token


def count_in_file(path: Path, needles: tuple[str, ...], offset: int = 0) -> int:
    """Lines of ``path`` after byte ``offset`` that contain any of ``needles``."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if any(n in line for n in needles))


def file_size(path: Path) -> int:
    """Size in bytes, 0 when missing."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


# --------------------------------------------------------------------------- tools and machine


_APT_PACKAGES: Final = {"nginx": ("nginx-light", "nginx"), "wrk": ("wrk",), "psql": ("postgresql-client",)}


def _have(tool: str) -> bool:
    return shutil.which(tool) is not None or any(
        Path(d, tool).exists() for d in ("/usr/sbin", "/usr/local/sbin", "/usr/bin")
    )


def ensure_tools() -> list[str]:
    """Install nginx, wrk and psql with apt-get when missing (root on Debian/Ubuntu); return what was installed.

    A temporary ``policy-rc.d`` keeps the freshly installed nginx package from starting the system's nginx.

    Raises:
        RuntimeError: something is missing and cannot be installed here.
    """
    missing = [tool for tool in _APT_PACKAGES if not _have(tool)]
    if not missing:
        return []
    apt_get = shutil.which("apt-get")
    if apt_get is None or os.geteuid() != 0:
        raise RuntimeError(f"missing {', '.join(missing)}: install them (apt-get install nginx-light wrk)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:
        policy.write_text("#!/bin/sh\n# Written by Tenantry's make bench while installing packages.\nexit 101\n")
        policy.chmod(0o755)
    installed: list[str] = []
    try:
        subprocess.run([apt_get, "update"], env=env, check=True, timeout=600, stdin=subprocess.DEVNULL)  # noqa: S603
        for tool in missing:
            for package in _APT_PACKAGES[tool]:
                done = subprocess.run(  # noqa: S603 - fixed argv
                    [apt_get, "install", "-y", "--no-install-recommends", package],
                    env=env,
                    timeout=900,
                    check=False,
                    stdin=subprocess.DEVNULL,
                )
                if done.returncode == 0 and _have(tool):
                    installed.append(package)
                    break
            else:
                raise RuntimeError(f"could not install {tool} with apt-get")
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)
    return installed


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)  # noqa: S603
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": os.uname().release,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": sys.version.split()[0],
        "nginx": _version([shutil.which("nginx") or "/usr/sbin/nginx", "-v"]),
        "wrk": _version(["wrk", "-v"]),
        "redis": _version([shutil.which("redis-server") or "redis-server", "--version"]),
    }
