"""The platform on one machine: the settings of an installation and its servers, for the tests, ``make bench`` and
``make dev`` alike.

* :class:`Installation`: what one tenant-service installation is made of (registry database, template, name
  prefix, tokens and keys) as the environment its processes read; :meth:`Installation.isolated` makes one that
  lives side by side with any other on the same servers.
* :class:`TenantServiceProcess`, :class:`GatewayProcess`, :class:`NotesProcess`: the three servers of an
  installation, each with the settings it needs and only those; :class:`Platform` starts all three.

Nothing here imports application code at import time (a process reads its settings when it starts; tests set the
environment's defaults before the first application import).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tenantry_devtools.platform_secrets import new_secret
from tenantry_devtools.processes import ROOT, ServerProcess, free_port

if TYPE_CHECKING:
    import httpx

    from tenant_service.config import Settings

#: The settings that hold an installation's secrets, and the :class:`Installation` field of each.
SECRET_SETTINGS: Final = {
    "ADMIN_TOKEN": "admin_token",
    "SERVICE_TOKEN": "service_token",
    "GATEWAY_SERVICE_TOKEN": "gateway_token",
    "ENCRYPTION_KEYS": "encryption_keys",
    "API_KEY_HASH_SECRET": "api_key_hash_secret",
    "JWT_SIGNING_KEYS": "jwt_signing_keys",
}
#: Settings of an installation that shares its machine with others: upstreams on the loopback host only, and no
#: periodic reconciler pass in the middle of a test or a measurement (whoever needs one runs it).
ISOLATED_SETTINGS: Final = {
    "UPSTREAM_ALLOWLIST": "127.0.0.1,localhost,::1",
    "RECONCILE_INTERVAL_SECONDS": "3600",
    "LOG_FORMAT": "json",
}


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


class TenantctlError(RuntimeError):
    """``tenantctl`` exited with an error."""


@dataclass
class Installation:
    """The settings of one tenant-service installation, as the environment its processes read."""

    pg_url: str
    """Superuser URL of the PostgreSQL cluster the tenant databases live on (``TENANT_DATABASE_URL``)."""
    redis_url: str
    """``REDIS_URL`` of every process."""
    master_db: str
    """The registry database."""
    template: str | None = None
    """The template tenant databases are cloned from (``TEMPLATE_DATABASE``; None: the service's default)."""
    prefix: str | None = None
    """Prefix of tenant database and role names (``TENANT_DB_PREFIX``; None: the service's default)."""
    registry_url: str | None = None
    """``DATABASE_URL`` when the registry is not ``master_db`` on ``pg_url``'s server."""
    admin_token: str = field(default_factory=partial(new_secret, "ADMIN_TOKEN"))
    service_token: str = field(default_factory=partial(new_secret, "SERVICE_TOKEN"))
    """The tenant apps' token (``SERVICE_TOKEN``, named "app"): scope credentials:vend only."""
    gateway_token: str = field(default_factory=partial(new_secret, "GATEWAY_SERVICE_TOKEN"))
    """The gateways' token (``GATEWAY_SERVICE_TOKEN``, named "gateway"): scope directory:read only."""
    encryption_keys: str = field(default_factory=partial(new_secret, "ENCRYPTION_KEYS"))
    api_key_hash_secret: str = field(default_factory=partial(new_secret, "API_KEY_HASH_SECRET"))
    jwt_signing_keys: str = field(default_factory=partial(new_secret, "JWT_SIGNING_KEYS"))
    """The gateways' signing keys (``JWT_SIGNING_KEYS``), unless a gateway is given others."""
    settings_env: dict[str, str] = field(default_factory=dict)
    """Further tenant-service settings (environment variables)."""

    @classmethod
    def isolated(cls, pg_url: str, redis_url: str, label: str = "test") -> Self:
        """An installation whose names are its own (``tenantry_<label>_<hex>``, ``tenantry_tpl_<hex>``,
        ``t<hex>_``), so that it lives side by side with any other on the same servers: the reconciler only ever
        touches objects marked with its own installation id."""
        suffix = secrets.token_hex(4)
        store = Path(tempfile.gettempdir()) / f"tenantry-backups-{suffix}"
        return cls(
            pg_url=pg_url,
            redis_url=redis_url,
            master_db=f"tenantry_{label}_{suffix}",
            template=f"tenantry_tpl_{suffix}",
            prefix=f"t{suffix}_",
            settings_env={**ISOLATED_SETTINGS, "BACKUP_STORE_URL": store.as_uri()},
        )

    @property
    def backup_dir(self) -> Path | None:
        """The directory of a ``file://`` backup store (None for another store)."""
        url = self.settings_env.get("BACKUP_STORE_URL", "")
        return Path(url.removeprefix("file://")) if url.startswith("file://") else None

    @property
    def database_url(self) -> str:
        """The registry's URL (``DATABASE_URL``)."""
        return self.registry_url or with_database(self.pg_url, self.master_db)

    def secret_env(self) -> dict[str, str]:
        """The secrets, by setting name."""
        return {name: getattr(self, attribute) for name, attribute in SECRET_SETTINGS.items()}

    def with_secrets(self, values: Mapping[str, str]) -> Self:
        """A copy whose secrets are taken from ``values`` (by setting name) where it has a non-empty one."""
        copy = dataclasses.replace(self)
        for name, attribute in SECRET_SETTINGS.items():
            if values.get(name):
                setattr(copy, attribute, values[name])
        return copy

    def with_settings(self, values: Mapping[str, str]) -> Self:
        """A copy whose processes get ``values`` on top of its settings (the same registry, template, prefix)."""
        return dataclasses.replace(self, settings_env={**self.settings_env, **values})

    def env(self, **overrides: str) -> dict[str, str]:
        """Environment variables of the tenant-service and ``tenantctl`` (``overrides`` on top)."""
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
        }
        if self.template is not None:
            values["TEMPLATE_DATABASE"] = self.template
        if self.prefix is not None:
            values["TENANT_DB_PREFIX"] = self.prefix
        return {**values, **self.settings_env, **overrides}

    @contextlib.contextmanager
    def environ(self, **overrides: str) -> Iterator[None]:
        """Export :meth:`env` into ``os.environ`` for the block (for an in-process settings read)."""
        saved = dict(os.environ)
        os.environ.update(self.env(**overrides))
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def settings(self, **overrides: str) -> Settings:
        """The tenant-service's ``Settings`` read from :meth:`env` (imports the service)."""
        from tenant_service.config import Settings  # noqa: PLC0415 - after the caller's environment is in place

        with self.environ(**overrides):
            return Settings.from_env()

    def tenantctl(
        self, *args: str, check: bool = True, env: Mapping[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run ``tenantctl <args>`` (``python -m tenant_service``) on this installation as a real process.

        Raises:
            TenantctlError: it failed and ``check`` is set (with its stderr's tail).
        """
        done = subprocess.run(  # noqa: S603 - fixed argv
            [sys.executable, "-m", "tenant_service", *args],
            env={**os.environ, **self.env(), **(env or {})},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise TenantctlError(f"tenantctl {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return done

    async def create(self, *, exist_ok: bool = False) -> subprocess.CompletedProcess[str]:
        """Create the registry database (unless ``exist_ok`` and it exists), then migrate the registry and the
        template (``tenantctl migrate``); return the migration's run."""
        conn = await asyncpg.connect(self.pg_url, timeout=10)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", self.master_db)
            if not (exist_ok and exists):
                await conn.execute(f'CREATE DATABASE "{self.master_db}"', timeout=300)
        finally:
            await conn.close(timeout=5)
        return self.tenantctl("migrate")

    async def drop(self) -> None:
        """Drop every database and role of this installation (its names, so only for isolated ones).

        Raises:
            RuntimeError: the installation has the service's default names, which other installations share.
        """
        if self.template is None or self.prefix is None:
            raise RuntimeError("only an installation with names of its own can be dropped")
        conn = await asyncpg.connect(self.pg_url, timeout=10)
        try:
            databases = await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname = ANY($1) OR starts_with(datname, $2)",
                [self.master_db, self.template],
                self.prefix,
            )
            for row in databases:  # a hostile tenant may have flagged its database IS_TEMPLATE, which DROP refuses
                await conn.execute(f'ALTER DATABASE "{row["datname"]}" IS_TEMPLATE false')
                await conn.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)', timeout=300)
            roles = await conn.fetch(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1) OR rolname = $2",
                self.prefix,
                f"{self.template}_owner",
            )
            for row in roles:
                await conn.execute(f'DROP ROLE IF EXISTS "{row["rolname"]}"', timeout=60)
        finally:
            await conn.close(timeout=5)
        if self.backup_dir is not None:
            shutil.rmtree(self.backup_dir, ignore_errors=True)


@dataclass(frozen=True)
class Tenant:
    """A tenant as the admin API created it, with its first API key."""

    id: str
    slug: str
    key: str
    key_id: str
    database: str

    @classmethod
    def from_created(cls, body: Mapping[str, Any]) -> Tenant:
        """From the body of a ``201`` to ``POST /admin/tenants``."""
        return cls(
            id=body["id"],
            slug=body["slug"],
            key=body["api_key"]["key"],
            key_id=body["api_key"]["id"],
            database=body["database"]["name"],
        )


class PlatformProcess(ServerProcess):
    """One of the platform's servers, ``python -m <module>``, for an installation, on a free port unless told one.

    Its environment: this process's without the installation's secrets it is not given (not even exported ones),
    then ``settings`` (what it needs), then ``env`` (the caller's further settings).
    """

    def __init__(
        self,
        installation: Installation,
        module: Sequence[str],
        log_path: Path,
        settings: Mapping[str, str],
        env: Mapping[str, str] | None,
        *,
        name: str,
        port: int,
        cpus: str | None,
        pid_file: Path | None,
    ) -> None:
        self.installation = installation
        super().__init__(
            name,
            [sys.executable, "-m", *module],
            log_path,
            env={**settings, **(env or {})},
            port=port,
            cpus=cpus,
            pid_file=pid_file,
            withheld=SECRET_SETTINGS.keys() - settings.keys(),
        )


class TenantServiceProcess(PlatformProcess):
    """``python -m tenant_service serve`` on an installation (all of its settings)."""

    def __init__(
        self,
        installation: Installation,
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        name: str = "tenant-service",
        cpus: str | None = None,
        pid_file: Path | None = None,
    ) -> None:
        """``env``: settings on top of the installation's."""
        port = port or free_port()
        settings = {**installation.env(**(env or {})), "TENANT_SERVICE_PORT": str(port)}
        super().__init__(
            installation,
            ["tenant_service", "serve"],
            log_path,
            settings,
            None,
            name=name,
            port=port,
            cpus=cpus,
            pid_file=pid_file,
        )

    def client(self, token: str | None = None) -> httpx.Client:
        """An HTTP client with the admin token (or ``token``)."""
        return super().client(token if token is not None else self.installation.admin_token)


class GatewayProcess(PlatformProcess):
    """``python -m gateway`` in front of one tenant-service: the gateway's own token, the installation's key-hash
    secret, Redis and signing keys (or ``signing_keys``)."""

    ready_path = "/_gateway/readyz"

    def __init__(
        self,
        installation: Installation,
        tenant_service_url: str,
        upstream_url: str,
        log_path: Path,
        signing_keys: str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        name: str = "gateway",
        cpus: str | None = None,
        pid_file: Path | None = None,
    ) -> None:
        """``upstream_url``: ``DEFAULT_UPSTREAM``; ``env``: further gateway settings."""
        port = port or free_port()
        settings = {
            "GATEWAY_PORT": str(port),
            "TENANT_SERVICE_URL": tenant_service_url,
            "GATEWAY_SERVICE_TOKEN": installation.gateway_token,
            "REDIS_URL": installation.redis_url,
            "API_KEY_HASH_SECRET": installation.api_key_hash_secret,
            "JWT_SIGNING_KEYS": signing_keys or installation.jwt_signing_keys,
            "DEFAULT_UPSTREAM": upstream_url,
            "BASE_DOMAIN": "localhost",
            "LOG_FORMAT": "json",
        }
        super().__init__(
            installation, ["gateway"], log_path, settings, env, name=name, port=port, cpus=cpus, pid_file=pid_file
        )


class NotesProcess(PlatformProcess):
    """The example app, ``python -m notes_app``, behind a gateway (whose keys it trusts): of the installation's
    secrets, the apps' service token only."""

    def __init__(
        self,
        installation: Installation,
        tenant_service_url: str,
        gateway_url: str,
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        app_name: str | None = None,
        name: str = "notes",
        cpus: str | None = None,
        pid_file: Path | None = None,
    ) -> None:
        """``app_name``: ``APP_NAME`` (its Postgres connections' ``application_name``); ``env``: further settings."""
        self.app_name = app_name
        port = port or free_port()
        settings = {
            "APP_PORT": str(port),
            "TENANT_SERVICE_URL": tenant_service_url,
            "SERVICE_TOKEN": installation.service_token,
            "REDIS_URL": installation.redis_url,
            "GATEWAY_JWKS_URL": gateway_url + "/_gateway/jwks.json",
            "LOG_FORMAT": "json",
            **({"APP_NAME": app_name} if app_name else {}),
        }
        super().__init__(
            installation, ["notes_app"], log_path, settings, env, name=name, port=port, cpus=cpus, pid_file=pid_file
        )

    def engines(self) -> int:
        """How many tenant engines the app holds (its ``/healthz`` reports the count)."""
        with urllib.request.urlopen(self.url + "/healthz", timeout=5) as response:  # noqa: S310 - loopback URL
            return int(json.load(response)["engines"])


@dataclass
class Platform:
    """The three servers of one installation: the tenant-service, a gateway whose default upstream is the notes
    example app, and that app."""

    installation: Installation
    service: TenantServiceProcess
    gateway: GatewayProcess
    notes: NotesProcess

    @classmethod
    def launch(
        cls,
        installation: Installation,
        logs: Path,
        *,
        service_port: int | None = None,
        gateway_port: int | None = None,
        notes_port: int | None = None,
        signing_keys: str | None = None,
        service_env: Mapping[str, str] | None = None,
        gateway_env: Mapping[str, str] | None = None,
        notes_env: Mapping[str, str] | None = None,
        app_name: str | None = None,
        pid_dir: Path | None = None,
        timeout: float = 60.0,
    ) -> Platform:
        """Start the three, in order, each once the one before is ready; logs (and pid files, with ``pid_dir``)
        are named after them. Whatever fails, nothing started is left running.

        Raises:
            StartupError: a server exited or was not ready within ``timeout`` seconds.
        """

        def pid_file(name: str) -> Path | None:
            return pid_dir / f"{name}.pid" if pid_dir is not None else None

        service = TenantServiceProcess(
            installation,
            logs / "tenant-service.log",
            env=service_env,
            port=service_port,
            pid_file=pid_file("tenant-service"),
        )
        notes_port = notes_port or free_port()
        gateway = GatewayProcess(
            installation,
            service.url,
            f"http://127.0.0.1:{notes_port}",
            logs / "gateway.log",
            signing_keys,
            env=gateway_env,
            port=gateway_port,
            pid_file=pid_file("gateway"),
        )
        notes = NotesProcess(
            installation,
            service.url,
            gateway.url,
            logs / "notes.log",
            port=notes_port,
            env=notes_env,
            app_name=app_name,
            pid_file=pid_file("notes"),
        )
        platform = cls(installation, service, gateway, notes)
        try:
            for process in platform.processes:
                process.start(timeout=timeout)
        except BaseException:
            platform.stop()
            raise
        return platform

    @property
    def processes(self) -> tuple[TenantServiceProcess, GatewayProcess, NotesProcess]:
        """The three, in the order they start."""
        return self.service, self.gateway, self.notes

    @cached_property
    def admin(self) -> httpx.Client:
        """An admin client of the tenant-service (closed by :meth:`stop`)."""
        return self.service.client()

    def stop(self) -> None:
        """Stop the three, newest first, and close the admin client."""
        if "admin" in self.__dict__:
            self.admin.close()
        for process in reversed(self.processes):
            process.stop()
