"""Step 3 — limit: per-minute rate and per-day quota in one atomic Redis call.

One Lua script per request reads both counters, refuses without counting when either limit is reached, else
increments both and makes sure each has a TTL. Every key is under the tenant's ``t:{<id>}:`` namespace, so the
two keys share a cluster slot. When Redis is slow or down the configured failure mode applies at once: a short
circuit breaker stops every request from waiting out the timeout.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Final

import redis.asyncio as redis
import structlog

from tenantry_common.redis_keys import day_counter_key, minute_counter_key

_log = structlog.get_logger("tenantry.gateway.limit")

# KEYS: minute counter, day counter. ARGV: per-minute limit, per-day limit (-1 = none), minute TTL, day TTL.
# Returns {verdict, minute count, day count}; verdict 0 = allowed (and counted), 1 = rate limited, 2 = quota.
QUOTA_SCRIPT: Final = """
local m = tonumber(redis.call('GET', KEYS[1]) or '0')
local d = tonumber(redis.call('GET', KEYS[2]) or '0')
local rpm = tonumber(ARGV[1])
local rpd = tonumber(ARGV[2])
if rpm >= 0 and m >= rpm then return {1, m, d} end
if rpd >= 0 and d >= rpd then return {2, m, d} end
m = redis.call('INCR', KEYS[1])
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
d = redis.call('INCR', KEYS[2])
if redis.call('TTL', KEYS[2]) < 0 then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
return {0, m, d}
"""
_BREAKER_SECONDS: Final = 1.0


@dataclass(frozen=True, slots=True)
class QuotaDecision:
    """What the limiter decided; ``headers`` are the RateLimit-* headers (empty when Redis was not asked)."""

    verdict: str
    retry_after: int
    headers: tuple[tuple[bytes, bytes], ...]


ALLOWED_UNMETERED: Final = QuotaDecision("allowed", 0, ())


class QuotaUnavailableError(Exception):
    """Redis could not be asked and the failure mode is ``closed``."""


class Limiter:
    """Applies a tenant's limits with one Redis call."""

    def __init__(self, client: redis.Redis, *, timeout: float, failure_mode: str) -> None:
        self._client = client
        self._timeout = timeout
        self._closed = failure_mode == "closed"
        self._script = client.register_script(QUOTA_SCRIPT)
        self._down_until = 0.0

    def _unavailable(self) -> QuotaDecision:
        if self._closed:
            raise QuotaUnavailableError
        return ALLOWED_UNMETERED

    async def check(self, tenant_id: str, per_minute: int | None, per_day: int | None) -> QuotaDecision:
        """Count the request against the tenant's limits, or refuse it.

        Raises:
            QuotaUnavailableError: Redis is unavailable and the failure mode is ``closed``.
        """
        now = time.time()
        if now < self._down_until:
            return self._unavailable()
        minute, day = int(now // 60), int(now // 86400)
        minute_reset = (minute + 1) * 60 - int(now)
        day_reset = (day + 1) * 86400 - int(now)
        try:
            # asyncio.timeout, unlike wait_for, wraps the call in no extra Task: this runs on every request.
            async with asyncio.timeout(self._timeout):
                verdict, m_count, d_count = await self._script(
                    keys=[minute_counter_key(tenant_id, minute), day_counter_key(tenant_id, day)],
                    args=[
                        -1 if per_minute is None else per_minute,
                        -1 if per_day is None else per_day,
                        minute_reset + 5,
                        day_reset + 60,
                    ],
                )
        except (redis.RedisError, OSError, TimeoutError) as exc:
            self._down_until = time.time() + _BREAKER_SECONDS
            _log.warning(
                "quota_backend_unavailable", error=type(exc).__name__, mode="closed" if self._closed else "open"
            )
            return self._unavailable()
        code = int(verdict)
        if code == 2 and per_day is not None:
            limit, used, reset = per_day, int(d_count), day_reset
        elif per_minute is not None:
            limit, used, reset = per_minute, int(m_count), minute_reset
        elif per_day is not None:
            limit, used, reset = per_day, int(d_count), day_reset
        else:
            return ALLOWED_UNMETERED
        remaining = 0 if code else max(0, limit - used)
        headers = (
            (b"ratelimit-limit", str(limit).encode()),
            (b"ratelimit-remaining", str(max(0, remaining)).encode()),
            (b"ratelimit-reset", str(reset).encode()),
        )
        name = {0: "allowed", 1: "rate_limited", 2: "quota_exceeded"}[code]
        return QuotaDecision(name, reset, headers)
