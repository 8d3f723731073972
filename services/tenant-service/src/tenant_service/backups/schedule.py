"""Scheduled backups and retention: one runner across replicas.

Plans (or a tenant's own limits) may set ``backup_interval_hours`` and ``backup_retention_days``. Every pass, in a
transaction that holds a cluster-wide advisory lock (so replicas take turns and never double-schedule), each
active tenant whose newest successful backup is older than its interval, and which has no backup pending or
running, gets a ``scheduled`` backup operation; backups past their ``expires_at`` are deleted with their objects.
Stored objects of tenants the registry no longer knows (a purge that crashed between its steps) are swept too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
import zlib
from datetime import timedelta
from typing import Final

import structlog
from sqlalchemy import func, select, text

from tenant_service.audit.service import SYSTEM_ACTOR
from tenant_service.backups.objects import TENANTS_PREFIX, backup_key
from tenant_service.context import AppContext
from tenant_service.db.models import Backup, Operation, Plan, Tenant
from tenant_service.operations.service import enqueue
from tenantry_common.lifecycle import TenantStatus
from tenantry_common.limits import merged_limits
from tenantry_common.timeutil import utcnow

_log = structlog.get_logger("tenantry.backups.schedule")
_SCHEDULER_LOCK: Final = zlib.crc32(b"tenantry:backup-scheduler")
#: Stored objects of unknown tenants are looked for at most this often.
SWEEP_EVERY_SECONDS: Final = 3600.0


async def schedule_once(ctx: AppContext) -> list[uuid.UUID]:
    """Enqueue the due scheduled backups and delete expired ones; returns the new operations' ids."""
    from tenant_service.backups.service import new_backup_row  # noqa: PLC0415 - service imports this module

    created: list[uuid.UUID] = []
    expired: list[Backup] = []
    async with ctx.sessions() as session, session.begin():
        if not await session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _SCHEDULER_LOCK}):
            return created
        plans = {p.name: p.limits for p in (await session.execute(select(Plan))).scalars()}
        latest = (
            select(Backup.tenant_id, func.max(Backup.created_at).label("last"))
            .where(Backup.state == "completed", Backup.kind.in_(("manual", "scheduled")))
            .group_by(Backup.tenant_id)
            .subquery()
        )
        busy = select(Operation.tenant_id).where(
            Operation.kind == "backup", Operation.state.in_(("pending", "running"))
        )
        rows = (
            await session.execute(
                select(Tenant, latest.c.last)
                .outerjoin(latest, latest.c.tenant_id == Tenant.id)
                .where(Tenant.status == TenantStatus.ACTIVE, Tenant.id.not_in(busy))
            )
        ).all()
        now = utcnow()
        for tenant, last in rows:
            hours = merged_limits(plans.get(tenant.plan, {}), tenant.limits).get("backup_interval_hours")
            if not hours or (last is not None and now - last < timedelta(hours=float(hours))):
                continue
            backup = new_backup_row(tenant, kind="scheduled", note=None)
            session.add(backup)
            op = await enqueue(
                session,
                kind="backup",
                tenant_id=tenant.id,
                params={"backup_id": str(backup.id), "kind": "scheduled"},
                actor=SYSTEM_ACTOR,
                target=tenant.slug,
            )
            backup.operation_id = op.id
            created.append(op.id)
        expired = list(
            (
                await session.execute(
                    select(Backup)
                    .where(Backup.expires_at <= now, Backup.state != "running")
                    .with_for_update(skip_locked=True)
                )
            ).scalars()
        )
        for backup in expired:
            await session.delete(backup)
    for backup in expired:
        await ctx.store.delete(backup_key(backup.tenant_id, backup.id))
    if created or expired:
        _log.info("backups_scheduled", scheduled=len(created), expired=len(expired))
    return created


async def sweep_unknown_tenants(ctx: AppContext) -> int:
    """Delete stored objects whose tenant the registry does not know (a purge interrupted between its steps)."""
    keys = await ctx.store.list_keys(TENANTS_PREFIX)
    ids: set[uuid.UUID] = set()
    for key in keys:
        with contextlib.suppress(ValueError, IndexError):
            ids.add(uuid.UUID(key[len(TENANTS_PREFIX) :].split("/", 1)[0]))
    if not ids:
        return 0
    async with ctx.sessions() as session:
        known = set((await session.execute(select(Tenant.id).where(Tenant.id.in_(ids)))).scalars())
    removed = 0
    for tenant_id in ids - known:
        removed += await ctx.store.delete_prefix(f"{TENANTS_PREFIX}{tenant_id}/")
    if removed:
        _log.warning("orphan_objects_deleted", count=removed)
    return removed


async def run_forever(ctx: AppContext, interval: float, on_scheduled: object = None) -> None:
    """Schedule pass after schedule pass until cancelled; sweep now and then."""
    last_sweep = 0.0
    while True:
        try:
            if await schedule_once(ctx) and callable(on_scheduled):
                on_scheduled()
            if time.monotonic() - last_sweep >= SWEEP_EVERY_SECONDS:
                await sweep_unknown_tenants(ctx)
                last_sweep = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - the registry or the store may be briefly unreachable
            _log.warning("backup_schedule_failed", error=type(exc).__name__)
        await asyncio.sleep(interval)
