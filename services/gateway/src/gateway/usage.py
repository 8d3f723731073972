"""Usage counting: each worker counts its tenants' requests per hour in memory and flushes them to the registry.

The quota step (limit.py) calls :meth:`UsageCounter.served` or :meth:`UsageCounter.rejected` once per request: a
dict lookup and an increment, no I/O. Every ``USAGE_FLUSH_SECONDS`` (and on a graceful stop) the worker's
:class:`UsageFlusher` takes what was counted, cuts it into batches of at most ``MAX_BATCH_COUNTS`` counts, each with
a random id, and sends them to the tenant-service (``POST /internal/v1/usage``). A batch is sent again, unchanged and
under the same id, until it is acknowledged: the tenant-service records the id in the transaction that adds the
counts, so a retry after a lost answer counts nothing twice. While batches wait, new requests are counted into new
buckets, which are merged per tenant and hour; the buckets are bounded (``MAX_PENDING_BUCKETS``) and a count that
cannot be kept is logged and counted in ``tenantry_gateway_usage_dropped_total``, never lost silently.
docs/usage.md has the exactly-once argument.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Final

import httpx
import msgspec
import structlog
from prometheus_client import Counter, Gauge

from tenantry_common.usage_api import (
    HOUR_SECONDS,
    MAX_BATCH_COUNTS,
    USAGE_PATH,
    UsageBatch,
    UsageCount,
    decode_usage_ack,
)

_log = structlog.get_logger("tenantry.gateway.usage")
#: Most (tenant, hour) buckets a worker keeps while the tenant-service cannot take them: a day of 8,000 busy tenants.
MAX_PENDING_BUCKETS: Final = 200_000
#: Seconds one flush request may take.
FLUSH_TIMEOUT: Final = 5.0
#: Longest a graceful stop keeps trying to deliver what is left.
STOP_FLUSH_SECONDS: Final = 5.0
#: Answers after which retrying the same batch cannot help: it is logged and dropped.
_HOPELESS: Final = frozenset({400, 413, 422})

BATCHES: Final = Counter(
    "tenantry_gateway_usage_batches_total", "Usage batches sent to the tenant-service, by outcome", ["outcome"]
)
DROPPED: Final = Counter(
    "tenantry_gateway_usage_dropped_total", "Requests that could not be kept for the usage history (logged)"
)
FLUSH_LAG: Final = Gauge(
    "tenantry_gateway_usage_flush_lag_seconds",
    "Seconds since this worker's counts were last all acknowledged by the tenant-service",
)

_encode = msgspec.json.Encoder().encode


class UsageCounter:
    """Requests served and rejected per tenant and hour, in memory (one per worker)."""

    def __init__(self, max_buckets: int = MAX_PENDING_BUCKETS) -> None:
        self._max_buckets = max_buckets
        #: hour start → tenant id → [served, rejected]
        self._hours: dict[int, dict[str, list[int]]] = {}
        self._buckets = 0
        self._hour = -1
        self._current: dict[str, list[int]] = {}
        self._dropped_logged = 0.0

    def _bucket(self, tenant_id: str, now: float) -> list[int] | None:
        hour = int(now) // HOUR_SECONDS * HOUR_SECONDS
        if hour != self._hour:
            self._hour = hour
            self._current = self._hours.setdefault(hour, {})
        bucket = self._current.get(tenant_id)
        if bucket is None:
            if self._buckets >= self._max_buckets:
                return None
            bucket = self._current[tenant_id] = [0, 0]
            self._buckets += 1
        return bucket

    def served(self, tenant_id: str, now: float) -> None:
        """A request the quota let through."""
        bucket = self._bucket(tenant_id, now)
        if bucket is None:
            self._drop(tenant_id)
        else:
            bucket[0] += 1

    def rejected(self, tenant_id: str, now: float) -> None:
        """A request the quota refused (429)."""
        bucket = self._bucket(tenant_id, now)
        if bucket is None:
            self._drop(tenant_id)
        else:
            bucket[1] += 1

    def _drop(self, tenant_id: str) -> None:
        DROPPED.inc()
        now = time.monotonic()
        if now - self._dropped_logged >= 10.0:  # one line every 10 s, not one per request
            self._dropped_logged = now
            _log.error("usage_buckets_full", tenant_id=tenant_id, buckets=self._buckets, max=self._max_buckets)

    @property
    def buckets(self) -> int:
        """Buckets held."""
        return self._buckets

    def take(self) -> list[UsageCount]:
        """Everything counted so far, as counts (the counter starts empty again)."""
        counts = [
            UsageCount(tenant_id=tenant_id, hour=hour, requests=served, rejected=rejected)
            for hour, tenants in self._hours.items()
            for tenant_id, (served, rejected) in tenants.items()
            if served or rejected
        ]
        self._hours = {}
        self._hour = -1
        self._current = {}
        self._buckets = 0
        return counts


class UsageFlusher:
    """Sends a worker's counts to the tenant-service in batches, each retried under its id until acknowledged."""

    def __init__(
        self, counter: UsageCounter, *, base_url: str, token: str, interval: float, timeout: float = FLUSH_TIMEOUT
    ) -> None:
        self.counter = counter
        self._interval = interval
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}", "content-type": "application/json"},
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
        )
        #: Batches not acknowledged yet, oldest first: (batch id, encoded body, requests in it).
        self._unacked: list[tuple[str, bytes, int]] = []
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.last_success = time.monotonic()
        self._failing = False

    def lag(self) -> float:
        """Seconds since everything counted up to then was acknowledged."""
        return time.monotonic() - self.last_success

    @property
    def pending_batches(self) -> int:
        """Batches waiting for an acknowledgement."""
        return len(self._unacked)

    def start(self) -> None:
        """Flush every interval until :meth:`stop`."""
        FLUSH_LAG.set_function(self.lag)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-flush")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - the next pass retries; the loop must not die
                _log.warning("usage_flush_error", error=type(exc).__name__)

    async def flush(self) -> bool:
        """Send the batches waiting, then (when they all went through) what was counted since; True when
        everything is acknowledged."""
        async with self._lock:
            started = time.monotonic()
            if not await self._send_unacked():
                return False
            counts = self.counter.take()
            for start in range(0, len(counts), MAX_BATCH_COUNTS):
                chunk = counts[start : start + MAX_BATCH_COUNTS]
                batch_id = str(uuid.uuid4())
                body = _encode(UsageBatch(batch_id=batch_id, counts=chunk))
                self._unacked.append((batch_id, body, sum(c.requests + c.rejected for c in chunk)))
            if not await self._send_unacked():
                return False
            self.last_success = started
            return True

    async def _send_unacked(self) -> bool:
        """Send the waiting batches in order; stop at the first that is not acknowledged."""
        while self._unacked:
            batch_id, body, requests = self._unacked[0]
            outcome = await self._send(batch_id, body)
            if outcome == "retry":
                BATCHES.labels("failed").inc()
                return False
            if outcome == "hopeless":
                BATCHES.labels("refused").inc()
                DROPPED.inc(requests)
            else:
                BATCHES.labels(outcome).inc()
            self._unacked.pop(0)
        if self._failing:
            self._failing = False
            _log.info("usage_flush_recovered")
        return True

    async def _send(self, batch_id: str, body: bytes) -> str:
        """``acknowledged``, ``duplicate``, ``retry`` (send it again later) or ``hopeless`` (logged, dropped)."""
        try:
            response = await self._http.post(USAGE_PATH, content=body)
        except httpx.HTTPError as exc:
            self._failed(batch_id, error=type(exc).__name__)
            return "retry"
        if response.status_code in _HOPELESS:
            _log.error("usage_batch_refused", batch_id=batch_id, status=response.status_code, body=response.text[:300])
            return "hopeless"
        if response.status_code != 200:
            self._failed(batch_id, status=response.status_code)
            return "retry"
        try:
            ack = decode_usage_ack(response.content)
        except msgspec.DecodeError:
            self._failed(batch_id, error="unexpected_answer")
            return "retry"
        return "duplicate" if ack.duplicate else "acknowledged"

    def _failed(self, batch_id: str, **details: object) -> None:
        # Logged once per outage at warning level (and each retry at debug), not once per interval.
        level = _log.debug if self._failing else _log.warning
        self._failing = True
        level("usage_flush_failed", batch_id=batch_id, pending_batches=len(self._unacked),
              buckets=self.counter.buckets, **details)  # fmt: skip

    async def stop(self) -> None:
        """Stop flushing after a last try (for at most ``STOP_FLUSH_SECONDS``); what is left is logged."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        deadline = time.monotonic() + STOP_FLUSH_SECONDS
        done = False
        while not done and time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                done = await asyncio.wait_for(self.flush(), max(0.1, deadline - time.monotonic()))
            if not done:
                await asyncio.sleep(0.2)
        if not done:
            left = sum(requests for _, _, requests in self._unacked)
            left += sum(c.requests + c.rejected for c in self.counter.take())
            DROPPED.inc(left)
            _log.error("usage_unflushed_at_stop", requests=left, batches=len(self._unacked))
        await self._http.aclose()
