"""The platform events (contract §13) a finished operation announces, in the transaction that records its end."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_service.backups.schemas import backup_view
from tenant_service.db.models import Backup, Operation, Tenant
from tenant_service.operations.schemas import operation_view
from tenant_service.outbox import EventType, emit

#: Events of a kind's successful end (the other kinds, exports and clones, announce nothing of their own: a clone's
#: tenant is announced as ``tenant.created`` when it becomes active).
_SUCCEEDED: dict[str, EventType] = {"restore": "restore.completed", "move": "move.completed"}


async def emit_finished(session: AsyncSession, op: Operation) -> None:
    """Emit the events of ``op``'s end (its row already carries the final state) into ``session``'s transaction.

    ``backup.completed`` / ``backup.failed`` carry the backup object; ``restore.completed``, ``move.completed`` and
    ``operation.failed`` (every failed operation) the operation object. Each carries ``tenant_id`` and ``slug`` when
    the operation is about a tenant.
    """
    if op.state not in ("succeeded", "failed"):
        return  # cancelled: the admin asked for it, nothing to announce
    tenant_id: uuid.UUID | None = op.tenant_id
    slug: str | None = None
    if tenant_id is not None:
        tenant = await session.get(Tenant, tenant_id)
        slug = tenant.slug if tenant is not None else None
    operation: dict[str, Any] = msgspec.to_builtins(operation_view(op))
    if op.kind == "backup":
        backup = await _backup(session, op)
        data = {**msgspec.to_builtins(backup_view(backup)), "operation_id": str(op.id)} if backup else operation
        succeeded = op.state == "succeeded"
        emit(session, "backup.completed" if succeeded else "backup.failed", data, tenant_id=tenant_id, slug=slug)
    elif op.state == "succeeded" and op.kind in _SUCCEEDED:
        emit(session, _SUCCEEDED[op.kind], operation, tenant_id=tenant_id, slug=slug)
    if op.state == "failed":
        emit(session, "operation.failed", operation, tenant_id=tenant_id, slug=slug)


async def _backup(session: AsyncSession, op: Operation) -> Backup | None:
    raw = (op.params or {}).get("backup_id")
    try:
        return await session.get(Backup, uuid.UUID(str(raw))) if raw else None
    except ValueError:
        return None
