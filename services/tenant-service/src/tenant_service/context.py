"""The service's wiring, built once and shared by the HTTP app, the reconciler and the CLI."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tenant_service.backups.store import ObjectStore, open_store
from tenant_service.config import Settings
from tenant_service.db.engine import make_engine, make_sessionmaker
from tenant_service.db.models import Installation
from tenant_service.events import EventPublisher
from tenant_service.provisioning.cluster import TenantCluster
from tenant_service.provisioning.schema import DEFAULT_MIGRATIONS_DIR, SchemaMigration, load_migrations
from tenant_service.secretbox import SecretBox
from tenant_service.servers.pool import ServerPool
from tenant_service.users.passwords import PasswordHasher
from tenantry_common.closing import close_quietly


@dataclass
class AppContext:
    """Everything a request handler, a background task or a CLI command needs."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    servers: ServerPool
    box: SecretBox
    redis: redis.Redis | None
    events: EventPublisher
    migrations: list[SchemaMigration]
    _installation_id: uuid.UUID | None = field(default=None)
    _store: ObjectStore | None = field(default=None)
    _passwords: PasswordHasher | None = field(default=None)

    @property
    def cluster(self) -> TenantCluster:
        """The ``default`` server's cluster (the server of TENANT_DATABASE_URL); a tenant's own is
        ``await ctx.servers.for_tenant(tenant)``."""
        return self.servers.default

    @property
    def store(self) -> ObjectStore:
        """Where backups and exports are kept (opened on first use)."""
        if self._store is None:
            self._store = open_store(self.settings.operations.store)
        return self._store

    @property
    def passwords(self) -> PasswordHasher:
        """The process's argon2id hasher (its concurrency bound is per process)."""
        if self._passwords is None:
            self._passwords = PasswordHasher(self.settings.users)
        return self._passwords

    @classmethod
    def build(cls, settings: Settings) -> AppContext:
        """Create the engine, clients and key ring (no I/O yet)."""
        migrations_dir = Path(settings.database.migrations_dir or DEFAULT_MIGRATIONS_DIR)
        engine = make_engine(settings.database)
        sessions = make_sessionmaker(engine)
        box = SecretBox.from_config(settings.security.encryption_keys)
        client = (
            redis.Redis.from_url(
                settings.redis_url,
                socket_timeout=settings.redis_timeout,
                socket_connect_timeout=settings.redis_timeout,
            )
            if settings.redis_url
            else None
        )
        return cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            servers=ServerPool(settings.database, box, sessions),
            box=box,
            redis=client,
            events=EventPublisher(client),
            migrations=load_migrations(migrations_dir),
        )

    async def installation_id(self) -> uuid.UUID:
        """This registry's identity (read once)."""
        if self._installation_id is None:
            async with self.sessions() as session:
                row = (await session.execute(select(Installation.installation_id))).scalar_one()
            self._installation_id = row
        return self._installation_id

    async def close(self) -> None:
        """Release pools and clients."""
        await self.servers.close()
        if self._store is not None:
            with contextlib.suppress(Exception):
                await self._store.close()
        if self.redis is not None:
            await close_quietly(self.redis.aclose)
        await self.engine.dispose()


@contextlib.asynccontextmanager
async def open_context(settings: Settings | None = None) -> AsyncIterator[AppContext]:
    """An :class:`AppContext` for the duration of a block (CLI commands, tests)."""
    ctx = AppContext.build(settings or Settings.from_env())
    try:
        yield ctx
    finally:
        await ctx.close()
