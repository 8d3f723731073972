"""Writing and reading audit entries. Entries are written in the same transaction as the change."""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_service.db.models import AuditEntry

SYSTEM_ACTOR = "system"


def record(
    session: AsyncSession,
    *,
    actor: str,
    action: str,
    target: str,
    tenant_id: uuid.UUID | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """Add an audit entry to the session's transaction."""
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    session.add(
        AuditEntry(
            actor=actor,
            action=action,
            target=target,
            tenant_id=tenant_id,
            before=before,
            after=after,
            request_id=request_id,
        )
    )


async def list_entries(
    session: AsyncSession, *, tenant_id: uuid.UUID | None, limit: int, before_id: int | None
) -> list[AuditEntry]:
    """Newest first, ``limit`` entries older than ``before_id``."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if tenant_id is not None:
        query = query.where(AuditEntry.tenant_id == tenant_id)
    if before_id is not None:
        query = query.where(AuditEntry.id < before_id)
    return list((await session.execute(query)).scalars())
