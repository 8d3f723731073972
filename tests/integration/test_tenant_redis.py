"""The tenant-app Redis helper: every key lands in the tenant's namespace and cannot leave it."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as redis

from tenantry_app import TenantRedis


async def test_keys_live_under_the_tenants_namespace(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        ra, rb = TenantRedis(client, a), TenantRedis(client, b)
        await ra.set("greeting", value="hello", ttl_seconds=60)
        assert await ra.incr("visits") == 1
        assert await ra.incr("visits", ttl_seconds=60) == 2
        assert await rb.get("greeting") is None
        assert await ra.get("greeting") == b"hello"
        keys = sorted([k.decode() async for k in client.scan_iter(match=f"t:{{{a}}}:*")])
        assert keys == [f"t:{{{a}}}:app:greeting", f"t:{{{a}}}:app:visits"]
        assert [await client.ttl(k) > 0 for k in keys] == [True, True]
        await ra.delete("greeting")
        assert await ra.get("greeting") is None
    finally:
        await client.aclose()


@pytest.mark.parametrize("part", ["", "x}", "{y", "}:t:{other"])
async def test_parts_cannot_break_out_of_the_namespace(redis_url: str, part: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        with pytest.raises(ValueError, match="invalid key part"):
            await TenantRedis(client, str(uuid.uuid4())).set(part, value=1)
    finally:
        await client.aclose()
