"""API key lifecycle: create, list, revoke, rotate with a grace window."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_service.apikeys.schemas import ApiKeyCreate, ApiKeyCreatedView, ApiKeyPage, ApiKeyView
from tenant_service.audit.service import record
from tenant_service.cursors import decode_cursor, split_page
from tenant_service.db.models import ApiKey, Tenant
from tenant_service.tenants.lookup import find_owned, find_tenant, touch
from tenantry_common.apikeys import display_prefix, generate_api_key, hash_api_key
from tenantry_common.lifecycle import CHANGEABLE
from tenantry_common.problems import ConflictError, FieldError, InvalidInputError, NotFoundError
from tenantry_common.timeutil import utcnow

if TYPE_CHECKING:
    from tenant_service.context import AppContext

_log = structlog.get_logger("tenantry.apikeys")


class ApiKeyNotFoundError(NotFoundError):
    """No such key for this tenant."""

    code = "api_key_not_found"


def key_status(row: ApiKey, now: datetime | None = None) -> str:
    """``active``, ``revoked`` or ``expired``."""
    now = now or utcnow()
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    return "active"


def key_view(row: ApiKey) -> ApiKeyView:
    """The public view of a key."""
    return ApiKeyView(
        id=str(row.id),
        name=row.name,
        prefix=row.prefix,
        scopes=list(row.scopes),
        status=key_status(row),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        rotated_to=str(row.rotated_to) if row.rotated_to else None,
    )


def created_view(row: ApiKey, key: str, *, replaces: ApiKey | None = None) -> ApiKeyCreatedView:
    """The view of a new key, with its secret."""
    return ApiKeyCreatedView(
        id=str(row.id),
        name=row.name,
        prefix=row.prefix,
        scopes=list(row.scopes),
        status=key_status(row),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        rotated_to=None,
        key=key,
        tenant_id=str(row.tenant_id),
        replaces=str(replaces.id) if replaces else None,
        replaced_key_expires_at=replaces.expires_at if replaces else None,
    )


async def create_key(
    ctx: AppContext,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    name: str,
    scopes: list[str],
    expires_at: datetime | None,
) -> tuple[ApiKey, str]:
    """Add a new key to the session; return the row and the secret (which is not kept anywhere)."""
    key = generate_api_key()
    row = ApiKey(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        name=name,
        prefix=display_prefix(key),
        key_hash=hash_api_key(key, ctx.settings.security.api_key_hash_secret),
        scopes=scopes,
        expires_at=expires_at,
        created_at=utcnow(),
    )
    session.add(row)
    await session.flush()
    return row, key


class ApiKeyService:
    """API key operations shared by the HTTP API and the CLI."""

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx

    async def create(self, ref: str, data: ApiKeyCreate, *, actor: str) -> ApiKeyCreatedView:
        """A new key for the tenant.

        Raises:
            InvalidInputError: ``expires_at`` is not in the future.
        """
        at = data.expires_at
        if at is not None and (at.tzinfo is None or at.year >= 9999 or at <= utcnow()):  # 9999: UTC may overflow
            raise InvalidInputError(
                "expires_at must be in the future",
                errors=[FieldError(field="expires_at", message="must be a future time (before 9999) with a timezone")],
            )
        async with self._ctx.sessions() as session, session.begin():
            tenant = await find_tenant(session, ref, lock=True)
            self._writable(tenant)
            row, key = await create_key(
                self._ctx, session, tenant.id, name=data.name, scopes=list(data.scopes), expires_at=data.expires_at
            )
            await touch(session, tenant)
            record(session, actor=actor, action="api_key.create", target=str(row.id), tenant_id=tenant.id,
                   after={"name": row.name, "prefix": row.prefix, "scopes": row.scopes})  # fmt: skip
        await self._ctx.events.publish("tenant.changed", tenant_id=tenant.id)
        return created_view(row, key)

    @staticmethod
    def _writable(tenant: Tenant) -> None:
        if tenant.status not in CHANGEABLE:
            raise ConflictError(f"the tenant is {tenant.status}", code="invalid_state")

    async def list(self, ref: str, *, limit: int = 100, cursor: str | None = None) -> ApiKeyPage:
        """A page of the tenant's keys, newest first; ``next_cursor`` continues after the page's last key.

        Raises:
            TenantNotFoundError: no such tenant.
            InvalidInputError: a cursor this API did not make.
        """
        after = decode_cursor(cursor) if cursor else None
        async with self._ctx.sessions() as session:
            tenant = await find_tenant(session, ref)
            query = select(ApiKey).where(ApiKey.tenant_id == tenant.id)
            if after is not None:
                query = query.where(tuple_(ApiKey.created_at, ApiKey.id) < tuple_(*after))
            rows = await session.execute(query.order_by(ApiKey.created_at.desc(), ApiKey.id.desc()).limit(limit + 1))
            page, next_cursor = split_page(list(rows.scalars()), limit)
        return ApiKeyPage(items=[key_view(k) for k in page], next_cursor=next_cursor)

    async def revoke(self, ref: str, key_id: str, *, actor: str) -> None:
        """Revoke a key now (idempotent)."""
        async with self._ctx.sessions() as session, session.begin():
            tenant = await find_tenant(session, ref, lock=True)
            row = await find_owned(session, ApiKey, tenant, key_id, ApiKeyNotFoundError(f"no API key {key_id!r}"))
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                await touch(session, tenant)
                record(session, actor=actor, action="api_key.revoke", target=str(row.id), tenant_id=tenant.id,
                       before={"status": "active"}, after={"status": "revoked"})  # fmt: skip
        await self._ctx.events.publish("tenant.changed", tenant_id=tenant.id)

    async def rotate(self, ref: str, key_id: str, grace_seconds: int | None, *, actor: str) -> ApiKeyCreatedView:
        """A new key replacing ``key_id``; the old one keeps working for ``grace_seconds``.

        Raises:
            ConflictError: the key is already revoked or expired.
        """
        grace = self._ctx.settings.lifecycle.default_key_grace_seconds if grace_seconds is None else grace_seconds
        async with self._ctx.sessions() as session, session.begin():
            tenant = await find_tenant(session, ref, lock=True)
            self._writable(tenant)
            old = await find_owned(session, ApiKey, tenant, key_id, ApiKeyNotFoundError(f"no API key {key_id!r}"))
            if key_status(old) != "active":
                raise ConflictError(f"the key is {key_status(old)}", code="api_key_inactive")
            new, key = await create_key(
                self._ctx, session, tenant.id, name=old.name, scopes=list(old.scopes), expires_at=old.expires_at
            )
            cutoff = utcnow() + timedelta(seconds=grace)
            old.expires_at = min(old.expires_at, cutoff) if old.expires_at else cutoff
            old.rotated_to = new.id
            await touch(session, tenant)
            record(session, actor=actor, action="api_key.rotate", target=str(old.id), tenant_id=tenant.id,
                   after={"new_key_id": str(new.id), "old_key_expires_at": old.expires_at.isoformat()})  # fmt: skip
        await self._ctx.events.publish("tenant.changed", tenant_id=tenant.id)
        return created_view(new, key, replaces=old)
