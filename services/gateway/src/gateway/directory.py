"""The gateway's in-memory tenant directory, kept in sync with the tenant-service.

A warm request never leaves the process to learn about its tenant: slugs, domains, API key hashes and limits
live here. Changes arrive three ways: a Redis event makes the gateway fetch at once; an incremental poll by
revision runs every second; a full resync catches anything both missed. A request refused while a change event's
fetch is still under way (a tenant or key made a moment ago, whose event arrived just before the request) waits for
that fetch and is decided again (``DirectorySync.catch_up``). When the tenant-service is down the
gateway keeps serving what it knows, and says so: once no sync has succeeded for ``max_staleness`` seconds the
directory is stale (readiness fails, a warning is logged) until one succeeds again. After each sync the cutover
holds in force (``Directory.held``) are compared with those seen before (gateway.hold).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

import httpx
import msgspec
import redis.asyncio as redis
import structlog
from prometheus_client import Counter

from tenantry_common.closing import close_quietly
from tenantry_common.directory import DirectoryPage, DirectoryTenant
from tenantry_common.redis_keys import EVENTS_CHANNEL

_log = structlog.get_logger("tenantry.gateway.directory")
#: Revisions come from a sequence, but transactions commit in their own order: one that took revision R-1 may
#: commit after R is already visible. Incremental polls therefore ask from the high-water mark seen at least this
#: long ago, so any change whose transaction is shorter than this is picked up by the first poll after its commit.
SYNC_OVERLAP_SECONDS: Final = 5.0
_decode_page: Final = msgspec.json.Decoder(DirectoryPage).decode
#: A refused request waits at most this long for the fetch of a change event that arrived before it.
CATCH_UP_BUDGET_SECONDS: Final = 1.0
CATCH_UPS: Final = Counter(
    "tenantry_gateway_directory_catch_ups_total",
    "Refused requests that waited for the fetch of a pending change event, by outcome (synced: decided again; "
    "timeout: the fetch did not end in time, the refusal stood)",
    ["outcome"],
)


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """An API key known to the gateway."""

    id: str
    tenant_id: str
    scopes: str
    expires_at: float | None
    revoked: bool

    def usable(self, now: float) -> bool:
        """Not revoked and not expired."""
        return not self.revoked and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True, slots=True)
class IssuerEntry:
    """An external JWT issuer a tenant trusts (its tokens with this ``iss`` and ``aud`` are that tenant's)."""

    id: str
    tenant_id: str
    issuer: str
    audience: str
    jwks_url: str
    algorithms: tuple[str, ...]
    #: Where the token's role is (``realm_access.roles``: a claim name, or a dotted path into the claims); ""
    #: when the issuer's tokens carry no role.
    role_claim: str = ""
    #: The claim's values mapped to ``admin``/``user``/``viewer``; empty: the values are the roles themselves.
    role_map: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TenantEntry:
    """A tenant as the hot path needs it."""

    id: str
    slug: str
    status: str
    plan: str
    requests_per_minute: int | None
    requests_per_day: int | None
    upstream_url: str | None
    domains: tuple[str, ...]
    key_hashes: tuple[bytes, ...]
    issuers: tuple[tuple[str, str], ...] = ()
    #: The cutover hold in force (its id): the tenant's new requests wait (gateway.hold). None on the hot path.
    hold: str | None = None
    #: Sessions of the tenant's users revoked lately: their access tokens are refused before they expire.
    revoked_sessions: frozenset[str] = frozenset()


@dataclass
class Directory:
    """Tenants by id, slug and domain; API keys by hash and by id."""

    by_id: dict[str, TenantEntry] = field(default_factory=dict)
    by_slug: dict[str, TenantEntry] = field(default_factory=dict)
    by_domain: dict[str, TenantEntry] = field(default_factory=dict)
    keys_by_hash: dict[bytes, KeyEntry] = field(default_factory=dict)
    keys_by_id: dict[str, KeyEntry] = field(default_factory=dict)
    #: External issuers: ``iss`` → ``aud`` → the issuer (a pair belongs to one tenant at most).
    issuers: dict[str, dict[str, IssuerEntry]] = field(default_factory=dict)
    #: The revision each tenant's entry was built from: overlapping polls skip what did not change.
    revisions: dict[str, int] = field(default_factory=dict)
    #: Tenants under a cutover hold → the hold's id (a handful at most: the hold's watcher walks it after each sync).
    held: dict[str, str] = field(default_factory=dict)
    revision: int = 0
    loaded: bool = False
    #: The registry's installation id, from the feed (None until a tenant-service that sends it answered).
    installation: str | None = None

    def remove(self, tenant_id: str) -> None:
        """Forget a tenant and everything that points to it."""
        old = self.by_id.pop(tenant_id, None)
        self.revisions.pop(tenant_id, None)
        self.held.pop(tenant_id, None)
        if old is None:
            return
        if self.by_slug.get(old.slug) is old:
            del self.by_slug[old.slug]
        for domain in old.domains:
            if self.by_domain.get(domain) is old:
                del self.by_domain[domain]
        for key_hash in old.key_hashes:
            key = self.keys_by_hash.pop(key_hash, None)
            if key is not None:
                self.keys_by_id.pop(key.id, None)
        for issuer, audience in old.issuers:
            audiences = self.issuers.get(issuer)
            if audiences is not None and (known := audiences.get(audience)) is not None and known.tenant_id == old.id:
                del audiences[audience]
                if not audiences:
                    del self.issuers[issuer]

    def apply(self, tenant: DirectoryTenant) -> None:
        """Insert or replace one tenant (all of its routes and keys at once); an unchanged one costs a lookup."""
        if self.revisions.get(tenant.id, -1) >= tenant.revision and tenant.id in self.by_id:
            return
        self.remove(tenant.id)
        self.revisions[tenant.id] = tenant.revision
        entry = TenantEntry(
            id=tenant.id,
            slug=tenant.slug,
            status=tenant.status,
            plan=tenant.plan,
            requests_per_minute=tenant.limits.get("requests_per_minute"),
            requests_per_day=tenant.limits.get("requests_per_day"),
            upstream_url=tenant.upstream_url,
            domains=tuple(tenant.domains),
            key_hashes=tuple(bytes.fromhex(k.hash) for k in tenant.keys),
            issuers=tuple((i.issuer, i.audience) for i in tenant.jwt_issuers),
            hold=tenant.hold,
            revoked_sessions=frozenset(tenant.revoked_sessions),
        )
        self.by_id[entry.id] = entry
        if entry.hold is not None:
            self.held[entry.id] = entry.hold
        self.by_slug[entry.slug] = entry
        for domain in entry.domains:
            self.by_domain[domain] = entry
        for key in tenant.keys:
            known = KeyEntry(
                id=key.id,
                tenant_id=tenant.id,
                scopes=" ".join(key.scopes),
                expires_at=key.expires_at,
                revoked=key.revoked,
            )
            self.keys_by_hash[bytes.fromhex(key.hash)] = known
            self.keys_by_id[key.id] = known
        for issuer in tenant.jwt_issuers:
            self.issuers.setdefault(issuer.issuer, {})[issuer.audience] = IssuerEntry(
                id=issuer.id,
                tenant_id=tenant.id,
                issuer=issuer.issuer,
                audience=issuer.audience,
                jwks_url=issuer.jwks_url,
                algorithms=tuple(issuer.algorithms),
                role_claim=issuer.role_claim or "",
                role_map=dict(issuer.role_map),
            )

    def apply_page(self, page: DirectoryPage) -> None:
        """Apply a sync answer; a full one replaces everything."""
        if page.full:
            fresh = Directory()
            for tenant in page.tenants:
                fresh.apply(tenant)
            self.by_id, self.by_slug, self.by_domain = fresh.by_id, fresh.by_slug, fresh.by_domain
            self.keys_by_hash, self.keys_by_id = fresh.keys_by_hash, fresh.keys_by_id
            self.issuers = fresh.issuers
            self.revisions = fresh.revisions
            self.held = fresh.held
        else:
            for tenant in page.tenants:
                self.apply(tenant)
        for tenant_id in page.removed:
            self.remove(tenant_id)
        self.revision = max(self.revision, page.revision) if not page.full else page.revision
        if page.installation is not None:
            self.installation = page.installation
        self.loaded = True

    def find(self, ref: str) -> TenantEntry | None:
        """A tenant by id or slug (ASCII only: no look-alike letter may fold onto another tenant's slug)."""
        if not ref.isascii():
            return None
        return self.by_id.get(ref) or self.by_slug.get(ref.lower())


class DirectorySync:
    """Keeps a :class:`Directory` current."""

    def __init__(
        self,
        directory: Directory,
        *,
        base_url: str,
        token: str,
        redis_client: redis.Redis,
        refresh_seconds: float,
        full_sync_seconds: float,
        max_staleness: float = 0.0,
        on_sync: Callable[[], None] | None = None,
    ) -> None:
        """``on_sync``: called after each applied answer (the hold's watcher compares the holds in force)."""
        self.directory = directory
        self._on_sync = on_sync
        self._http = httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=httpx.Timeout(5.0)
        )
        self._redis = redis_client
        self._refresh = refresh_seconds
        self._full_every = full_sync_seconds
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._seen: deque[tuple[float, int]] = deque()
        self.last_success = 0.0
        self._max_staleness = max_staleness
        self._reported_stale = False
        #: When the latest change event arrived, and when the latest successful sync began (its answer holds
        #: everything committed before then): an event newer than that sync is pending.
        self._last_event = 0.0
        self._began_ok = 0.0
        #: Resolved (and replaced) at the end of each sync, for the requests waiting in catch_up().
        self._synced: asyncio.Future[None] | None = None

    def age(self) -> float | None:
        """Seconds since the last successful sync; None before the first."""
        return time.monotonic() - self.last_success if self.last_success else None

    @property
    def stale(self) -> bool:
        """No sync has succeeded for longer than ``max_staleness`` (never, with ``max_staleness`` 0)."""
        age = self.age()
        return self._max_staleness > 0 and age is not None and age > self._max_staleness

    def _note_staleness(self) -> None:
        """Log the moment the directory turns stale and the moment it is fresh again, once each."""
        if self.stale and not self._reported_stale:
            self._reported_stale = True
            _log.warning("directory_stale", seconds_since_sync=round(self.age() or 0.0, 1))
        elif self._reported_stale and not self.stale:
            self._reported_stale = False
            _log.info("directory_fresh")

    async def _fetch(self, since: int) -> DirectoryPage:
        response = await self._http.get("/internal/v1/directory/", params={"since": since})
        response.raise_for_status()
        return _decode_page(response.content)

    def _since(self) -> int:
        """The high-water mark observed at least SYNC_OVERLAP_SECONDS ago (0, a full fetch, when there is none)."""
        cutoff = time.monotonic() - SYNC_OVERLAP_SECONDS
        while len(self._seen) >= 2 and self._seen[1][0] <= cutoff:
            self._seen.popleft()
        return self._seen[0][1] if self._seen and self._seen[0][0] <= cutoff else 0

    async def sync_once(self, *, full: bool = False) -> None:
        """One incremental (or full) sync."""
        began = time.monotonic()
        try:
            page = await self._fetch(0 if full or not self.directory.loaded else self._since())
            self.directory.apply_page(page)
            if self._on_sync is not None:
                self._on_sync()
            self.last_success = time.monotonic()
            self._began_ok = max(self._began_ok, began)
            self._seen.append((self.last_success, page.revision))
        finally:
            if self._synced is not None and not self._synced.done():
                self._synced.set_result(None)
            self._synced = None

    @property
    def pending(self) -> bool:
        """A change event arrived that no successful sync begun after it has applied yet."""
        return self._last_event > self._began_ok

    async def catch_up(self) -> bool:
        """Wait for the fetch of a change event that arrived before this call and is not applied yet, if any.

        The tenant-service publishes the event before it answers the change, so a client that sends a request
        right after, with a key or for a tenant it just made, usually finds that fetch under way: the request waits
        for it (the poller fetches at once after an event), never starts one, and never waits when nothing is
        pending. Every refusal that may be stale waits alike, so they all keep one timing class.

        Returns:
            True when a sync began after the event and succeeded: decide the request again. False when no event
            was pending, or its fetch did not succeed within ``CATCH_UP_BUDGET_SECONDS``: the refusal stands.
        """
        pending = self._last_event
        if pending <= self._began_ok:
            return False  # (the caller checks `pending` first; here for a caller that does not)
        try:
            async with asyncio.timeout(CATCH_UP_BUDGET_SECONDS):
                while self._began_ok < pending:
                    if self._synced is None:
                        self._synced = asyncio.get_running_loop().create_future()
                    await asyncio.shield(self._synced)
        except TimeoutError:
            CATCH_UPS.labels("timeout").inc()
            return False
        CATCH_UPS.labels("synced").inc()
        return True

    async def _poll(self) -> None:
        last_full = time.monotonic()
        while True:
            # Cleared before the fetch, not after: an event that arrives while a fetch is under way (which may have
            # read the registry before that change committed) makes the next fetch start at once.
            self._wake.clear()
            try:
                full = time.monotonic() - last_full >= self._full_every
                await self.sync_once(full=full)
                if full:
                    last_full = time.monotonic()
            except (httpx.HTTPError, msgspec.DecodeError, OSError) as exc:
                _log.warning("directory_sync_failed", error=type(exc).__name__)
            self._note_staleness()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._refresh)

    async def _listen(self) -> None:
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(EVENTS_CHANNEL)
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is not None:
                        self._last_event = time.monotonic()
                        self._wake.set()
            except (redis.RedisError, OSError, TimeoutError) as exc:
                _log.debug("directory_events_unavailable", error=type(exc).__name__)
                await asyncio.sleep(1.0)
            finally:
                await close_quietly(pubsub.aclose)

    async def start(self, first_load_timeout: float = 10.0) -> None:
        """Load the directory (bounded wait; the poller keeps trying) and start syncing in the background."""
        try:
            await asyncio.wait_for(self.sync_once(full=True), first_load_timeout)
        except (httpx.HTTPError, msgspec.DecodeError, OSError, TimeoutError) as exc:
            _log.warning("directory_initial_load_failed", error=type(exc).__name__)
        self._tasks = [asyncio.create_task(self._poll()), asyncio.create_task(self._listen())]

    async def stop(self) -> None:
        """Stop syncing."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._http.aclose()
