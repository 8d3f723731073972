"""The tenant clusters by server name: ``default`` from the settings, every other from the server registry."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tenant_service.config import DatabaseSettings, asyncpg_dsn
from tenant_service.db.models import Server
from tenant_service.provisioning.cluster import TenantCluster
from tenantry_common.problems import NotFoundError

if TYPE_CHECKING:
    from tenant_service.db.models import Tenant
    from tenant_service.secretbox import SecretBox

#: The server of ``TENANT_DATABASE_URL``, registered under this name at first start.
DEFAULT_SERVER = "default"


class ServerNotFoundError(NotFoundError):
    """No registered server by that name."""

    code = "server_not_found"


def password_context(name: str) -> str:
    """Associated data binding a server's sealed admin password to that server."""
    return f"server:{name}:admin-password"


def split_password(url: str) -> tuple[str, str | None]:
    """The URL without its password, and the password (None when it has none)."""
    parts = urlsplit(asyncpg_dsn(url))
    if parts.password is None:
        return urlunsplit(parts), None
    host = parts.netloc.rpartition("@")[2]
    user = quote(unquote(parts.username or ""), safe="")
    return urlunsplit(parts._replace(netloc=f"{user}@{host}" if user else host)), unquote(parts.password)


def with_password(url: str, password: str | None) -> str:
    """``url`` (without a password) with ``password`` put back."""
    if password is None:
        return url
    parts = urlsplit(url)
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


class ServerPool:
    """One :class:`TenantCluster` per registered server, made on first use and kept."""

    def __init__(self, settings: DatabaseSettings, box: SecretBox, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._settings = settings
        self._box = box
        self._sessions = sessions
        self.default = TenantCluster(settings, name=DEFAULT_SERVER)
        self._clusters: dict[str, TenantCluster] = {DEFAULT_SERVER: self.default}
        self._lock = asyncio.Lock()

    def cluster_for_url(self, name: str, url: str) -> TenantCluster:
        """A cluster for a URL not registered yet (registration checks it first)."""
        return TenantCluster(self._settings, url=url, name=name)

    async def get(self, name: str) -> TenantCluster:
        """The cluster of the registered server ``name``.

        Raises:
            ServerNotFoundError: no such server.
        """
        if (cluster := self._clusters.get(name)) is not None:
            return cluster
        async with self._lock:
            if (cluster := self._clusters.get(name)) is not None:
                return cluster
            async with self._sessions() as session:
                row = await session.get(Server, name)
            if row is None or row.url is None:
                raise ServerNotFoundError(f"no server {name!r}")
            password = (
                self._box.decrypt(row.password_enc, password_context(name)) if row.password_enc is not None else None
            )
            cluster = TenantCluster(self._settings, url=with_password(row.url, password), name=name)
            self._clusters[name] = cluster
            return cluster

    async def for_tenant(self, tenant: Tenant) -> TenantCluster:
        """The cluster that holds the tenant's database."""
        return await self.get(tenant.server)

    async def set_login(self, name: str, role: str, *, enabled: bool) -> None:
        """Allow or forbid a tenant's role to log in on its server (after a lifecycle change commits)."""
        await (await self.get(name)).set_login(role, enabled=enabled)

    async def set_connection_limit(self, name: str, role: str, limit: int) -> None:
        """Change a tenant's role's connection limit on its server (a plan change)."""
        await (await self.get(name)).set_connection_limit(role, limit)

    async def forget(self, name: str) -> None:
        """Close and drop a server's cluster (it was removed from the registry)."""
        cluster = self._clusters.pop(name, None) if name != DEFAULT_SERVER else None
        if cluster is not None:
            await cluster.close()

    async def close(self) -> None:
        """Close every cluster's pooled connections."""
        for cluster in list(self._clusters.values()):
            with contextlib.suppress(Exception):
                await cluster.close()
        self._clusters = {DEFAULT_SERVER: self.default}
