"""The admin API's view of tenants (contract §3's tenant object), also the data of tenant events (§13)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_service.db.models import Plan, Tenant, TenantDomain
from tenant_service.tenants.schemas import DatabaseInfo, TenantView
from tenantry_common.limits import merged_limits


async def tenant_views(session: AsyncSession, tenants: list[Tenant]) -> list[TenantView]:
    """The admin views of ``tenants`` (their domains and effective limits looked up), in order."""
    ids = [t.id for t in tenants]
    domains: dict[uuid.UUID, list[str]] = {i: [] for i in ids}
    if ids:
        rows = await session.execute(
            select(TenantDomain.tenant_id, TenantDomain.domain)
            .where(TenantDomain.tenant_id.in_(ids))
            .order_by(TenantDomain.domain)
        )
        for tid, domain in rows:
            domains[tid].append(domain)
    plans = {p.name: p.limits for p in (await session.execute(select(Plan))).scalars()}
    return [_view(t, domains[t.id], plans.get(t.plan, {})) for t in tenants]


async def tenant_view(session: AsyncSession, tenant: Tenant) -> TenantView:
    """The admin view of one tenant."""
    return (await tenant_views(session, [tenant]))[0]


def _view(t: Tenant, domains: list[str], plan_limits: dict[str, Any]) -> TenantView:
    return TenantView(
        id=str(t.id),
        slug=t.slug,
        name=t.name,
        status=t.status,
        plan=t.plan,
        domains=domains,
        database=DatabaseInfo(
            name=t.db_name,
            host=t.db_host,
            port=t.db_port,
            server=t.server,
            template_version=t.template_version,
            schema_version=t.schema_version,
        ),
        limits=merged_limits(plan_limits, t.limits),
        settings=t.settings,
        upstream_url=t.upstream_url,
        created_at=t.created_at,
        updated_at=t.updated_at,
        deleted_at=t.deleted_at,
        purge_after=t.purge_after,
        failure_reason=t.failure_reason,
    )
