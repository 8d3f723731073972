"""Brute-force limits of sign-ins and sign-ups, counted in Redis.

Sign-in failures are counted per account (the email as typed, lower-cased and hashed: an unknown email is counted
like a known one, so the limit says nothing about which accounts exist) and per client address, both under the
tenant's key namespace: one tenant's attackers never lock another tenant's users out. A counter's window starts
at its first failure; once it holds the limit, attempts are refused (429 ``too_many_attempts``, ``Retry-After``
the window's rest) without checking the password. A successful sign-in clears the account's counter.

Sign-ups are counted per client address and hour, under the platform's namespace.

Redis unavailable: the limits are not enforced (logged); the password hash's cost and concurrency bound still
hold. Without ``REDIS_URL`` there are no limits.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Final

import redis.asyncio as redis
import structlog

from tenantry_common.problems import ProblemError
from tenantry_common.redis_keys import platform_key, tenant_key

_log = structlog.get_logger("tenantry.users.throttle")
_REDIS_ERRORS: Final = (redis.RedisError, OSError, TimeoutError)
# INCR, and start the window at the first failure.
_COUNT: Final = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('TTL', KEYS[1])}
"""


class TooManyAttemptsError(ProblemError):
    """Too many failed sign-ins (or sign-ups) from this account or address."""

    status = 429
    code = "too_many_attempts"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def account_key(tenant_id: uuid.UUID, email: str) -> str:
    """The failure counter of one account (by the lower-cased email's digest: no email in a key)."""
    return tenant_key(tenant_id, "auth", "fail", "acct", _digest(email.strip().lower()))


def address_key(tenant_id: uuid.UUID, address: str) -> str:
    """The failure counter of one client address on one tenant."""
    return tenant_key(tenant_id, "auth", "fail", "addr", _digest(address))


@dataclass(frozen=True)
class Failure:
    """What a counted failure reached: whether it just hit a limit (an audit entry is written once per burst)."""

    account_locked: bool
    address_locked: bool


class Throttle:
    """The counters."""

    def __init__(self, client: redis.Redis | None, *, window: int, per_account: int, per_address: int) -> None:
        self._redis = client
        self._window = window
        self._per_account = per_account
        self._per_address = per_address

    def _refuse(self, retry_after: int) -> TooManyAttemptsError:
        retry = max(1, retry_after)
        return TooManyAttemptsError(
            "Too many failed sign-in attempts; try again later.",
            headers={"Retry-After": str(retry)},
            extra={"retry_after": retry},
        )

    async def check(self, tenant_id: uuid.UUID, email: str, address: str) -> None:
        """Refuse when the account or the address is at its limit.

        Raises:
            TooManyAttemptsError: 429 with ``Retry-After``.
        """
        if self._redis is None:
            return
        keys = (account_key(tenant_id, email), address_key(tenant_id, address))
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.get(key)
                    pipe.ttl(key)
                account, account_ttl, by_address, address_ttl = await pipe.execute()
        except _REDIS_ERRORS as exc:
            _log.warning("login_limits_unavailable", error=type(exc).__name__)
            return
        if int(account or 0) >= self._per_account:
            raise self._refuse(int(account_ttl))
        if int(by_address or 0) >= self._per_address:
            raise self._refuse(int(address_ttl))

    async def failed(self, tenant_id: uuid.UUID, email: str, address: str) -> Failure:
        """Count a failure for the account and the address."""
        if self._redis is None:
            return Failure(False, False)
        try:
            account, _ = await self._redis.eval(_COUNT, 1, account_key(tenant_id, email), self._window)
            by_address, _ = await self._redis.eval(_COUNT, 1, address_key(tenant_id, address), self._window)
        except _REDIS_ERRORS as exc:
            _log.warning("login_limits_unavailable", error=type(exc).__name__)
            return Failure(False, False)
        return Failure(int(account) == self._per_account, int(by_address) == self._per_address)

    async def succeeded(self, tenant_id: uuid.UUID, email: str) -> None:
        """Clear the account's counter after a successful sign-in."""
        if self._redis is None:
            return
        try:
            await self._redis.delete(account_key(tenant_id, email))
        except _REDIS_ERRORS as exc:
            _log.warning("login_limits_unavailable", error=type(exc).__name__)


class SignupLimit:
    """Sign-ups per client address and hour."""

    def __init__(self, client: redis.Redis | None, per_hour: int, installation: str) -> None:
        """``installation``: the registry's id (one registry's sign-ups; several may share a Redis)."""
        self._redis = client
        self._per_hour = per_hour
        self._installation = installation

    def _key(self, address: str) -> tuple[str, int]:
        hour = int(time.time()) // 3600
        key = platform_key("signup", self._installation, _digest(address), str(hour))
        return key, (hour + 1) * 3600 - int(time.time())

    async def take(self, address: str) -> str | None:
        """Take one sign-up of the address's hour; the key to give back when the sign-up fails.

        Raises:
            TooManyAttemptsError: the address made ``SIGNUP_PER_HOUR`` sign-ups this hour.
        """
        if self._redis is None:
            return None
        key, rest = self._key(address)
        try:
            count, _ = await self._redis.eval(_COUNT, 1, key, 3700)
            if int(count) > self._per_hour:
                await self._redis.decr(key)
        except _REDIS_ERRORS as exc:
            _log.warning("signup_limit_unavailable", error=type(exc).__name__)
            return None
        if int(count) > self._per_hour:
            raise TooManyAttemptsError(
                "Too many sign-ups from this address; try again later.",
                headers={"Retry-After": str(max(1, rest))},
                extra={"retry_after": max(1, rest)},
            )
        return key

    async def give_back(self, key: str | None) -> None:
        """A sign-up that did not happen does not count."""
        if self._redis is None or key is None:
            return
        try:
            await self._redis.decr(key)
        except _REDIS_ERRORS as exc:
            _log.warning("signup_limit_unavailable", error=type(exc).__name__)
