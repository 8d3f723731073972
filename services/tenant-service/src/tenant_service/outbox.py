"""Platform events (contract §13), written to the outbox in the same transaction as the change that causes them.

:func:`emit` adds an event to the caller's session: it commits with the change or not at all, so no committed
change goes unannounced and no event announces a change that rolled back. The webhook dispatcher
(:mod:`tenant_service.webhooks`) delivers what the outbox holds, at least once.

An event's body is what receivers get: ``{"type", "timestamp", "data"}``; ``data`` of an event about a tenant carries
``tenant_id`` and ``slug``, plus what the event is about.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from typing import Any, Final, Literal

import msgspec
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from tenant_service.db.models import OutboxEvent
from tenantry_common.logging import redact_value
from tenantry_common.timeutil import utcnow

EventType = Literal[
    "tenant.created",
    "tenant.updated",
    "tenant.suspended",
    "tenant.resumed",
    "tenant.deleted",
    "tenant.restored",
    "tenant.purged",
    "quota.threshold",
    "backup.completed",
    "backup.failed",
    "restore.completed",
    "move.completed",
    "operation.failed",
]
#: Every event type, in the contract's order.
EVENT_TYPES: Final[tuple[str, ...]] = EventType.__args__  # type: ignore[attr-defined]


def new_event_id() -> str:
    """An event id, as Standard Webhooks examples spell them (``msg_`` and 32 random hex digits)."""
    return "msg_" + secrets.token_hex(16)


def _scrubbed(value: Any) -> Any:
    """``value`` with anything that looks like a secret (an API key, a bearer token, a password in a URL) masked:
    event bodies are stored and sent to other systems, and a tenant's free text may hold one."""
    if isinstance(value, str):
        return redact_value(value)
    if isinstance(value, dict):
        return {k: _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrubbed(v) for v in value]
    return value


def emit(
    session: AsyncSession,
    type_: EventType,
    data: dict[str, Any] | msgspec.Struct,
    *,
    tenant_id: uuid.UUID | str | None = None,
    slug: str | None = None,
) -> OutboxEvent:
    """Add an event to the session's transaction; ``tenant_id`` and ``slug`` go into its data when given."""
    payload = msgspec.to_builtins(data) if isinstance(data, msgspec.Struct) else dict(data)
    if tenant_id is not None:
        payload = {"tenant_id": str(tenant_id), "slug": slug, **payload}
    payload = _scrubbed(payload)
    now = utcnow()
    event = OutboxEvent(
        id=new_event_id(),
        type=type_,
        tenant_id=uuid.UUID(str(tenant_id)) if tenant_id is not None else None,
        body={"type": type_, "timestamp": now.isoformat().replace("+00:00", "Z"), "data": payload},
        created_at=now,
    )
    session.add(event)
    session.info[_EMITTED] = True
    return event


_EMITTED: Final = "tenantry_outbox_emitted"
_listeners: list[Callable[[], None]] = []


def on_committed(listener: Callable[[], None]) -> Callable[[], None]:
    """Call ``listener`` after each commit (in this process) that emitted events; returns the function that stops it.

    The dispatcher is woken this way, so a delivery starts at once rather than at its next poll.
    """
    _listeners.append(listener)
    return lambda: _listeners.remove(listener) if listener in _listeners else None


@sa_event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.info.pop(_EMITTED, False):
        for listener in list(_listeners):
            listener()


@sa_event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_EMITTED, None)
