"""The tenant directory for gateways: tenants, domains, limits, API key hashes, external JWT issuers and cutover
holds changed since a revision."""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Annotated, Any

from litestar import Controller, get
from litestar.params import PathParameter, QueryParameter
from sqlalchemy import func, select

from tenant_service.auth import service_guard
from tenant_service.context import AppContext
from tenant_service.cutover import hold_in_force
from tenant_service.db.models import (
    ApiKey,
    Plan,
    Tenant,
    TenantDomain,
    TenantJwtIssuer,
    TenantTombstone,
    UserSession,
)
from tenant_service.deps import Ctx
from tenant_service.failpoints import failpoint
from tenant_service.internal.scopes import DIRECTORY_READ, SCOPE_OPT
from tenant_service.openapi import problems, service_security
from tenant_service.users.service import REVOKED_SESSION_HORIZON
from tenantry_common.directory import DirectoryIssuer, DirectoryKey, DirectoryPage, DirectoryTenant
from tenantry_common.limits import merged_limits
from tenantry_common.timeutil import utcnow


async def directory_since(ctx: AppContext, since: int, tenant_id: uuid.UUID | None = None) -> DirectoryPage:
    """Everything changed after ``since`` (everything when 0), or one tenant when ``tenant_id`` is given."""
    async with ctx.sessions() as session, session.begin():
        high_water = int(
            await session.scalar(
                select(
                    func.greatest(
                        select(func.coalesce(func.max(Tenant.revision), 0)).scalar_subquery(),
                        select(func.coalesce(func.max(TenantTombstone.revision), 0)).scalar_subquery(),
                    )
                )
            )
            or 0
        )
        query = select(Tenant)  # every status: a gateway serves a tenant or refuses it with the right error
        removed_query = select(TenantTombstone.tenant_id)
        if tenant_id is not None:
            query = query.where(Tenant.id == tenant_id)
            removed_query = removed_query.where(TenantTombstone.tenant_id == tenant_id)
        elif since > 0:
            query = query.where(Tenant.revision > since)
            removed_query = removed_query.where(TenantTombstone.revision > since)
        tenants = list((await session.execute(query)).scalars())
        removed = [str(t) for t in (await session.execute(removed_query)).scalars()]
        ids = [t.id for t in tenants]
        domains: dict[uuid.UUID, list[str]] = defaultdict(list)
        keys: dict[uuid.UUID, list[DirectoryKey]] = defaultdict(list)
        issuers: dict[uuid.UUID, list[DirectoryIssuer]] = defaultdict(list)
        revoked: dict[uuid.UUID, list[str]] = defaultdict(list)
        if ids:
            for tid, session_id in await session.execute(
                select(UserSession.tenant_id, UserSession.id).where(
                    UserSession.tenant_id.in_(ids),
                    UserSession.revoked_at > func.now() - REVOKED_SESSION_HORIZON,
                )
            ):
                revoked[tid].append(str(session_id))
            for tid, domain in await session.execute(
                select(TenantDomain.tenant_id, TenantDomain.domain).where(TenantDomain.tenant_id.in_(ids))
            ):
                domains[tid].append(domain)
            for key in (await session.execute(select(ApiKey).where(ApiKey.tenant_id.in_(ids)))).scalars():
                keys[key.tenant_id].append(
                    DirectoryKey(
                        id=str(key.id),
                        hash=key.key_hash.hex(),
                        scopes=list(key.scopes),
                        expires_at=key.expires_at.timestamp() if key.expires_at else None,
                        revoked=key.revoked_at is not None,
                    )
                )
            for row in (
                await session.execute(
                    select(TenantJwtIssuer)
                    .where(TenantJwtIssuer.tenant_id.in_(ids))
                    .order_by(TenantJwtIssuer.created_at, TenantJwtIssuer.id)
                )
            ).scalars():
                issuers[row.tenant_id].append(
                    DirectoryIssuer(
                        id=str(row.id),
                        issuer=row.issuer,
                        audience=row.audience,
                        jwks_url=row.jwks_url,
                        algorithms=list(row.algorithms),
                        role_claim=row.role_claim,
                        role_map=dict(row.role_map),
                    )
                )
        plans: dict[str, dict[str, Any]] = {p.name: p.limits for p in (await session.execute(select(Plan))).scalars()}
    installation = await ctx.installation_id()
    now = utcnow()
    return DirectoryPage(
        revision=high_water,
        tenants=[
            DirectoryTenant(
                id=str(t.id),
                slug=t.slug,
                status=t.status,
                plan=t.plan,
                limits=merged_limits(plans.get(t.plan, {}), t.limits),
                upstream_url=t.upstream_url,
                domains=sorted(domains[t.id]),
                keys=keys[t.id],
                revision=t.revision,
                jwt_issuers=issuers[t.id],
                hold=hold_in_force(t, now),
                revoked_sessions=sorted(revoked[t.id]),
            )
            for t in tenants
        ],
        removed=removed,
        full=since == 0 and tenant_id is None,
        installation=str(installation),
    )


class DirectoryController(Controller):
    """What gateways read to route, authenticate and limit without a call per request (scope ``directory:read``)."""

    path = "/internal/v1/directory"
    guards = [service_guard]  # noqa: RUF012
    tags = ["internal"]  # noqa: RUF012
    opt = {SCOPE_OPT: DIRECTORY_READ}  # noqa: RUF012
    security = service_security(DIRECTORY_READ)

    @get("/", summary="Tenants changed since a revision", responses=problems(401, 403, 422, 503))
    async def changes(self, ctx: Ctx, since: Annotated[int, QueryParameter(ge=0, le=2**62)] = 0) -> DirectoryPage:
        """Everything when ``since`` is 0; otherwise only tenants (and removals) after that revision."""
        page = await directory_since(ctx, since)
        await failpoint("directory.before_answer")  # a slow answer, for the gateway's catch-up test
        return page

    @get("/tenants/{tenant_id:uuid}", summary="One tenant's directory entry", responses=problems(401, 403, 404, 503))
    async def one(self, ctx: Ctx, tenant_id: Annotated[uuid.UUID, PathParameter()]) -> DirectoryPage:
        """The entry of one tenant (or its removal), for event-driven refreshes."""
        return await directory_since(ctx, 0, tenant_id)
