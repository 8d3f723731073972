"""Usage of one tenant: database size, the gateway's quota counters from Redis, and the history from the registry."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from tenant_service.context import AppContext
from tenant_service.tenants.schemas import DatabaseUsage, RequestUsage, TenantUsage, TenantUsageHistory, TenantView
from tenant_service.usage.history import usage_history
from tenant_service.usage.schemas import HistoryWindow
from tenantry_common.lifecycle import HAS_DATABASE
from tenantry_common.redis_keys import day_counter_key, minute_counter_key


async def tenant_usage(ctx: AppContext, tenant: TenantView) -> TenantUsage:
    """Counters and sizes, each read with its own timeout; a missing source gives ``None``, not an error."""
    cluster = await ctx.servers.get(tenant.database.server)
    size = await cluster.database_size(tenant.database.name) if tenant.status in HAS_DATABASE else None
    now = int(time.time())
    minute, day = now // 60, now // 86400
    minute_usage = day_usage = None
    available = False
    if ctx.redis is not None:
        try:
            raw_minute, raw_day = await ctx.redis.mget(
                minute_counter_key(tenant.id, minute), day_counter_key(tenant.id, day)
            )
        except Exception:  # noqa: BLE001, S110 - counters are optional: any Redis failure means "unavailable"
            pass
        else:
            available = True
            minute_usage = RequestUsage(
                used=int(raw_minute or 0),
                limit=tenant.limits.get("requests_per_minute"),
                resets_at=datetime.fromtimestamp((minute + 1) * 60, UTC),
            )
            day_usage = RequestUsage(
                used=int(raw_day or 0),
                limit=tenant.limits.get("requests_per_day"),
                resets_at=datetime.fromtimestamp((day + 1) * 86400, UTC),
            )
    return TenantUsage(
        tenant_id=tenant.id,
        database=DatabaseUsage(name=tenant.database.name, size_bytes=size),
        requests_minute=minute_usage,
        requests_day=day_usage,
        quota_counters_available=available,
    )


async def tenant_usage_history(ctx: AppContext, tenant: TenantView, window: HistoryWindow) -> TenantUsageHistory:
    """:func:`tenant_usage` and the tenant's usage history over ``window``."""
    current = await tenant_usage(ctx, tenant)
    return TenantUsageHistory(
        tenant_id=current.tenant_id,
        database=current.database,
        requests_minute=current.requests_minute,
        requests_day=current.requests_day,
        quota_counters_available=current.quota_counters_available,
        granularity=window.granularity,
        history=await usage_history(ctx, tenant.id, window),
    )
