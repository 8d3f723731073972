"""Finding a tenant by id or slug: the one place a ``{ref}`` is resolved."""

from __future__ import annotations

import contextlib
import uuid
from typing import TypeVar

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_service.db.models import ApiKey, Tenant, TenantJwtIssuer, revision_seq
from tenantry_common.problems import NotFoundError
from tenantry_common.slugs import SLUG_MAX_LENGTH
from tenantry_common.timeutil import utcnow


class TenantNotFoundError(NotFoundError):
    """No tenant by that id or slug (purged tenants are gone)."""

    code = "tenant_not_found"


async def find_tenant(session: AsyncSession, ref: str, *, lock: bool = False) -> Tenant:
    """The tenant whose id or slug is ``ref``, optionally locked for update.

    Raises:
        TenantNotFoundError: no such tenant.
    """
    # Slugs and ids are ASCII (and Postgres text cannot hold NUL). Anything else is no tenant, and must not be
    # lowercased into one: str.lower() maps some non-ASCII letters to ASCII (the Kelvin sign U+212A to "k").
    if "\x00" in ref or not ref.isascii():
        raise TenantNotFoundError(f"no tenant {ref!r}")
    condition = Tenant.slug == ref.lower()
    if len(ref) > SLUG_MAX_LENGTH:  # 32 hex digits parse as a UUID too, but a ref that short is a slug
        with contextlib.suppress(ValueError):
            condition = Tenant.id == uuid.UUID(ref)
    query = select(Tenant).where(condition)
    if lock:
        query = query.with_for_update()
    tenant = (await session.execute(query)).scalar_one_or_none()
    if tenant is None:
        raise TenantNotFoundError(f"no tenant {ref!r}")
    structlog.contextvars.bind_contextvars(tenant_id=str(tenant.id))
    return tenant


#: Rows that belong to one tenant and are addressed by their own UUID under ``/admin/tenants/{ref}/...``.
Owned = TypeVar("Owned", ApiKey, TenantJwtIssuer)


async def find_owned(
    session: AsyncSession, model: type[Owned], tenant: Tenant, raw_id: str, not_found: NotFoundError
) -> Owned:
    """The ``model`` row with id ``raw_id`` that belongs to ``tenant``, locked for update.

    Raises:
        NotFoundError: ``not_found``, for an id that is not a UUID, unknown, or another tenant's.
    """
    try:
        row_id = uuid.UUID(raw_id)
    except ValueError:
        raise not_found from None
    query = select(model).where(model.id == row_id, model.tenant_id == tenant.id).with_for_update()
    row = (await session.execute(query)).scalar_one_or_none()
    if row is None:
        raise not_found
    return row


async def touch(session: AsyncSession, tenant: Tenant) -> None:
    """Mark the tenant changed: new ``updated_at`` and a new revision, which gateways sync on."""
    tenant.updated_at = utcnow()
    tenant.revision = int(await session.scalar(revision_seq.next_value()) or 0)
