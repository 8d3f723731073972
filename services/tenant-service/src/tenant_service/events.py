"""Change events, published on Redis after each committed change (the event itself: :mod:`tenantry_common.events`).

Publishing is best-effort with a short timeout: gateways also refresh on a timer, so a lost event delays a
change by at most one refresh period and never blocks an admin request.
"""

from __future__ import annotations

import uuid

import redis.asyncio as redis
import structlog

from tenantry_common.events import EVENTS_CHANNEL, EventKind, encode_event

_log = structlog.get_logger("tenantry.events")


class EventPublisher:
    """Publishes change events on the platform events channel."""

    def __init__(self, client: redis.Redis | None) -> None:
        self._client = client

    async def publish(self, kind: EventKind, *, tenant_id: uuid.UUID | None = None, plan: str | None = None) -> None:
        """Publish one event; failures are logged, never raised."""
        if self._client is None:
            return
        payload = encode_event(kind, tenant_id=str(tenant_id) if tenant_id else None, plan=plan)
        try:
            await self._client.publish(EVENTS_CHANNEL, payload)
        except Exception as exc:  # noqa: BLE001 - best-effort: the change is committed, never fail the request now
            _log.warning("event_publish_failed", kind=kind, error=type(exc).__name__)
