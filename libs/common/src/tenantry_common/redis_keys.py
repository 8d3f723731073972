"""Redis key naming: every key the platform writes lives under one of two namespaces.

Tenant keys start with ``t:{<tenant id>}:``; the braces are a Redis Cluster hash tag, so all of a tenant's
keys live in one slot and a Lua script may touch several of them. Platform-wide keys start with ``tenantry:``.
"""

from __future__ import annotations

from typing import Final
from uuid import UUID

PLATFORM_PREFIX: Final = "tenantry:"

#: Pub/sub channel on which the tenant-service announces changes that gateways must apply.
EVENTS_CHANNEL: Final = PLATFORM_PREFIX + "events"


def gateways_key(installation: str) -> str:
    """The sorted set of the gateway workers that follow one registry (its installation id): member = a worker's
    instance id, score = the Redis time of its last heartbeat."""
    return platform_key("gateways", installation)


def hold_acks_key(hold_id: str) -> str:
    """The hash of the gateway workers that acknowledged a cutover hold: field = a worker's instance id."""
    return platform_key("hold", hold_id)


def tenant_prefix(tenant_id: UUID | str) -> str:
    """The namespace prefix of one tenant's keys."""
    return f"t:{{{UUID(str(tenant_id))}}}:"


def tenant_key(tenant_id: UUID | str, *parts: str) -> str:
    """A key inside the tenant's namespace, built from ``parts`` joined by ``:``.

    Raises:
        ValueError: a part is empty or would break out of the namespace with braces.
    """
    for part in parts:
        if not part or "{" in part or "}" in part:
            raise ValueError(f"invalid key part: {part!r}")
    return tenant_prefix(tenant_id) + ":".join(parts)


def platform_key(*parts: str) -> str:
    """A platform-wide key, under ``tenantry:``."""
    return PLATFORM_PREFIX + ":".join(parts)


def _counter_prefix(tenant_id: UUID | str, unit: str) -> str:
    """A tenant's request counters per ``unit`` (``m``: minute, ``d``: day), up to the period's number."""
    return tenant_key(tenant_id, "rl", unit) + ":"


def minute_counter_key(tenant_id: UUID | str, minute: int) -> str:
    """The per-minute request counter for the minute number ``minute`` (epoch seconds // 60)."""
    return _counter_prefix(tenant_id, "m") + str(minute)


def day_counter_key(tenant_id: UUID | str, day: int) -> str:
    """The per-day request counter for day number ``day`` (epoch seconds // 86400, UTC)."""
    return _counter_prefix(tenant_id, "d") + str(day)


def counter_key_prefixes(tenant_id: UUID | str) -> tuple[bytes, bytes]:
    """The tenant's minute and day counter keys as bytes, up to the period's number.

    For callers that build the keys per request (the gateway): ``minute_prefix + b"%d" % minute`` is
    ``minute_counter_key(tenant_id, minute).encode()``, and likewise for days. Build them once per tenant.
    """
    return _counter_prefix(tenant_id, "m").encode(), _counter_prefix(tenant_id, "d").encode()
