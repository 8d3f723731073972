"""Bringing the template and every tenant database to the schema head, with bounded concurrency.

Each tenant is migrated in its own transaction on its own connection, logged in as its own role: what migrations
create belongs to the tenant, and whatever of the tenant's runs meanwhile (triggers, constraints, index
expressions on the tables a migration touches) runs with the tenant's rights only. A failure is recorded and
reported, never stops the others, and a second run picks up exactly the tenants still behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from sqlalchemy import select, update

from tenant_service.context import AppContext
from tenant_service.db.models import Installation, Tenant
from tenant_service.provisioning.provisioner import password_context
from tenant_service.provisioning.schema import SchemaError, apply_migrations, head_version
from tenant_service.secretbox import DecryptionError
from tenant_service.servers.pool import DEFAULT_SERVER
from tenantry_common.lifecycle import HAS_DATABASE, LOGIN_ALLOWED

_log = structlog.get_logger("tenantry.fleet")


@dataclass
class FleetReport:
    """The outcome of one fleet migration."""

    head: int
    migrated: list[str] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


async def migrate_template(ctx: AppContext) -> int:
    """Bring the template of every registered server to the head (registering ``default`` and the configured
    servers first) and record the version in the registry. A server that is not reachable is reported and
    skipped: its template is migrated by the next run, and placement skips it meanwhile (its template lags).

    Returns:
        The ``default`` server's template version.
    """
    from tenant_service.servers.service import ensure_configured_servers, migrate_templates  # noqa: PLC0415

    await ensure_configured_servers(ctx)
    versions = await migrate_templates(ctx)
    version = versions[DEFAULT_SERVER]
    async with ctx.sessions() as session, session.begin():
        await session.execute(update(Installation).values(template_version=version))
    return version


async def migrate_fleet(
    ctx: AppContext,
    *,
    concurrency: int = 8,
    on_progress: Callable[[str, bool], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> FleetReport:
    """Migrate the template, then every tenant behind the head.

    Args:
        ctx: the application context.
        concurrency: how many tenant databases are migrated at once.
        on_progress: called with (slug, ok) after each tenant.
        on_start: called with the number of tenants to migrate.
    """
    head = head_version(ctx.migrations)
    await migrate_template(ctx)
    report = FleetReport(head=head)
    async with ctx.sessions() as session:
        rows = (
            await session.execute(
                select(
                    Tenant.id,
                    Tenant.server,
                    Tenant.slug,
                    Tenant.status,
                    Tenant.db_name,
                    Tenant.db_role,
                    Tenant.db_password_enc,
                    Tenant.schema_version,
                )
                .where(Tenant.status.in_(HAS_DATABASE))
                .order_by(Tenant.created_at)
            )
        ).all()
    behind = [r for r in rows if (r.schema_version or 0) < head]
    report.up_to_date = [r.slug for r in rows if (r.schema_version or 0) >= head]
    if on_start:
        on_start(len(behind))
    gate = asyncio.Semaphore(max(1, concurrency))

    async def migrate_one(row: Any) -> None:
        slug: str = row.slug
        async with gate:
            try:
                async with _as_tenant(ctx, row) as conn:
                    version = await apply_migrations(conn, ctx.migrations, owner=None)
                async with ctx.sessions() as session, session.begin():
                    await session.execute(update(Tenant).where(Tenant.id == row.id).values(schema_version=version))
            except (
                asyncpg.PostgresError,
                OSError,
                TimeoutError,
                SchemaError,
                asyncpg.InterfaceError,
                DecryptionError,
            ) as exc:
                message = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                report.failed[slug] = f"{type(exc).__name__}: {message}"
                _log.warning("tenant_migration_failed", slug=slug, error=type(exc).__name__)
                if on_progress:
                    on_progress(slug, False)
                return
        report.migrated.append(slug)
        if on_progress:
            on_progress(slug, True)

    await asyncio.gather(*(migrate_one(r) for r in behind))
    return report


@contextlib.asynccontextmanager
async def _as_tenant(ctx: AppContext, row: Any) -> AsyncIterator[Any]:
    """A session of the tenant's own role in its database.

    A soft-deleted tenant's role has no LOGIN: it gets it for the moment of this one login, under the tenant's
    registry lock (a restore, which enables LOGIN after taking that lock, cannot interleave), and loses it again
    before the lock is released. A crash in between is undone by the reconciler's LOGIN sweep.
    """
    password = ctx.box.decrypt(row.db_password_enc, password_context(row.id))
    cluster = await ctx.servers.get(row.server)
    connect = cluster.tenant_connection(row.db_name, row.db_role, password)
    if row.status in LOGIN_ALLOWED:
        async with connect as conn:
            yield conn
        return
    async with contextlib.AsyncExitStack() as stack:
        async with ctx.sessions() as session, session.begin():
            status = await session.scalar(select(Tenant.status).where(Tenant.id == row.id).with_for_update())
            if status not in HAS_DATABASE:
                raise SchemaError(f"the tenant became {status} during the migration")
            relogin = status not in LOGIN_ALLOWED
            if relogin:
                await cluster.set_login(row.db_role, enabled=True)
            try:
                conn = await stack.enter_async_context(connect)
            finally:
                if relogin:
                    await cluster.set_login(row.db_role, enabled=False, end_sessions=False)
        yield conn
