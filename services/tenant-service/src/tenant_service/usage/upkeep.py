"""Upkeep of the usage history: database sizes sampled, old rows deleted; one replica at a time.

Every ``USAGE_SIZE_SAMPLE_SECONDS`` a pass takes a cluster-wide advisory lock for its transaction (a replica that
does not get it skips the pass, as the backup schedule does), deletes hourly rows older than
``USAGE_HOURLY_RETENTION_DAYS``, daily rows and quota alerts older than ``USAGE_DAILY_RETENTION_DAYS`` and batch ids
older than a day (gateways retry a batch within minutes, never a day later), then stores each tenant database's
size (``pg_database_size``, read through each server's :class:`~tenant_service.provisioning.cluster.TenantCluster`)
into today's ``usage_daily`` row.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import defaultdict
from datetime import timedelta
from typing import Final

import structlog
from sqlalchemy import Delete, delete, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_service.context import AppContext
from tenant_service.db.models import QuotaAlert, Tenant, UsageBatchSeen, UsageDaily, UsageHourly
from tenantry_common.lifecycle import HAS_DATABASE
from tenantry_common.timeutil import utcnow

_log = structlog.get_logger("tenantry.usage.upkeep")
_UPKEEP_LOCK: Final = zlib.crc32(b"tenantry:usage-upkeep")
#: Batch ids are kept this long: a gateway's retries of one batch are minutes apart, not a day.
BATCH_ID_RETENTION: Final = timedelta(days=1)


async def _deleted(session: AsyncSession, statement: Delete) -> int:
    result = await session.execute(statement)
    return int(getattr(result, "rowcount", 0) or 0)


async def upkeep_once(ctx: AppContext) -> dict[str, int] | None:
    """One pass: retention, then sizes; returns what it did, or None when another replica holds the lock."""
    settings = ctx.settings.usage
    now = utcnow()
    today = now.date()
    async with ctx.sessions() as session, session.begin():
        if not await session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _UPKEEP_LOCK}):
            return None
        hours_before = now - timedelta(days=settings.hourly_retention_days)
        days_before = today - timedelta(days=settings.daily_retention_days)
        done = {
            "hourly_deleted": await _deleted(session, delete(UsageHourly).where(UsageHourly.hour < hours_before)),
            "daily_deleted": await _deleted(session, delete(UsageDaily).where(UsageDaily.day < days_before)),
            "alerts_deleted": await _deleted(session, delete(QuotaAlert).where(QuotaAlert.day < days_before)),
            "batches_deleted": await _deleted(
                session, delete(UsageBatchSeen).where(UsageBatchSeen.received_at < now - BATCH_ID_RETENTION)
            ),
        }
        live = Tenant.status.in_(HAS_DATABASE)
        tenants = (await session.execute(select(Tenant.id, Tenant.server, Tenant.db_name).where(live))).all()
        by_server: dict[str, list[tuple[object, str]]] = defaultdict(list)
        for tenant_id, server, db_name in tenants:
            by_server[server].append((tenant_id, db_name))
        rows = []
        for server, members in by_server.items():
            try:
                cluster = await ctx.servers.get(server)
                sizes = await cluster.database_sizes([name for _, name in members])
            except Exception as exc:  # noqa: BLE001 - one unreachable server must not stop the others' samples
                _log.warning("usage_size_sample_failed", server=server, error=type(exc).__name__)
                continue
            rows += [
                {"tenant_id": tenant_id, "day": today, "database_bytes": sizes[name]}
                for tenant_id, name in members
                if name in sizes
            ]
        rows.sort(key=lambda row: str(row["tenant_id"]))
        for start in range(0, len(rows), 1000):
            statement = pg_insert(UsageDaily).values(rows[start : start + 1000])
            await session.execute(
                statement.on_conflict_do_update(
                    index_elements=[UsageDaily.tenant_id, UsageDaily.day],
                    set_={"database_bytes": statement.excluded.database_bytes},
                )
            )
        done["sizes_sampled"] = len(rows)
    _log.info("usage_upkeep", **done)
    return done


async def run_forever(ctx: AppContext) -> None:
    """Upkeep pass after upkeep pass until cancelled."""
    while True:
        try:
            await upkeep_once(ctx)
        except Exception as exc:  # noqa: BLE001 - the registry may be briefly unreachable
            _log.warning("usage_upkeep_failed", error=type(exc).__name__)
        await asyncio.sleep(ctx.settings.usage.size_sample_seconds)
