"""API key lifecycle: create, list, revoke, rotate with a grace window."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import select, tuple_

from tenant_service.apikeys.schemas import ApiKeyCreate, ApiKeyCreatedView, ApiKeyPage, ApiKeyView
from tenant_service.changes import Unit, unit_of_work
from tenant_service.cursors import decode_cursor, split_page
from tenant_service.db.models import ApiKey
from tenant_service.tenants.lookup import find_owned, find_tenant
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


class ApiKeyService:
    """API key operations shared by the HTTP API and the CLI."""

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx

    def _new_key(
        self, unit: Unit, tenant_id: uuid.UUID, *, name: str, scopes: list[str], expires_at: datetime | None
    ) -> tuple[ApiKey, str]:
        """A new key row in the unit's session, and its secret (which is kept nowhere)."""
        key = generate_api_key()
        row = ApiKey(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            name=name,
            prefix=display_prefix(key),
            key_hash=hash_api_key(key, self._ctx.settings.security.api_key_hash_secret),
            scopes=scopes,
            expires_at=expires_at,
            created_at=utcnow(),
        )
        unit.session.add(row)
        return row, key

    async def create(self, ref: str, data: ApiKeyCreate, *, actor: str, unit: Unit | None = None) -> ApiKeyCreatedView:
        """A new key for the tenant (in the caller's ``unit``, or a transaction of its own).

        Raises:
            InvalidInputError: ``expires_at`` is not in the future.
            InvalidStateError: the tenant is being deleted or deleted.
        """
        at = data.expires_at
        if at is not None and (at.tzinfo is None or at.year >= 9999 or at <= utcnow()):  # 9999: UTC may overflow
            raise InvalidInputError(
                "expires_at must be in the future",
                errors=[FieldError(field="expires_at", message="must be a future time (before 9999) with a timezone")],
            )
        async with unit_of_work(self._ctx, unit) as work:
            tenant = await work.lock(ref, allowed=CHANGEABLE)
            row, key = self._new_key(
                work, tenant.id, name=data.name, scopes=list(data.scopes), expires_at=data.expires_at
            )
            await work.session.flush()
            await work.changed(tenant, actor=actor, action="api_key.create", target=str(row.id),
                               after={"name": row.name, "prefix": row.prefix, "scopes": row.scopes})  # fmt: skip
        return created_view(row, key)

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
        async with unit_of_work(self._ctx) as work:
            tenant = await work.lock(ref)  # revoking is allowed in every status: withdrawing access is always safe
            row = await find_owned(work.session, ApiKey, tenant, key_id, ApiKeyNotFoundError(f"no API key {key_id!r}"))
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                await work.changed(tenant, actor=actor, action="api_key.revoke", target=str(row.id),
                                   before={"status": "active"}, after={"status": "revoked"})  # fmt: skip

    async def rotate(self, ref: str, key_id: str, grace_seconds: int | None, *, actor: str) -> ApiKeyCreatedView:
        """A new key replacing ``key_id``; the old one keeps working for ``grace_seconds``.

        Raises:
            ConflictError: the key is already revoked or expired.
        """
        grace = self._ctx.settings.lifecycle.default_key_grace_seconds if grace_seconds is None else grace_seconds
        async with unit_of_work(self._ctx) as work:
            tenant = await work.lock(ref, allowed=CHANGEABLE)
            old = await find_owned(work.session, ApiKey, tenant, key_id, ApiKeyNotFoundError(f"no API key {key_id!r}"))
            if key_status(old) != "active":
                raise ConflictError(f"the key is {key_status(old)}", code="api_key_inactive")
            new, key = self._new_key(work, tenant.id, name=old.name, scopes=list(old.scopes), expires_at=old.expires_at)
            await work.session.flush()
            cutoff = utcnow() + timedelta(seconds=grace)
            old.expires_at = min(old.expires_at, cutoff) if old.expires_at else cutoff
            old.rotated_to = new.id
            rotated = {"new_key_id": str(new.id), "old_key_expires_at": old.expires_at.isoformat()}
            await work.changed(tenant, actor=actor, action="api_key.rotate", target=str(old.id), after=rotated)
        return created_view(new, key, replaces=old)
