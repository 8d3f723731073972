"""HTTP endpoint ``/admin/audit``."""

from __future__ import annotations

import contextlib
import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, get
from litestar.params import QueryParameter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_service.audit.service import list_entries
from tenant_service.auth import admin_guard
from tenant_service.db.models import AuditEntry
from tenant_service.deps import Ctx
from tenant_service.openapi import ADMIN_SECURITY, problems
from tenant_service.tenants.lookup import TenantNotFoundError, find_tenant
from tenantry_common.problems import FieldError, InvalidInputError


async def _audited_tenant(session: AsyncSession, ref: str) -> uuid.UUID:
    """The id of the tenant ``ref``; a purged tenant's id still names its entries (the log outlives tenants).

    Raises:
        TenantNotFoundError: no such tenant, and no entries of a tenant with that id.
    """
    try:
        return (await find_tenant(session, ref)).id
    except TenantNotFoundError:
        if len(ref) == 36 and ref.isascii():  # uuid.UUID() also reads non-ASCII digits
            with contextlib.suppress(ValueError):
                tenant_id = uuid.UUID(ref)
                if await session.scalar(select(AuditEntry.id).where(AuditEntry.tenant_id == tenant_id).limit(1)):
                    return tenant_id
        raise


class AuditView(msgspec.Struct):
    """One audit entry."""

    id: int
    at: datetime
    actor: str
    action: str
    tenant_id: str | None
    target: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None


class AuditPage(msgspec.Struct):
    """A page of audit entries, newest first."""

    items: list[AuditView]
    next_cursor: str | None


class AuditController(Controller):
    """Who changed what, when."""

    path = "/admin/audit"
    guards = [admin_guard]  # noqa: RUF012
    tags = ["audit"]  # noqa: RUF012
    security = ADMIN_SECURITY

    @get("/", summary="Audit log", responses=problems(401, 404, 422, 503))
    async def list_audit(
        self,
        ctx: Ctx,
        tenant: Annotated[str | None, QueryParameter(required=False, max_length=64)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, QueryParameter(required=False, max_length=32)] = None,
    ) -> AuditPage:
        """Entries newest first, optionally of one tenant (by id or slug; by id after a purge too)."""
        before_id = None
        if cursor is not None:
            if not (cursor.isascii() and cursor.isdigit()) or int(cursor) >= 2**63:  # a bigint audit id
                raise InvalidInputError("invalid cursor", errors=[FieldError(field="cursor", message="not a cursor")])
            before_id = int(cursor)
        async with ctx.sessions() as session:
            tenant_id = await _audited_tenant(session, tenant) if tenant else None
            rows = await list_entries(session, tenant_id=tenant_id, limit=limit + 1, before_id=before_id)
        page = rows[:limit]
        items = [
            AuditView(
                id=r.id,
                at=r.at,
                actor=r.actor,
                action=r.action,
                tenant_id=str(r.tenant_id) if r.tenant_id else None,
                target=r.target,
                before=r.before,
                after=r.after,
                request_id=r.request_id,
            )
            for r in page
        ]
        return AuditPage(items=items, next_cursor=str(page[-1].id) if len(rows) > limit else None)
