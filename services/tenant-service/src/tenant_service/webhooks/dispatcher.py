"""The webhook dispatcher: the outbox's events delivered, signed, at least once (contract §13).

Every replica runs one. A pass first *fans out* new events: in one transaction it takes outbox rows not yet fanned
out (``FOR UPDATE SKIP LOCKED``), inserts a delivery for every subscription that wants the event, and marks the rows
fanned out, so a crash either did all of that or none of it. Then it *claims* due deliveries (``FOR UPDATE SKIP
LOCKED``): a claim counts the attempt and pushes ``next_attempt_at`` to the end of a lease, so no other replica takes
the delivery while it is sent, and one whose dispatcher died (``kill -9``) is due again when the lease ends. A 2xx
answer marks it delivered; anything else (another status, a redirect — never followed —, a timeout, a refused
address) schedules the next attempt after an exponential backoff with half jitter, until ``WEBHOOK_RETRY_HOURS``
after the event, when it is marked failed. Outcomes are written in batches, guarded by the attempt number (an
attempt whose lease was taken over by another replica does not overwrite the newer one).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import aiohttp
import msgspec
import structlog
from aiohttp.abc import AbstractResolver
from prometheus_client import Counter, Gauge
from sqlalchemy import text
from yarl import URL

from tenant_service.context import AppContext
from tenant_service.outbox import on_committed
from tenant_service.secretbox import DecryptionError
from tenant_service.tenants.validation import UpstreamNotAllowedError, check_upstream_url
from tenant_service.webhooks.connect import ForbiddenAddressError, SafeResolver, check_literal, refused
from tenant_service.webhooks.signing import secret_context, signature
from tenantry_common.timeutil import utcnow

_log = structlog.get_logger("tenantry.webhooks")
USER_AGENT: Final = "Tenantry-Webhooks/1"
#: Outbox rows one fan-out transaction takes.
FAN_OUT_BATCH: Final = 500
#: Seconds between refreshes of the backlog gauges.
STATS_SECONDS: Final = 5.0
#: Seconds between two retention passes of one replica.
PRUNE_SECONDS: Final = 3600.0
#: Events one retention statement deletes at most.
PRUNE_BATCH: Final = 5000
#: Longest error text kept on a delivery and its webhook.
_ERROR_CHARS: Final = 300

DELIVERIES: Final = Counter(
    "tenantry_webhook_deliveries_total",
    "Webhook delivery attempts by outcome: delivered (2xx), retrying (will be tried again), failed (gave up)",
    ["outcome"],
)
DISABLED: Final = Counter(
    "tenantry_webhook_endpoints_disabled_total",
    "Webhooks disabled because every attempt failed for WEBHOOK_DISABLE_AFTER_HOURS",
)
DISABLED_NOW: Final = Gauge("tenantry_webhook_disabled_endpoints", "Webhooks disabled now (nothing is sent to them)")
OUTBOX_DEPTH: Final = Gauge("tenantry_webhook_outbox_depth", "Outbox events not yet fanned out to deliveries")
PENDING: Final = Gauge(
    "tenantry_webhook_pending_deliveries", "Webhook deliveries waiting to be delivered (not those of disabled webhooks)"
)
OLDEST_PENDING: Final = Gauge(
    "tenantry_webhook_oldest_pending_seconds", "Age of the oldest pending webhook delivery or unfanned event"
)

_FAN_OUT = text(
    """
    WITH ev AS (
        SELECT id, type, created_at FROM event_outbox
        WHERE fanned_out_at IS NULL ORDER BY seq LIMIT :batch FOR UPDATE SKIP LOCKED
    ), ins AS (
        INSERT INTO webhook_deliveries (id, webhook_id, event_id, status, attempts, next_attempt_at, retry_until,
                                        created_at)
        SELECT gen_random_uuid(), w.id, ev.id, 'pending', 0, now(), now() + make_interval(secs => :retry), now()
        FROM ev JOIN webhooks w
            ON ev.type = ANY (w.events) AND w.created_at <= ev.created_at AND w.disabled_at IS NULL
        ON CONFLICT ON CONSTRAINT uq_webhook_deliveries_webhook_event DO NOTHING
        RETURNING 1
    ), done AS (
        UPDATE event_outbox o SET fanned_out_at = now() FROM ev WHERE o.id = ev.id RETURNING 1
    )
    SELECT (SELECT count(*) FROM done) AS events, (SELECT count(*) FROM ins) AS deliveries
    """
)

# Each webhook offers its oldest due deliveries, no more than its free share of WEBHOOK_ENDPOINT_CONCURRENCY (its
# deliveries in flight, leased by any replica, count against it — but not the ones this replica has finished and not
# yet recorded, ``:finished``); the oldest of all those offers are claimed.
_CLAIM = text(
    """
    WITH offered AS (
        SELECT c.id FROM webhooks w
        CROSS JOIN LATERAL (
            SELECT count(*) AS n FROM webhook_deliveries b
            WHERE b.webhook_id = w.id AND b.status = 'pending' AND b.lease_until > now()
              AND b.id <> ALL (CAST(:finished AS uuid[]))
        ) busy
        CROSS JOIN LATERAL (
            SELECT d.id, row_number() OVER (ORDER BY d.next_attempt_at) AS rank FROM webhook_deliveries d
            WHERE d.webhook_id = w.id AND d.status = 'pending' AND d.next_attempt_at <= now()
            ORDER BY d.next_attempt_at LIMIT :per_endpoint
        ) c
        WHERE w.disabled_at IS NULL AND c.rank <= :per_endpoint - busy.n
    ), due AS (
        SELECT d.id FROM webhook_deliveries d
        WHERE d.id IN (SELECT id FROM offered) AND d.status = 'pending' AND d.next_attempt_at <= now()
        ORDER BY d.next_attempt_at LIMIT :limit FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE webhook_deliveries d
        SET attempts = d.attempts + 1, last_attempt_at = now(),
            lease_until = now() + make_interval(secs => :lease), next_attempt_at = now() + make_interval(secs => :lease)
        FROM due WHERE d.id = due.id
        RETURNING d.id, d.webhook_id, d.event_id, d.attempts, d.retry_until
    )
    SELECT c.id, c.webhook_id, c.event_id, c.attempts, c.retry_until, w.url, w.secret_enc,
           CASE WHEN w.previous_secret_until > now() THEN w.previous_secret_enc END AS previous_secret_enc,
           e.body::text AS body
    FROM claimed c JOIN webhooks w ON w.id = c.webhook_id JOIN event_outbox e ON e.id = c.event_id
    """
)

_RECORD = text(
    """
    UPDATE webhook_deliveries d
    SET status = v.status, next_attempt_at = v.next_at, lease_until = NULL, last_status_code = v.code,
        last_error = v.error, delivered_at = CASE WHEN v.status = 'delivered' THEN v.at ELSE d.delivered_at END
    FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[]), CAST(:statuses AS text[]),
                CAST(:next_ats AS timestamptz[]), CAST(:codes AS int[]), CAST(:errors AS text[]),
                CAST(:ats AS timestamptz[])) AS v(id, attempts, status, next_at, code, error, at)
    WHERE d.id = v.id AND d.attempts = v.attempts AND d.status = 'pending'
    """
)

# An endpoint's state after a batch of outcomes. ``v.failures`` counts the batch's failures after its last success
# (all of them when none succeeded). A run of failures that began WEBHOOK_DISABLE_AFTER_HOURS ago (``:disable_after``
# seconds, 0: never) disables the webhook.
_FAILING_SINCE = """CASE WHEN v.failures = 0 THEN NULL
                          WHEN v.succeeded THEN v.failure_at
                          ELSE COALESCE(w.failing_since, v.failure_at) END"""
_ENDPOINTS = text(
    f"""
    UPDATE webhooks w
    SET consecutive_failures = CASE WHEN v.succeeded THEN v.failures ELSE w.consecutive_failures + v.failures END,
        last_success_at = COALESCE(v.success_at, w.last_success_at),
        last_failure_at = COALESCE(v.failure_at, w.last_failure_at),
        last_error = CASE WHEN v.failure_at IS NOT NULL THEN v.error
                          WHEN v.succeeded THEN NULL ELSE w.last_error END,
        failing_since = {_FAILING_SINCE},
        disabled_at = CASE
            WHEN w.disabled_at IS NULL AND CAST(:disable_after AS float8) > 0
                 AND {_FAILING_SINCE} < now() - make_interval(secs => CAST(:disable_after AS float8))
            THEN now() ELSE w.disabled_at END,
        disabled_reason = CASE
            WHEN w.disabled_at IS NULL AND CAST(:disable_after AS float8) > 0
                 AND {_FAILING_SINCE} < now() - make_interval(secs => CAST(:disable_after AS float8))
            THEN 'every attempt failed for ' || CAST(:disable_hours AS text) || ' hours' ELSE w.disabled_reason END
    FROM unnest(CAST(:ids AS uuid[]), CAST(:succeeded AS bool[]), CAST(:failures AS int[]),
                CAST(:success_ats AS timestamptz[]), CAST(:failure_ats AS timestamptz[]), CAST(:errors AS text[]))
        AS v(id, succeeded, failures, success_at, failure_at, error)
    WHERE w.id = v.id
    RETURNING w.id, w.disabled_at = now() AS disabled_now
    """  # noqa: S608 - composed of constants only
)

_PRUNE = text(
    """
    DELETE FROM event_outbox WHERE id IN (
        SELECT e.id FROM event_outbox e
        WHERE e.fanned_out_at IS NOT NULL AND e.fanned_out_at < now() - make_interval(secs => :keep)
          AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id AND d.status = 'pending')
        ORDER BY e.fanned_out_at LIMIT :batch
    )
    """
)

_STATS = text(
    """
    WITH waiting AS (
        SELECT d.created_at FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
        WHERE d.status = 'pending' AND w.disabled_at IS NULL
    )
    SELECT (SELECT count(*) FROM event_outbox WHERE fanned_out_at IS NULL) AS depth,
           (SELECT count(*) FROM waiting) AS pending,
           LEAST((SELECT min(created_at) FROM waiting),
                 (SELECT min(created_at) FROM event_outbox WHERE fanned_out_at IS NULL)) AS oldest,
           (SELECT count(*) FROM webhooks WHERE disabled_at IS NOT NULL) AS disabled
    """
)


@dataclass
class _Claimed:
    id: uuid.UUID
    webhook_id: uuid.UUID
    event_id: str
    attempt: int
    retry_until: datetime
    url: str
    secret_enc: str
    #: The secret a rotation replaced, while it still signs (its grace period).
    previous_secret_enc: str | None
    body: str


@dataclass
class _Outcome:
    claimed: _Claimed
    status: str
    at: datetime
    next_at: datetime
    code: int | None
    error: str | None


@dataclass
class _Endpoint:
    succeeded: bool = False
    failures: int = 0
    success_at: datetime | None = None
    failure_at: datetime | None = None
    error: str | None = None


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """The delay after failed attempt ``attempt`` (1, 2, ...): ``base`` doubling, capped, with half jitter."""
    delay = min(cap, base * 2 ** min(attempt - 1, 40))
    return float(delay / 2 + random.uniform(0, delay / 2))  # noqa: S311 - jitter, not a secret


def compact_body(stored: str | dict[str, Any]) -> bytes:
    """The delivered body: the outbox document as compact JSON, ``type``, ``timestamp`` and ``data`` in that order."""
    doc = msgspec.json.decode(stored) if isinstance(stored, str) else stored
    return msgspec.json.encode({"type": doc.get("type"), "timestamp": doc.get("timestamp"), "data": doc.get("data")})


@dataclass
class Dispatcher:
    """Delivers due webhook deliveries with bounded concurrency; see the module's docstring."""

    ctx: AppContext
    resolver: AbstractResolver | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _slot_freed: asyncio.Event = field(default_factory=asyncio.Event)
    _outcomes: list[_Outcome] = field(default_factory=list)
    _outcome_ready: asyncio.Event = field(default_factory=asyncio.Event)
    _inflight: set[asyncio.Task[None]] = field(default_factory=set)
    _stats_at: float = 0.0
    _pruned_at: float = 0.0
    #: When (``time.monotonic``) the earliest retry this process scheduled is due: it sleeps no longer than that.
    _next_due: float | None = None
    #: Deliveries this replica has finished whose outcome is not written yet (still leased in the registry).
    _unrecorded: set[uuid.UUID] = field(default_factory=set)

    def wake(self) -> None:
        """Look for work now (events were just committed in this process)."""
        self._wake.set()

    async def run_forever(self) -> None:
        """Fan out, claim and deliver until cancelled."""
        settings = self.ctx.settings.webhooks
        stop_listening = on_committed(self.wake)
        timeout = aiohttp.ClientTimeout(total=settings.timeout_seconds)
        resolver = SafeResolver(self.resolver)
        connector = aiohttp.TCPConnector(
            resolver=resolver, limit=settings.concurrency, ttl_dns_cache=None, use_dns_cache=False
        )
        recorder = asyncio.create_task(self._record_forever(), name="webhook-recorder")
        try:
            async with aiohttp.ClientSession(
                connector=connector, timeout=timeout, headers={"User-Agent": USER_AGENT}, auto_decompress=False
            ) as http:
                fan_out = True
                while True:
                    full = False
                    # Cleared before the pass: a wake or a freed slot during it (or during the upkeep after it)
                    # is not lost, so the loop goes round again at once.
                    self._wake.clear()
                    self._slot_freed.clear()
                    try:
                        full = await self.pass_once(http, fan_out=fan_out)
                    except Exception as exc:  # noqa: BLE001 - the registry may be briefly unreachable; retry
                        _log.warning("webhook_dispatch_pass_failed", error=type(exc).__name__)
                    await self._refresh_stats()
                    await self._prune_now_and_then()
                    waits = [asyncio.ensure_future(self._wake.wait())]
                    if full:
                        waits.append(asyncio.ensure_future(self._slot_freed.wait()))
                    pause = settings.poll_seconds
                    if self._next_due is not None:
                        pause = min(pause, max(0.0, self._next_due - time.monotonic()))
                        self._next_due = None
                    try:
                        await asyncio.wait(waits, timeout=pause, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for w in waits:
                            w.cancel()
                    # Only a freed slot: claim again at once, without looking for new events (a commit here wakes,
                    # and the poll looks for other replicas' events).
                    fan_out = self._wake.is_set() or not self._slot_freed.is_set()
        finally:
            stop_listening()
            for task in list(self._inflight):
                task.cancel()
            for task in list(self._inflight):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            recorder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await recorder
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._flush(), timeout=5)
            with contextlib.suppress(Exception):
                await resolver.close()

    async def pass_once(self, http: aiohttp.ClientSession, *, fan_out: bool = True) -> bool:
        """Fan out new events and start due deliveries in free slots; True when there may be more to claim as soon as
        a slot frees (every slot is taken, or some deliveries were claimed and an endpoint's share may be what held
        the others back)."""
        if fan_out:
            await self.fan_out()
        settings = self.ctx.settings.webhooks
        free = settings.concurrency - len(self._inflight)
        if free <= 0:
            return True
        claimed = await self.claim(free)
        for item in claimed:
            task = asyncio.create_task(self._deliver(http, item), name=f"webhook-{item.id}")
            self._inflight.add(task)
            task.add_done_callback(self._done)
        return bool(claimed)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._slot_freed.set()

    async def fan_out(self) -> int:
        """Queue deliveries for every event not yet fanned out; the number of events taken."""
        retry = self.ctx.settings.webhooks.retry_hours * 3600
        total = 0
        while True:
            async with self.ctx.sessions() as session, session.begin():
                row = (await session.execute(_FAN_OUT, {"batch": FAN_OUT_BATCH, "retry": retry})).one()
            total += int(row.events)
            if row.events < FAN_OUT_BATCH:
                return total

    async def claim(self, limit: int) -> list[_Claimed]:
        """Lease up to ``limit`` due deliveries (their attempt counted), at most ``WEBHOOK_ENDPOINT_CONCURRENCY`` in
        flight per webhook across replicas (two replicas claiming at the same instant may each fill a webhook's
        share)."""
        lease = self.ctx.settings.webhooks.timeout_seconds + 5
        async with self.ctx.sessions() as session, session.begin():
            params = {
                "limit": limit,
                "lease": lease,
                "per_endpoint": self.ctx.settings.webhooks.endpoint_concurrency,
                "finished": list(self._unrecorded),
            }
            rows = (await session.execute(_CLAIM, params)).all()
        return [
            _Claimed(
                id=r.id,
                webhook_id=r.webhook_id,
                event_id=r.event_id,
                attempt=r.attempts,
                retry_until=r.retry_until,
                url=r.url,
                secret_enc=r.secret_enc,
                previous_secret_enc=r.previous_secret_enc,
                body=r.body,
            )
            for r in rows
        ]

    async def _deliver(self, http: aiohttp.ClientSession, item: _Claimed) -> None:
        code: int | None = None
        error: str | None = None
        try:
            context = secret_context(item.webhook_id)
            keys = [self.ctx.box.decrypt(item.secret_enc, context)]
            if item.previous_secret_enc is not None:  # a rotation's grace period: both sign (space-separated)
                keys.append(self.ctx.box.decrypt(item.previous_secret_enc, context))
            body = compact_body(item.body)
            timestamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "webhook-id": item.event_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": " ".join(signature(k, item.event_id, timestamp, body) for k in keys),
            }
            # The rules of the URL's creation still hold (UPSTREAM_ALLOWLIST may have shrunk since), and an IP
            # address host is checked here: aiohttp does not ask the resolver about those.
            check_upstream_url(item.url, self.ctx.settings.lifecycle.upstream_allowlist, field="url")
            check_literal(URL(item.url).host or "")
            async with http.post(item.url, data=body, headers=headers, allow_redirects=False) as response:
                code = response.status
                with contextlib.suppress(Exception):
                    await response.content.readany()
            if not 200 <= code < 300:
                error = f"HTTP {code}"
        except UpstreamNotAllowedError:
            error = "address refused: the URL is no longer allowed by UPSTREAM_ALLOWLIST"
        except DecryptionError:
            error = "the signing secret does not decrypt (ENCRYPTION_KEYS is missing its key)"
        except TimeoutError:
            error = "timed out"
        except (aiohttp.ClientError, OSError) as exc:
            forbidden = refused(exc)
            error = f"address refused: {forbidden}" if forbidden else f"connection failed: {type(exc).__name__}"
            if isinstance(exc, ForbiddenAddressError) or forbidden:
                _log.warning("webhook_address_refused", webhook_id=str(item.webhook_id))
        except Exception as exc:  # noqa: BLE001 - any failure is one failed attempt, never a dead dispatcher
            error = f"delivery failed: {type(exc).__name__}"
        self._unrecorded.add(item.id)
        self._outcomes.append(self._outcome(item, code, error))
        self._outcome_ready.set()

    def _outcome(self, item: _Claimed, code: int | None, error: str | None) -> _Outcome:
        settings = self.ctx.settings.webhooks
        now = utcnow()
        if error is None:
            DELIVERIES.labels("delivered").inc()
            return _Outcome(item, "delivered", now, now, code, None)
        next_at = now + timedelta(
            seconds=backoff_seconds(item.attempt, settings.backoff_base_seconds, settings.backoff_max_seconds)
        )
        if next_at > item.retry_until:
            DELIVERIES.labels("failed").inc()
            return _Outcome(item, "failed", now, now, code, error[:_ERROR_CHARS])
        DELIVERIES.labels("retrying").inc()
        return _Outcome(item, "pending", now, next_at, code, error[:_ERROR_CHARS])

    async def _record_forever(self) -> None:
        while True:
            await self._outcome_ready.wait()
            self._outcome_ready.clear()
            await asyncio.sleep(0.01)  # gather what finishes together into one write
            try:
                await self._flush()
            except Exception as exc:  # noqa: BLE001 - kept for the next write; the leases cover a crash meanwhile
                _log.warning("webhook_record_failed", error=type(exc).__name__)
                await asyncio.sleep(1)
                self._outcome_ready.set()

    async def _flush(self) -> None:
        """Write the outcomes gathered so far (deliveries and their endpoints' failure state) in one transaction."""
        if not self._outcomes:
            return
        batch, self._outcomes = self._outcomes, []
        endpoints: dict[uuid.UUID, _Endpoint] = {}
        for o in batch:
            state = endpoints.setdefault(o.claimed.webhook_id, _Endpoint())
            if o.status == "delivered":
                state.succeeded, state.failures, state.success_at = True, 0, o.at
            else:
                state.failures += 1
                state.failure_at, state.error = o.at, o.error
        try:
            async with self.ctx.sessions() as session, session.begin():
                await session.execute(
                    _RECORD,
                    {
                        "ids": [o.claimed.id for o in batch],
                        "attempts": [o.claimed.attempt for o in batch],
                        "statuses": [o.status for o in batch],
                        "next_ats": [o.next_at for o in batch],
                        "codes": [o.code for o in batch],
                        "errors": [o.error for o in batch],
                        "ats": [o.at for o in batch],
                    },
                )
                hours = self.ctx.settings.webhooks.disable_after_hours
                changed = await session.execute(
                    _ENDPOINTS,
                    {
                        "ids": list(endpoints),
                        "succeeded": [e.succeeded for e in endpoints.values()],
                        "failures": [e.failures for e in endpoints.values()],
                        "success_ats": [e.success_at for e in endpoints.values()],
                        "failure_ats": [e.failure_at for e in endpoints.values()],
                        "errors": [e.error for e in endpoints.values()],
                        "disable_after": hours * 3600,
                        "disable_hours": f"{hours:g}",
                    },
                )
                for row in changed.all():
                    if row.disabled_now:
                        DISABLED.inc()
                        _log.warning("webhook_disabled", webhook_id=str(row.id), failing_for_hours=hours)
        except BaseException:
            self._outcomes[:0] = batch
            raise
        self._unrecorded.difference_update(o.claimed.id for o in batch)
        retries = [o.next_at for o in batch if o.status == "pending"]
        if retries:
            due = time.monotonic() + max(0.0, (min(retries) - utcnow()).total_seconds()) + 0.005
            self._next_due = due if self._next_due is None else min(self._next_due, due)
            self._wake.set()

    async def prune(self) -> int:
        """Forget events fanned out more than ``WEBHOOK_RETENTION_DAYS`` ago with no pending delivery (their
        deliveries go with them); the number of events deleted."""
        keep = self.ctx.settings.webhooks.retention_days * 86400
        deleted = 0
        while True:
            async with self.ctx.sessions() as session, session.begin():
                result = await session.execute(_PRUNE, {"keep": keep, "batch": PRUNE_BATCH})
            count = int(getattr(result, "rowcount", 0) or 0)
            deleted += count
            if count < PRUNE_BATCH:
                return deleted

    async def _prune_now_and_then(self) -> None:
        now = time.monotonic()
        if self._pruned_at and now - self._pruned_at < PRUNE_SECONDS:
            return
        self._pruned_at = now
        try:
            deleted = await self.prune()
        except Exception as exc:  # noqa: BLE001 - the next pass retries
            _log.warning("webhook_prune_failed", error=type(exc).__name__)
            return
        if deleted:
            _log.info("webhook_events_pruned", events=deleted)

    async def _refresh_stats(self) -> None:
        now = time.monotonic()
        if now - self._stats_at < STATS_SECONDS:
            return
        self._stats_at = now
        with contextlib.suppress(Exception):
            async with self.ctx.sessions() as session:
                row = (await session.execute(_STATS)).one()
            OUTBOX_DEPTH.set(row.depth)
            PENDING.set(row.pending)
            OLDEST_PENDING.set(max(0.0, (utcnow() - row.oldest).total_seconds()) if row.oldest else 0.0)
            DISABLED_NOW.set(row.disabled)
