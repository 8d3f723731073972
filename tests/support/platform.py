"""A tenant-service installation for tests: its own registry database, template and name prefix.

Each :class:`Installation` lives side by side with any other on the same Postgres server (a shared
``TEST_DATABASE_URL`` included): names are unique per installation and the reconciler only ever touches
objects marked with its own installation id.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[2]


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Installation:
    """Settings (as environment variables) of one isolated tenant-service installation."""

    pg_url: str
    redis_url: str
    suffix: str = field(default_factory=lambda: secrets.token_hex(4))
    admin_token: str = field(default_factory=lambda: "adm-" + secrets.token_urlsafe(24))
    service_token: str = field(default_factory=lambda: "svc-" + secrets.token_urlsafe(24))
    """The tenant apps' token (SERVICE_TOKEN, named "app"): scope credentials:vend only."""
    gateway_token: str = field(default_factory=lambda: "gws-" + secrets.token_urlsafe(24))
    """The gateways' token (GATEWAY_SERVICE_TOKEN, named "gateway"): scope directory:read only."""
    encryption_keys: str = ""
    api_key_hash_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def __post_init__(self) -> None:
        if not self.encryption_keys:
            from tenant_service.secretbox import generate_key

            self.encryption_keys = f"k1:{generate_key()}"

    @property
    def master_db(self) -> str:
        return f"tenantry_test_{self.suffix}"

    @property
    def template(self) -> str:
        return f"tenantry_tpl_{self.suffix}"

    @property
    def prefix(self) -> str:
        return f"t{self.suffix}_"

    @property
    def database_url(self) -> str:
        return with_database(self.pg_url, self.master_db)

    def env(self, **overrides: str) -> dict[str, str]:
        """Environment variables for the service, the CLI or an in-process settings read."""
        values = {
            "DATABASE_URL": self.database_url,
            "TENANT_DATABASE_URL": self.pg_url,
            "REDIS_URL": self.redis_url,
            "ADMIN_TOKEN": self.admin_token,
            "SERVICE_TOKEN": self.service_token,
            "GATEWAY_SERVICE_TOKEN": self.gateway_token,
            "SERVICE_TOKEN_SCOPES": "app=credentials:vend",
            "ENCRYPTION_KEYS": self.encryption_keys,
            "API_KEY_HASH_SECRET": self.api_key_hash_secret,
            "TEMPLATE_DATABASE": self.template,
            "TENANT_DB_PREFIX": self.prefix,
            "UPSTREAM_ALLOWLIST": "127.0.0.1,localhost,::1",
            "LOG_FORMAT": "json",
            "RECONCILE_INTERVAL_SECONDS": "3600",
        }
        values.update(overrides)
        return values

    @contextmanager
    def environ(self, **overrides: str) -> Iterator[None]:
        """Temporarily export :meth:`env` into ``os.environ`` (for in-process ``Settings.from_env()``)."""
        saved = dict(os.environ)
        os.environ.update(self.env(**overrides))
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def settings(self, **overrides: str) -> Any:
        """``Settings`` read from :meth:`env`."""
        from tenant_service.config import Settings

        with self.environ(**overrides):
            return Settings.from_env()

    async def create(self) -> None:
        """Create the registry database, then migrate the registry and the template."""
        conn = await asyncpg.connect(self.pg_url)
        try:
            await conn.execute(f'CREATE DATABASE "{self.master_db}"')
        finally:
            await conn.close()
        self.cli("migrate")

    async def drop(self) -> None:
        """Remove every database and role of this installation."""
        conn = await asyncpg.connect(self.pg_url)
        try:
            dbs = await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname = ANY($1) OR starts_with(datname, $2)",
                [self.master_db, self.template],
                self.prefix,
            )
            for row in dbs:  # a hostile tenant may have flagged its database IS_TEMPLATE, which DROP refuses
                await conn.execute(f'ALTER DATABASE "{row["datname"]}" IS_TEMPLATE false')
                await conn.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
            roles = await conn.fetch(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1) OR rolname = $2",
                self.prefix,
                f"{self.template}_owner",
            )
            for row in roles:
                await conn.execute(f'DROP ROLE IF EXISTS "{row["rolname"]}"')
        finally:
            await conn.close()

    def cli(self, *args: str, check: bool = True, env: dict[str, str] | None = None, timeout: float = 300) -> Any:
        """Run ``tenantctl`` as a real process; returns the CompletedProcess."""
        result = subprocess.run(
            [sys.executable, "-m", "tenant_service", *args],
            env={**os.environ, **self.env(), **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=ROOT,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"tenantctl {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return result


class ServiceProcess:
    """The tenant-service started as a real process (``python -m tenant_service serve``)."""

    def __init__(self, installation: Installation, log_path: Path, **env: str) -> None:
        self.installation = installation
        self.port = free_port()
        self.log_path = log_path
        self.extra_env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30, **env: str) -> ServiceProcess:
        """Start and wait until ``/healthz`` answers."""
        merged = {**os.environ, **self.installation.env(**self.extra_env, **env), "TENANT_SERVICE_PORT": str(self.port)}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tenant_service", "serve"],
                env=merged,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"tenant-service exited early:\n{self.log()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"tenant-service did not become healthy:\n{self.log()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` and wait for the process to end; returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def wait_exit(self, timeout: float = 30) -> int:
        """Wait for the process to end by itself (e.g. a ``kill`` failpoint)."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), killing if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def log(self) -> str:
        """Everything the process wrote."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, token: str | None = None) -> httpx.Client:
        """An HTTP client with the admin token (or ``token``)."""
        bearer = token if token is not None else self.installation.admin_token
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {bearer}"}, timeout=60)


async def wait_for(predicate: Any, timeout: float = 10, interval: float = 0.05) -> Any:
    """Poll an async or sync predicate until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


def wait_until(predicate: Any, timeout: float = 5.0, interval: float = 0.05) -> float:
    """Poll a synchronous predicate until it is truthy; return the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout:.1f}s")


@contextlib.asynccontextmanager
async def template_open(pg_url: str, template: str) -> AsyncIterator[asyncpg.Connection]:
    """The template accepts connections for the block (it refuses them otherwise); yields a superuser
    connection to the maintenance database."""
    admin = await asyncpg.connect(pg_url, timeout=10)
    try:
        await admin.execute(f'ALTER DATABASE "{template}" ALLOW_CONNECTIONS true')
        try:
            yield admin
        finally:
            await admin.execute(f'ALTER DATABASE "{template}" ALLOW_CONNECTIONS false')
    finally:
        await admin.close()


async def directory_page(api: httpx.AsyncClient, installation: Installation, since: int = 0) -> dict[str, Any]:
    """``GET /internal/v1/directory/?since=`` with the installation's gateway token (what gateways sync from)."""
    response = await api.get(
        "/internal/v1/directory/",
        params={"since": since},
        headers={"Authorization": f"Bearer {installation.gateway_token}"},
    )
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def cluster_objects(pg_url: str, prefix: str) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """Databases and roles whose name starts with ``prefix``, with their COMMENT (the ownership marker)."""
    conn = await asyncpg.connect(pg_url)
    try:
        dbs = await conn.fetch(
            "SELECT datname AS n, shobj_description(oid, 'pg_database') AS c FROM pg_database "
            "WHERE starts_with(datname, $1)",
            prefix,
        )
        roles = await conn.fetch(
            "SELECT rolname AS n, shobj_description(oid, 'pg_authid') AS c FROM pg_roles "
            "WHERE starts_with(rolname, $1)",
            prefix,
        )
    finally:
        await conn.close()
    return {r["n"]: r["c"] for r in dbs}, {r["n"]: r["c"] for r in roles}


async def registry(inst: Installation, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Rows of a query on the installation's registry (master) database."""
    conn = await asyncpg.connect(inst.database_url, timeout=10)
    try:
        return list(await conn.fetch(sql, *args, timeout=30))
    finally:
        await conn.close()


async def tenant_row(inst: Installation, slug: str) -> asyncpg.Record | None:
    """The registry row of a tenant, or None."""
    rows = await registry(inst, "SELECT * FROM tenants WHERE slug = $1", slug)
    return rows[0] if rows else None


async def assert_no_orphans(inst: Installation, pg_url: str) -> list[asyncpg.Record]:
    """Nobody stuck half-way; every live tenant has its database and role; nothing of ours is unreferenced."""
    rows = await registry(inst, "SELECT id, slug, status, db_name, db_role FROM tenants")
    stuck = [r["slug"] for r in rows if r["status"] in ("provisioning", "deleting")]
    assert not stuck, f"tenants stuck: {stuck}"
    dbs, roles = await cluster_objects(pg_url, inst.prefix)
    live = [r for r in rows if r["status"] in ("active", "suspended", "deleted")]
    assert set(dbs) == {r["db_name"] for r in live}, "databases without a live tenant, or missing ones"
    assert set(roles) == {r["db_role"] for r in live}, "roles without a live tenant, or missing ones"
    return rows


@contextlib.asynccontextmanager
async def in_process(inst: Installation, **env: str) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The tenant-service app in-process on ``inst`` (``env`` overrides), with a context of its own, served on the
    test's event loop so gathered requests really overlap; yields the admin client and the context."""
    from tenant_service.app import create_app
    from tenant_service.context import AppContext

    ctx = AppContext.build(inst.settings(**env))
    app = create_app(ctx, run_background=False)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver.local",
            headers={"Authorization": f"Bearer {inst.admin_token}"},
            timeout=60,
        ) as client:
            yield client, ctx
    finally:
        await app.state.background.stop()
        await ctx.close()
