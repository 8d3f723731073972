"""The platform's change events: the tenant-service publishes one on Redis after each committed change.

Gateways re-read the tenant directory when any event arrives; tenant apps (``tenantry-app``) drop a purged tenant's
engine. Events are hints: a lost one delays a change by one directory poll, so every consumer also polls.

The channel is ``EVENTS_CHANNEL`` (named with the other Redis keys in :mod:`tenantry_common.redis_keys`); the
payload is a JSON :class:`ChangeEvent`.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from tenantry_common.redis_keys import EVENTS_CHANNEL

__all__ = ["EVENTS_CHANNEL", "ChangeEvent", "EventKind", "decode_event", "encode_event"]

EventKind = Literal["tenant.changed", "tenant.purged", "tenant.database_changed", "plan.changed"]
"""What changed: a tenant (its row, keys, domains or issuers), a tenant's purge (its database is gone), the database
behind a tenant (restored from a backup, or moved: apps drop their connections and credentials), a plan."""


class ChangeEvent(msgspec.Struct, frozen=True):
    """Something about a tenant (or a plan) changed.

    ``kind`` is a plain string on the wire, so a consumer older than a new kind still decodes the event (and
    ignores it).
    """

    kind: str
    tenant_id: str | None = None
    plan: str | None = None

    def purged_tenant(self) -> str | None:
        """The id of the tenant whose purge this event announces, else ``None``."""
        return self.tenant_id if self.kind == "tenant.purged" else None

    def replaced_database(self) -> str | None:
        """The id of the tenant whose database was purged or replaced (connections to it are useless), else
        ``None``."""
        return self.tenant_id if self.kind in ("tenant.purged", "tenant.database_changed") else None


def encode_event(kind: EventKind, *, tenant_id: str | None = None, plan: str | None = None) -> bytes:
    """The payload to publish on :data:`EVENTS_CHANNEL`."""
    return msgspec.json.encode(ChangeEvent(kind=kind, tenant_id=tenant_id, plan=plan))


decode_event = msgspec.json.Decoder(ChangeEvent).decode
"""Parse a payload received on :data:`EVENTS_CHANNEL`.

Raises:
    msgspec.DecodeError: not a change event.
"""
