"""A Redis helper confined to one tenant: every key it touches is under ``t:{<tenant id>}:``.

There is deliberately no way to pass a raw key: names are key parts, joined inside the tenant's namespace.
"""

from __future__ import annotations

import redis.asyncio as redis

from tenantry_common.redis_keys import tenant_key


class TenantRedis:
    """Get, set, count and expire keys in one tenant's namespace."""

    def __init__(self, client: redis.Redis, tenant_id: str) -> None:
        self._client = client
        self.tenant_id = tenant_id

    def key(self, *parts: str) -> str:
        """The full key for ``parts`` (``t:{<id>}:app:<parts…>``)."""
        return tenant_key(self.tenant_id, "app", *parts)

    async def get(self, *parts: str) -> bytes | None:
        """The value, or ``None``."""
        value = await self._client.get(self.key(*parts))
        return value.encode() if isinstance(value, str) else value

    async def set(self, *parts: str, value: bytes | str | int, ttl_seconds: int | None = None) -> None:
        """Store a value, optionally expiring."""
        await self._client.set(self.key(*parts), value, ex=ttl_seconds)

    async def incr(self, *parts: str, amount: int = 1, ttl_seconds: int | None = None) -> int:
        """Add to a counter (creating it), optionally (re)setting its expiry."""
        name = self.key(*parts)
        value = int(await self._client.incrby(name, amount))
        if ttl_seconds is not None:
            await self._client.expire(name, ttl_seconds)
        return value

    async def delete(self, *parts: str) -> None:
        """Remove a key."""
        await self._client.delete(self.key(*parts))
