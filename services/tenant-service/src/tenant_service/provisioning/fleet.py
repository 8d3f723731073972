"""Bringing the template and every tenant database to the schema head, with bounded concurrency.

Each tenant is migrated in its own transaction on its own connection, as its own role (so what migrations
create belongs to the tenant). A failure is recorded and reported, never stops the others, and a second run
picks up exactly the tenants still behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import structlog
from sqlalchemy import select, update

from tenant_service.context import AppContext
from tenant_service.db.models import Installation, Tenant
from tenant_service.provisioning.schema import SchemaError, apply_migrations, head_version

_log = structlog.get_logger("tenantry.fleet")

#: Tenants whose database exists and should follow the schema.
MIGRATABLE_STATUSES = ("active", "suspended", "deleted")


@dataclass
class FleetReport:
    """The outcome of one fleet migration."""

    head: int
    migrated: list[str] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


async def migrate_template(ctx: AppContext) -> int:
    """Bring the template to the head and record its version in the registry."""
    version = await ctx.cluster.migrate_template(ctx.migrations)
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
                select(Tenant.id, Tenant.slug, Tenant.db_name, Tenant.db_role, Tenant.schema_version)
                .where(Tenant.status.in_(MIGRATABLE_STATUSES))
                .order_by(Tenant.created_at)
            )
        ).all()
    behind = [r for r in rows if (r.schema_version or 0) < head]
    report.up_to_date = [r.slug for r in rows if (r.schema_version or 0) >= head]
    if on_start:
        on_start(len(behind))
    gate = asyncio.Semaphore(max(1, concurrency))

    async def migrate_one(row: object) -> None:
        slug: str = row.slug  # type: ignore[attr-defined]
        async with gate:
            try:
                async with ctx.cluster.connect(row.db_name) as conn:  # type: ignore[attr-defined]
                    version = await apply_migrations(conn, ctx.migrations, owner=row.db_role)  # type: ignore[attr-defined]
                async with ctx.sessions() as session, session.begin():
                    await session.execute(
                        update(Tenant).where(Tenant.id == row.id).values(schema_version=version)  # type: ignore[attr-defined]
                    )
            except (asyncpg.PostgresError, OSError, TimeoutError, SchemaError, asyncpg.InterfaceError) as exc:
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
