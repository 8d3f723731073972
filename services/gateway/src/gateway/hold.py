"""Between authenticate and limit — hold: the requests of a tenant whose database is being switched wait.

While a tenant's database is switched (a restore, a move) the tenant-service sets a cutover hold on it, and the
directory shows it (``TenantEntry.hold``) as soon as the change event has made the gateway fetch. A request of a
held tenant — checked after authentication and the status refusals, before the quota step, so that it is counted
once — waits, without polling, until the directory shows the tenant without that hold; then it goes on with the
tenant's entry as it is then (its status may have changed: the refusals apply again). It waits at most
``CUTOVER_HOLD_SECONDS`` from when this worker first saw the hold, then gets 503 ``tenant_unavailable`` with
``Retry-After``.

Each worker counts its requests in flight per tenant (a dict increment before the quota step, a decrement once
the response has gone). When it first sees a hold it waits until the tenant has none in flight, then acknowledges
the hold in Redis; the tenant-service switches once every live worker has. A worker is live while it heartbeats,
every second, under the registry's installation id (the protocol: :mod:`tenantry_common.holds`). Every Redis call
is bounded by ``GATEWAY_REDIS_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from typing import Final

import redis.asyncio as redis
import structlog
from prometheus_client import Counter, Histogram

from gateway.directory import Directory, TenantEntry
from gateway.errors import GatewayError
from gateway.resolve import served
from tenantry_common.holds import ACK_TTL_SECONDS, HEARTBEAT_KEEP_SECONDS, HEARTBEAT_SCRIPT, HEARTBEAT_SECONDS
from tenantry_common.redis_keys import gateways_key, hold_acks_key

_log = structlog.get_logger("tenantry.gateway.hold")
HELD: Final = Counter(
    "tenantry_gateway_held_requests_total",
    "Requests that waited for a cutover hold, by outcome (released: went on; timed_out: 503)",
    ["outcome"],
)
HOLD_WAIT: Final = Histogram(
    "tenantry_gateway_hold_wait_seconds",
    "How long held requests waited",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60),
)
#: A hold that ran out is a switch-over that overran: it is about to end, one way or the other.
_RETRY_AFTER: Final = "1"
#: Pause between two tries of an acknowledgement Redis did not take.
_ACK_RETRY_SECONDS: Final = 0.05


def _hold_ran_out() -> GatewayError:
    return GatewayError(
        "The tenant is being switched over and is briefly unavailable.",
        code="tenant_unavailable",
        status=503,
        headers={"retry-after": _RETRY_AFTER},
    )


class Holds:
    """One worker's side of the cutover hold: its requests in flight per tenant, the holds it has seen, the
    requests waiting for them, its acknowledgements and its heartbeat."""

    def __init__(
        self, directory: Directory, redis_client: redis.Redis, *, hold_seconds: float, redis_timeout: float
    ) -> None:
        """Built in the worker (after the fork): its instance id is its own."""
        #: Requests in flight per tenant id (only tenants with some).
        self.in_flight: dict[str, int] = {}
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._directory = directory
        self._redis = redis_client
        self._seconds = hold_seconds
        self._timeout = redis_timeout
        #: Tenant id → the hold in force and when this worker first saw it (monotonic).
        self._seen: dict[str, tuple[str, float]] = {}
        #: Tenant id → set when its hold ends or changes (the held requests then look again).
        self._changed: dict[str, asyncio.Event] = {}
        #: Tenant id → set when its last request in flight is done (a hold's acknowledgement waits for it).
        self._drained: dict[str, asyncio.Event] = {}
        self._acks: dict[str, asyncio.Task[None]] = {}
        self._heartbeat = redis_client.register_script(HEARTBEAT_SCRIPT)
        self._heartbeats: asyncio.Task[None] | None = None
        self._released = HELD.labels("released")
        self._timed_out = HELD.labels("timed_out")

    # the hot path -------------------------------------------------------------------------------------
    def enter(self, tenant_id: str) -> None:
        """A request of the tenant goes on to the quota and forward steps."""
        self.in_flight[tenant_id] = self.in_flight.get(tenant_id, 0) + 1

    def leave(self, tenant_id: str) -> None:
        """That request is done."""
        count = self.in_flight[tenant_id] - 1
        if count:
            self.in_flight[tenant_id] = count
            return
        del self.in_flight[tenant_id]
        if self._drained and (drained := self._drained.get(tenant_id)) is not None:
            drained.set()

    # held requests ------------------------------------------------------------------------------------
    async def wait(self, tenant: TenantEntry) -> TenantEntry:
        """Wait while the tenant is held; return its entry once it is not.

        Raises:
            GatewayError: 503 ``tenant_unavailable`` with ``Retry-After`` when the hold lasts longer than
                ``CUTOVER_HOLD_SECONDS``; the status refusals of :func:`gateway.resolve.served` once it ends.
        """
        started = time.monotonic()
        tenant_id, hold = tenant.id, tenant.hold
        while hold is not None:
            remaining = self._first_seen(tenant_id, hold) + self._seconds - time.monotonic()
            if remaining <= 0:
                self._timed_out.inc()
                HOLD_WAIT.observe(time.monotonic() - started)
                raise _hold_ran_out()
            changed = self._changed.get(tenant_id)
            if changed is None:
                changed = self._changed[tenant_id] = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await changed.wait()
            entry = self._directory.by_id.get(tenant_id)
            hold = entry.hold if entry is not None else None
        self._released.inc()
        HOLD_WAIT.observe(time.monotonic() - started)
        return served(self._directory.by_id.get(tenant_id))

    def _first_seen(self, tenant_id: str, hold: str) -> float:
        seen = self._seen.get(tenant_id)
        if seen is None or seen[0] != hold:
            self._begin(tenant_id, hold)
            seen = self._seen[tenant_id]
        return seen[1]

    # following the directory --------------------------------------------------------------------------
    def observe(self) -> None:
        """After each directory sync: release the requests of holds that ended, acknowledge new holds."""
        held = self._directory.held
        for tenant_id, (hold, _) in list(self._seen.items()):
            if held.get(tenant_id) != hold:
                self._end(tenant_id)
        for tenant_id, hold in held.items():
            if tenant_id not in self._seen:
                self._begin(tenant_id, hold)

    def _begin(self, tenant_id: str, hold: str) -> None:
        if tenant_id in self._seen:
            self._end(tenant_id)
        self._seen[tenant_id] = (hold, time.monotonic())
        self._acks[tenant_id] = asyncio.get_running_loop().create_task(self._acknowledge(tenant_id, hold))

    def _end(self, tenant_id: str) -> None:
        del self._seen[tenant_id]
        changed = self._changed.pop(tenant_id, None)
        if changed is not None:
            changed.set()
        ack = self._acks.pop(tenant_id, None)
        if ack is not None:
            ack.cancel()

    async def _acknowledge(self, tenant_id: str, hold: str) -> None:
        """Once the tenant has no request in flight here, tell the tenant-service (retried until the hold would
        run out)."""
        deadline = time.monotonic() + self._seconds
        if self.in_flight.get(tenant_id):
            drained = self._drained[tenant_id] = asyncio.Event()
            try:
                async with asyncio.timeout(self._seconds):
                    await drained.wait()
            except TimeoutError:
                _log.warning("hold_not_drained", tenant_id=tenant_id, hold_id=hold,
                             in_flight=self.in_flight.get(tenant_id, 0))  # fmt: skip
                return
            finally:
                if self._drained.get(tenant_id) is drained:
                    del self._drained[tenant_id]
        key = hold_acks_key(hold)
        while True:
            try:
                async with asyncio.timeout(self._timeout), self._redis.pipeline(transaction=False) as pipe:
                    pipe.hset(key, self.instance, 1)
                    pipe.expire(key, ACK_TTL_SECONDS)
                    await pipe.execute()
            except (redis.RedisError, OSError, TimeoutError) as exc:
                if time.monotonic() >= deadline:
                    _log.warning("hold_ack_failed", tenant_id=tenant_id, hold_id=hold, error=type(exc).__name__)
                    return
                await asyncio.sleep(_ACK_RETRY_SECONDS)
                continue
            _log.info("hold_acknowledged", tenant_id=tenant_id, hold_id=hold, instance=self.instance)
            return

    # heartbeat ----------------------------------------------------------------------------------------
    async def _beat(self) -> None:
        while True:
            installation = self._directory.installation
            if installation is not None:
                try:
                    async with asyncio.timeout(self._timeout):
                        await self._heartbeat(keys=[gateways_key(installation)],
                                              args=[self.instance, HEARTBEAT_KEEP_SECONDS])  # fmt: skip
                except (redis.RedisError, OSError, TimeoutError) as exc:
                    _log.debug("gateway_heartbeat_failed", error=type(exc).__name__)
            await asyncio.sleep(HEARTBEAT_SECONDS)

    def start(self) -> None:
        """Heartbeat from now on (once the directory has named the installation)."""
        self._heartbeats = asyncio.get_running_loop().create_task(self._beat())

    async def stop(self) -> None:
        """Stop heartbeating and leave the set of live workers, so that no hold waits for this one."""
        tasks = [t for t in (self._heartbeats, *self._acks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        installation = self._directory.installation
        if installation is not None:
            with contextlib.suppress(redis.RedisError, OSError, TimeoutError):
                async with asyncio.timeout(self._timeout):
                    await self._redis.zrem(gateways_key(installation), self.instance)
