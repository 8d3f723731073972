"""Ingest of the gateways' usage batches: counted once however often a batch is sent, alerts in the same transaction.

One transaction per batch: the batch id goes into ``usage_batches`` first (``ON CONFLICT DO NOTHING``; when it is
there already the batch was counted before and nothing more is done), the counts are added to ``usage_hourly`` and
``usage_daily`` (rows locked in key order, so concurrent batches cannot deadlock), and each (tenant, day) the batch
touched is checked against the tenant's ``requests_per_day`` (its plan's, overridden by its own limits) and its
plan's ``alert_thresholds``: a threshold reached for the first time that day gets a ``quota_alerts`` row and a
``quota.threshold`` event in the outbox; a row that exists already means the event was emitted, so traffic that
hovers around the limit emits nothing more. Counts of tenants the registry does not know (purged) are ignored.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from datetime import UTC, date, datetime
from typing import Final

import structlog
from prometheus_client import Counter
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_service.context import AppContext
from tenant_service.db.models import Plan, QuotaAlert, Tenant, UsageBatchSeen, UsageDaily, UsageHourly
from tenant_service.failpoints import failpoint
from tenant_service.outbox import emit
from tenantry_common.limits import merged_limits
from tenantry_common.problems import FieldError, InvalidInputError
from tenantry_common.usage_api import HOUR_SECONDS, UsageAck, UsageBatch

_log = structlog.get_logger("tenantry.usage")
#: Counts for an hour this far ahead of the service's clock are refused (clock skew between hosts is allowed).
_FUTURE_SLACK_SECONDS: Final = 2 * HOUR_SECONDS
DEFAULT_ALERT_THRESHOLDS: Final = (0.8, 1.0)

BATCHES: Final = Counter(
    "tenantry_usage_batches_total", "Usage batches received from gateways, by outcome", ["outcome"]
)
REQUESTS: Final = Counter("tenantry_usage_requests_total", "Requests added to the usage history, by kind", ["kind"])


def _checked_hours(batch: UsageBatch) -> None:
    now = time.time()
    for index, count in enumerate(batch.counts):
        if count.hour % HOUR_SECONDS or count.hour > now + _FUTURE_SLACK_SECONDS:
            raise InvalidInputError(
                "invalid usage batch",
                code="invalid_usage_batch",
                errors=[FieldError(field=f"counts[{index}].hour", message="the start of a past hour, in Unix time")],
            )


def _tenant_ids(batch: UsageBatch) -> set[uuid.UUID]:
    ids: set[uuid.UUID] = set()
    for count in batch.counts:
        try:
            ids.add(uuid.UUID(count.tenant_id))
        except ValueError:
            continue  # not a tenant of this registry's: ignored like a purged one
    return ids


async def ingest_batch(ctx: AppContext, batch: UsageBatch) -> UsageAck:
    """Count a batch once (a batch id seen before counts nothing) and emit the quota alerts it causes.

    Raises:
        InvalidInputError: 422 ``invalid_usage_batch`` for an hour that is not the start of an hour, or in the future.
    """
    _checked_hours(batch)
    async with ctx.sessions() as session, session.begin():
        first = await session.scalar(
            pg_insert(UsageBatchSeen)
            .values(batch_id=uuid.UUID(batch.batch_id))
            .on_conflict_do_nothing()
            .returning(UsageBatchSeen.batch_id)
        )
        if first is None:
            duplicate = True
        else:
            duplicate = False
            await _add_counts(session, batch)
    BATCHES.labels("duplicate" if duplicate else "ingested").inc()
    await failpoint("usage.after_commit")
    return UsageAck(batch_id=batch.batch_id, duplicate=duplicate)


async def _add_counts(session: AsyncSession, batch: UsageBatch) -> None:
    ids = _tenant_ids(batch)
    if not ids:
        return
    tenants = {
        row.id: row
        for row in (
            await session.execute(select(Tenant.id, Tenant.slug, Tenant.plan, Tenant.limits).where(Tenant.id.in_(ids)))
        ).all()
    }
    hourly: dict[tuple[uuid.UUID, int], list[int]] = defaultdict(lambda: [0, 0])
    for count in batch.counts:
        try:
            tenant_id = uuid.UUID(count.tenant_id)
        except ValueError:
            continue
        if tenant_id in tenants and (count.requests or count.rejected):
            bucket = hourly[(tenant_id, count.hour)]
            bucket[0] += count.requests
            bucket[1] += count.rejected
    if not hourly:
        return
    daily: dict[tuple[uuid.UUID, date], list[int]] = defaultdict(lambda: [0, 0])
    for (tenant_id, hour), (requests, rejected) in hourly.items():
        bucket = daily[(tenant_id, datetime.fromtimestamp(hour, UTC).date())]
        bucket[0] += requests
        bucket[1] += rejected
    hour_rows = [
        {"tenant_id": t, "hour": datetime.fromtimestamp(h, UTC), "requests": r, "rejected": j}
        for (t, h), (r, j) in sorted(hourly.items(), key=lambda item: (str(item[0][0]), item[0][1]))
    ]
    statement = pg_insert(UsageHourly).values(hour_rows)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[UsageHourly.tenant_id, UsageHourly.hour],
            set_={
                "requests": UsageHourly.requests + statement.excluded.requests,
                "rejected": UsageHourly.rejected + statement.excluded.rejected,
            },
        )
    )
    day_rows = [
        {"tenant_id": t, "day": d, "requests": r, "rejected": j}
        for (t, d), (r, j) in sorted(daily.items(), key=lambda item: (str(item[0][0]), item[0][1]))
    ]
    day_statement = pg_insert(UsageDaily).values(day_rows)
    totals = (
        await session.execute(
            day_statement.on_conflict_do_update(
                index_elements=[UsageDaily.tenant_id, UsageDaily.day],
                set_={
                    "requests": UsageDaily.requests + day_statement.excluded.requests,
                    "rejected": UsageDaily.rejected + day_statement.excluded.rejected,
                },
            ).returning(UsageDaily.tenant_id, UsageDaily.day, UsageDaily.requests)
        )
    ).all()
    REQUESTS.labels("served").inc(sum(r for r, _ in hourly.values()))
    REQUESTS.labels("rejected").inc(sum(j for _, j in hourly.values()))
    plan_names = {tenants[tenant_id].plan for tenant_id, _, _ in totals}
    plans = {
        plan.name: plan for plan in (await session.execute(select(Plan).where(Plan.name.in_(plan_names)))).scalars()
    }
    for tenant_id, day, requests in totals:
        tenant = tenants[tenant_id]
        plan = plans.get(tenant.plan)
        per_day = merged_limits(plan.limits if plan else {}, tenant.limits).get("requests_per_day")
        if not per_day:
            continue
        thresholds = plan.alert_thresholds if plan is not None else DEFAULT_ALERT_THRESHOLDS
        for threshold in thresholds:
            if requests < threshold * per_day:
                continue
            alerted = await session.scalar(
                pg_insert(QuotaAlert)
                .values(tenant_id=tenant_id, day=day, threshold=float(threshold))
                .on_conflict_do_nothing()
                .returning(QuotaAlert.tenant_id)
            )
            if alerted is None:
                continue
            emit(
                session,
                "quota.threshold",
                {"threshold": threshold, "requests_per_day": per_day, "requests": requests, "day": day.isoformat()},
                tenant_id=tenant_id,
                slug=tenant.slug,
            )
            _log.info("quota_threshold", tenant_id=str(tenant_id), threshold=threshold, day=day.isoformat())
