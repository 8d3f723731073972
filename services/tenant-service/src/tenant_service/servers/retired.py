"""Databases a move left on the old server: closed to connections, their role unable to log in, dropped once
``MOVE_KEEP_SECONDS`` have passed (by the reconciler), or at once when the tenant is purged."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import asyncpg
import structlog
from sqlalchemy import delete, select

from tenant_service.db.models import RetiredDatabase, Tenant
from tenantry_common.timeutil import utcnow

if TYPE_CHECKING:
    from tenant_service.context import AppContext

_log = structlog.get_logger("tenantry.servers")


async def drop_retired(ctx: AppContext, *, tenant_id: uuid.UUID | None = None, server: str | None = None) -> list[str]:
    """Drop the retired databases that are due (or every one of ``tenant_id``, or of ``server``), with their role
    on that server; return ``server/database`` of each dropped. A server that cannot be reached keeps its rows for
    the next pass."""
    query = select(RetiredDatabase)
    if tenant_id is not None:
        query = query.where(RetiredDatabase.tenant_id == tenant_id)
    elif server is not None:
        query = query.where(RetiredDatabase.server == server)
    else:
        query = query.where(RetiredDatabase.drop_after <= utcnow())
    async with ctx.sessions() as session:
        rows = list((await session.execute(query)).scalars())
    dropped: list[str] = []
    for row in rows:
        async with ctx.sessions() as session:
            home = await session.scalar(select(Tenant.server).where(Tenant.id == row.tenant_id))
        try:
            cluster = await ctx.servers.get(row.server)
            if home != row.server:  # moved back meanwhile: the name is the live database's again (a move drops
                await cluster.drop_database(row.db_name)  # the retired copy before it moves back; belt and braces)
                await cluster.drop_role(row.db_role)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            _log.warning("retired_drop_failed", server=row.server, database=row.db_name, error=type(exc).__name__)
            continue
        async with ctx.sessions() as session, session.begin():
            await session.execute(
                delete(RetiredDatabase).where(
                    RetiredDatabase.server == row.server, RetiredDatabase.db_name == row.db_name
                )
            )
        _log.info("retired_database_dropped", server=row.server, database=row.db_name, tenant_id=str(row.tenant_id))
        dropped.append(f"{row.server}/{row.db_name}")
    return dropped
