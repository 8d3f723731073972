"""The cutover hold, the tenant-service's side: stop a tenant's traffic at every gateway while its database is
switched (a restore now, a move later), then let it go on.

    async with cutover_hold(ctx, tenant_id) as hold:
        ...  # switch the registry to the new database, within hold.remaining() seconds

On entry the tenant gets a new hold (``hold_id``, ``hold_until`` = now + ``CUTOVER_HOLD_SECONDS``), its revision is
bumped and a change event published: gateways fetch the tenant at once and hold its new requests. Then it waits
until every live gateway worker has acknowledged that it holds the tenant with nothing of it in flight (the
protocol is :mod:`tenantry_common.holds`), at most until the hold runs out (:class:`HoldNotDrainedError`: the caller
aborts its switch). On exit, whatever happened inside, the hold is cleared the same way and held requests go on.

A holder that dies leaves its hold in the registry: it stops counting at ``hold_until`` (the directory feed no
longer shows it) and the reconciler clears it (:func:`clear_expired_holds`).

Without Redis (not configured, or unreachable) there are no acknowledgements: the wait is then a fixed
:data:`PROPAGATION_FALLBACK_SECONDS`, the time in which gateways pick up a change by polling alone, and requests
already in flight are not waited for. That is logged as a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final

import redis.asyncio as redis
import structlog
from sqlalchemy import or_, select

from tenant_service.changes import unit_of_work
from tenant_service.db.models import Tenant
from tenant_service.tenants.lookup import TenantNotFoundError, touch
from tenantry_common.holds import LIVE_SECONDS
from tenantry_common.problems import ConflictError, UnavailableError
from tenantry_common.redis_keys import gateways_key, hold_acks_key
from tenantry_common.timeutil import utcnow

if TYPE_CHECKING:
    from tenant_service.context import AppContext

_log = structlog.get_logger("tenantry.cutover")

#: The wait without acknowledgements: gateways poll the directory every ``DIRECTORY_REFRESH_SECONDS`` (1 s by
#: default), so twice that reaches every one of them — the platform's propagation bound of 2 s.
PROPAGATION_FALLBACK_SECONDS: Final = 2.0
#: How often the acknowledgements are read while waiting for them.
_POLL_SECONDS: Final = 0.025


class HoldNotDrainedError(UnavailableError):
    """Not every live gateway acknowledged the hold before it ran out: the switch must not happen."""

    code = "hold_not_drained"


class HoldInProgressError(ConflictError):
    """The tenant is already held by another cutover."""

    code = "operation_in_progress"


@dataclass(frozen=True)
class Hold:
    """A cutover hold in force on one tenant."""

    tenant_id: uuid.UUID
    id: str
    until: datetime
    """When the hold ends at the latest, as written in the registry."""
    deadline: float
    """The same moment on this process's monotonic clock."""
    placed: float
    """When the hold was placed, on the monotonic clock."""

    def remaining(self) -> float:
        """Seconds left before the hold runs out (0 once it has): the time the switch may still take."""
        return max(0.0, self.deadline - time.monotonic())


def hold_in_force(tenant: Tenant, now: datetime) -> str | None:
    """The tenant's hold id while its hold lasts; None when it has none, or it has run out."""
    if tenant.hold_id is not None and tenant.hold_until is not None and tenant.hold_until > now:
        return tenant.hold_id
    return None


async def place_hold(ctx: AppContext, tenant_id: uuid.UUID, hold_id: str | None = None) -> Hold:
    """Set a new hold on the tenant (committed, revision bumped, change event published); gateways start holding.

    ``hold_id``: the holder's own id (an operation's), so that the holder resumed after a crash takes its hold over
    instead of waiting for it to run out; a new random one when not given.

    Raises:
        TenantNotFoundError: no such tenant.
        HoldInProgressError: the tenant already has a hold of another holder that has not run out.
    """
    seconds = ctx.settings.lifecycle.cutover_hold_seconds
    hold_id = hold_id or secrets.token_hex(16)
    async with unit_of_work(ctx) as unit:
        tenant = await unit.lock(str(tenant_id))
        now = utcnow()
        if hold_in_force(tenant, now) not in (None, hold_id):
            raise HoldInProgressError("another cutover of this tenant is under way")
        placed, until = time.monotonic(), now + timedelta(seconds=seconds)
        tenant.hold_id, tenant.hold_until = hold_id, until
        await touch(unit.session, tenant)
        unit.publish("tenant.changed", tenant_id=tenant.id)
    _log.info("hold_placed", tenant_id=str(tenant_id), hold_id=hold_id, seconds=seconds)
    return Hold(tenant_id=tenant_id, id=hold_id, until=until, deadline=placed + seconds, placed=placed)


async def _unacknowledged(client: redis.Redis, installation: str, hold_id: str) -> tuple[int, list[str]]:
    """How many gateway workers are live, and those of them that have not acknowledged the hold (one round trip,
    live by the Redis server's clock, which stamped their heartbeats)."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.zrange(gateways_key(installation), 0, -1, withscores=True)
        pipe.hkeys(hold_acks_key(hold_id))
        (seconds, micros), members, acks = await pipe.execute()
    now = seconds + micros / 1_000_000
    acknowledged = set(acks)
    live = [member for member, beat in members if beat >= now - LIVE_SECONDS]
    return len(live), sorted(m.decode() for m in live if m not in acknowledged)


async def _propagation_delay(hold: Hold) -> None:
    """Wait until :data:`PROPAGATION_FALLBACK_SECONDS` have passed since the hold was placed."""
    await asyncio.sleep(max(0.0, hold.placed + PROPAGATION_FALLBACK_SECONDS - time.monotonic()))


async def wait_until_drained(ctx: AppContext, hold: Hold) -> None:
    """Wait until every live gateway worker holds the tenant and has none of its requests in flight.

    Raises:
        HoldNotDrainedError: some live worker did not acknowledge before the hold ran out.
    """
    client = ctx.redis
    if client is None:
        _log.warning("hold_without_acknowledgements", reason="redis_not_configured",
                     wait_seconds=PROPAGATION_FALLBACK_SECONDS)  # fmt: skip
        await _propagation_delay(hold)
        return
    installation = str(await ctx.installation_id())
    while True:
        try:
            async with asyncio.timeout(ctx.settings.redis_timeout):
                live, missing = await _unacknowledged(client, installation, hold.id)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            _log.warning("hold_without_acknowledgements", reason="redis_unavailable", error=type(exc).__name__,
                         wait_seconds=PROPAGATION_FALLBACK_SECONDS)  # fmt: skip
            await _propagation_delay(hold)
            return
        if not missing:
            _log.info("hold_drained", tenant_id=str(hold.tenant_id), hold_id=hold.id, gateways=live,
                      seconds=round(time.monotonic() - hold.placed, 3))  # fmt: skip
            return
        remaining = hold.remaining()
        if remaining <= 0:
            _log.warning("hold_not_drained", tenant_id=str(hold.tenant_id), hold_id=hold.id, missing=missing)
            raise HoldNotDrainedError(
                f"{len(missing)} of {live} gateway workers did not stop the tenant's traffic within the hold"
            )
        await asyncio.sleep(min(_POLL_SECONDS, remaining))


async def release_hold(ctx: AppContext, hold: Hold) -> None:
    """Clear the hold (revision bumped, change event published): held requests go on. A hold already cleared (by
    the reconciler, after it ran out) or a purged tenant is left as it is."""
    async with unit_of_work(ctx) as unit:
        try:
            tenant = await unit.lock(str(hold.tenant_id))
        except TenantNotFoundError:
            return
        if tenant.hold_id != hold.id:
            return
        tenant.hold_id = tenant.hold_until = None
        await touch(unit.session, tenant)
        unit.publish("tenant.changed", tenant_id=tenant.id)
    _log.info("hold_released", tenant_id=str(hold.tenant_id), hold_id=hold.id,
              seconds=round(time.monotonic() - hold.placed, 3))  # fmt: skip
    if ctx.redis is not None:
        with contextlib.suppress(redis.RedisError, OSError, TimeoutError):
            async with asyncio.timeout(ctx.settings.redis_timeout):
                await ctx.redis.delete(hold_acks_key(hold.id))  # it would expire anyway


@contextlib.asynccontextmanager
async def cutover_hold(ctx: AppContext, tenant_id: uuid.UUID, hold_id: str | None = None) -> AsyncIterator[Hold]:
    """Hold the tenant's traffic at every gateway for the block; released on exit, whatever happened inside.
    ``hold_id``: see :func:`place_hold`.

    Raises:
        TenantNotFoundError: no such tenant.
        HoldInProgressError: the tenant is already held.
        HoldNotDrainedError: the gateways did not all stop the tenant's traffic in time (the block does not run; the
            hold is released).
    """
    hold = await place_hold(ctx, tenant_id, hold_id)
    try:
        await wait_until_drained(ctx, hold)
        yield hold
    finally:
        try:
            # Shielded: a second cancellation must not leave the tenant held until the reconciler comes by.
            await asyncio.shield(release_hold(ctx, hold))
        except Exception as exc:  # noqa: BLE001 - the hold runs out by itself and the reconciler clears it
            _log.warning("hold_release_failed", tenant_id=str(tenant_id), hold_id=hold.id, error=type(exc).__name__)


async def clear_expired_holds(ctx: AppContext) -> list[uuid.UUID]:
    """Clear every hold that has run out (its holder died or overran): revision bumped, change event published.
    Rows locked by a live holder are skipped. Returns the tenants whose hold was cleared."""
    cleared: list[uuid.UUID] = []
    async with unit_of_work(ctx) as unit:
        query = (
            select(Tenant)
            .where(Tenant.hold_id.is_not(None), or_(Tenant.hold_until.is_(None), Tenant.hold_until <= utcnow()))
            .with_for_update(skip_locked=True)
        )
        for tenant in (await unit.session.execute(query)).scalars():
            _log.warning("hold_expired_cleared", tenant_id=str(tenant.id), hold_id=tenant.hold_id)
            tenant.hold_id = tenant.hold_until = None
            await touch(unit.session, tenant)
            unit.publish("tenant.changed", tenant_id=tenant.id)
            cleared.append(tenant.id)
    return cleared
