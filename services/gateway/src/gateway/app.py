"""The gateway's assembly: the reserved ``/_gateway/*`` endpoints, then the pipeline resolve → authenticate →
(hold) → limit → forward for everything else, each step a module of its own. No framework on the hot path: the
headers it needs were noted while parsing, lookups are in memory, there is one Redis call, a pooled upstream
connection, and one write of the response when the upstream's answer is complete.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import time
from typing import Final

import redis.asyncio as redis
import structlog
from prometheus_client import Counter, Gauge, Histogram

from gateway.accounts import AccountEndpoints
from gateway.auth_client import AuthClient
from gateway.authenticate import MAYBE_STALE, Authenticator, read_credential
from gateway.config import GatewaySettings, read_keys_file
from gateway.directory import Directory, DirectorySync
from gateway.errors import GatewayError, bad_request
from gateway.exchange import Exchange
from gateway.forward import Forwarder, escapes_upstream_path
from gateway.hold import Holds
from gateway.http import CONTENT_LENGTH, REQUEST_ID, HttpConnection, Request
from gateway.jwks import JwksCache
from gateway.limit import Limiter
from gateway.reserved import RESERVED_PREFIX, ReservedEndpoints, reserved_below_slug
from gateway.resolve import Resolver, named_tenant
from gateway.resp import RespClient
from gateway.tokens import TokenIssuer
from gateway.upstream import UpstreamPool
from gateway.usage import UsageCounter, UsageFlusher
from tenantry_common.closing import close_quietly
from tenantry_common.jwt_keys import KeyRing
from tenantry_common.request_ids import REQUEST_ID_PATTERN
from tenantry_common.settings import ConfigError

_log = structlog.get_logger("tenantry.gateway")
_access = structlog.get_logger("tenantry.gateway.access")
REQUESTS: Final = Counter("tenantry_gateway_requests_total", "Requests by outcome and status", ["outcome", "status"])
LATENCY: Final = Histogram(
    "tenantry_gateway_request_seconds",
    "Time to the response head, by outcome",
    ["outcome"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DIRECTORY_AGE: Final = Gauge(
    "tenantry_gateway_directory_age_seconds", "Seconds since the tenant directory last synced (-1: never)"
)
_KEY_FILE_POLL_SECONDS: Final = 2.0
#: The one rule for a client's X-Request-ID (tenantry_common.request_ids), on the raw header bytes.
_SAFE_REQUEST_ID: Final = re.compile(REQUEST_ID_PATTERN.pattern.encode())


class _RequestIds:
    """The client's X-Request-ID when it is safe (at most 128 of ``A-Z a-z 0-9 . _ : -``), else a new one: 32 hex
    digits, a random per-process prefix and a counter (unique without a syscall per request; created in each
    worker, after the fork). An unsafe id is replaced, never refused: it is the client's label, not its request."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex().encode()
        self._next = itertools.count(int.from_bytes(os.urandom(4), "big")).__next__

    def __call__(self, incoming: bytes | None) -> bytes:
        if incoming is not None and _SAFE_REQUEST_ID.fullmatch(incoming):
            return incoming
        return b"%b%016x" % (self._prefix, self._next())


class _Metrics:
    """Prometheus children looked up once per (outcome, status), not once per request."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, int], Counter] = {}
        self._histograms: dict[str, Histogram] = {}

    def observe(self, outcome: str, status: int, seconds: float) -> None:
        counter = self._counters.get((outcome, status))
        if counter is None:
            counter = self._counters[(outcome, status)] = REQUESTS.labels(outcome, str(status))
        histogram = self._histograms.get(outcome)
        if histogram is None:
            histogram = self._histograms[outcome] = LATENCY.labels(outcome)
        counter.inc()
        histogram.observe(seconds)


def _check_head(request: Request, max_header_bytes: int) -> None:
    """Refuse a request head no step should read: too large, a header allowed once sent twice, or both framings.

    Raises:
        GatewayError: 431 ``request_header_fields_too_large``, 400 ``duplicate_header`` or ``ambiguous_length``.
    """
    if request.header_bytes > max_header_bytes:
        raise GatewayError("The request headers are too large.", code="request_header_fields_too_large", status=431)
    if request.duplicates:
        raise bad_request("duplicate_header", "Host, Authorization, X-API-Key, X-Tenant-ID and "
                          "Content-Length may appear only once.")  # fmt: skip
    if request.chunked and request.tracked[CONTENT_LENGTH] is not None:
        raise bad_request("ambiguous_length", "Content-Length and Transfer-Encoding must not both be sent.")


class Gateway:
    """The pipeline, called by the HTTP server once per request."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.directory = Directory()
        keys = KeyRing.from_config(settings.jwt_signing_keys, settings.jwt_algorithm)
        self.resolver = Resolver(self.directory, settings.base_domain, settings.trusted_proxies)
        self.jwks = JwksCache(
            timeout=settings.jwks_timeout, min_refetch=settings.jwks_min_refetch, max_age=settings.jwks_max_age
        )
        self.authenticator = Authenticator(
            self.directory,
            settings.api_key_hash_secret,
            keys,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway=settings.jwt_leeway,
            jwks=self.jwks,
        )
        self.tokens = TokenIssuer(
            keys,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            upstream_audience=settings.upstream_audience,
            access_ttl=settings.access_token_ttl,
            tenant_ttl=settings.tenant_token_ttl,
        )
        # redis-py for directory events and readiness; the quota call goes through the lean pipelined client.
        self.redis = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_timeout,
            max_connections=16,
        )
        self.quota_redis = RespClient(settings.redis_url, timeout=settings.redis_timeout)
        self.usage = UsageCounter()
        self.usage_flusher = UsageFlusher(
            self.usage,
            base_url=settings.tenant_service_url,
            token=settings.directory_token,
            interval=settings.usage_flush_seconds,
        )
        self.limiter = Limiter(self.quota_redis, failure_mode=settings.quota_failure_mode, usage=self.usage)
        self.pool = UpstreamPool(
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            head_timeout=settings.upstream_head_timeout,
            max_head_bytes=settings.upstream_max_header_bytes,
            max_header_fields=settings.upstream_max_headers,
        )
        self.forwarder = Forwarder(
            self.pool,
            self.tokens,
            default_upstream=settings.default_upstream,
            max_body=settings.max_body_bytes,
            read_timeout=settings.read_timeout,
            response_timeout=settings.total_timeout,
        )
        self.holds = Holds(
            self.directory, self.redis, hold_seconds=settings.cutover_hold_seconds, redis_timeout=settings.redis_timeout
        )
        self.sync = DirectorySync(
            self.directory,
            base_url=settings.tenant_service_url,
            token=settings.directory_token,
            redis_client=self.redis,
            refresh_seconds=settings.directory_refresh_seconds,
            full_sync_seconds=settings.directory_full_sync_seconds,
            max_staleness=settings.directory_max_staleness,
            on_sync=self.holds.observe,
        )
        self.authenticator.sync = self.sync
        self.auth_client = AuthClient(
            settings.tenant_service_url, settings.directory_token, timeout=settings.auth_timeout
        )
        self.reserved = ReservedEndpoints(
            directory=self.directory,
            sync=self.sync,
            redis_client=self.redis,
            authenticator=self.authenticator,
            tokens=self.tokens,
            accounts=AccountEndpoints(
                directory=self.directory,
                resolver=self.resolver,
                authenticator=self.authenticator,
                tokens=self.tokens,
                client=self.auth_client,
                body_timeout=settings.header_timeout,
            ),
        )
        self._locate = self.resolver.locate
        self._passthrough = settings.mode == "passthrough"
        self._max_header_bytes = settings.max_header_bytes
        self._access_log = settings.access_log
        self._metrics = _Metrics()
        self._request_id = _RequestIds()
        self._key_watch: asyncio.Task[None] | None = None
        self._key_spec = settings.jwt_signing_keys

    async def _watch_keys(self, path: str) -> None:
        """Re-read JWT_SIGNING_KEYS_FILE every few seconds; a changed, valid key list takes effect at once."""
        while True:
            await asyncio.sleep(_KEY_FILE_POLL_SECONDS)
            try:
                spec = read_keys_file(path)
                if spec == self._key_spec:
                    continue
                keys = KeyRing.from_config(spec, self.settings.jwt_algorithm)
            except ConfigError as exc:
                _log.error("signing_keys_reload_failed", error=str(exc))  # keep the keys in use
                continue
            self._key_spec = spec
            self.authenticator.use_keys(keys)
            self.tokens.use_keys(keys)
            _log.info("signing_keys_reloaded", kids=list(keys.private_keys), signing_kid=keys.primary_kid)

    async def start(self) -> None:
        """Start the directory sync, the heartbeat of the cutover hold, the usage flushes (and the key file's
        watch)."""
        sync = self.sync
        DIRECTORY_AGE.set_function(lambda: -1.0 if (age := sync.age()) is None else age)
        await self.sync.start()
        self.holds.start()
        if not self._passthrough:
            self.usage_flusher.start()
        if self.settings.jwt_signing_keys_file:
            self._key_watch = asyncio.get_running_loop().create_task(
                self._watch_keys(self.settings.jwt_signing_keys_file)
            )

    async def stop(self) -> None:
        """Flush the usage counted (requests in flight are done), stop the sync and close every pool."""
        if self._key_watch is not None:
            self._key_watch.cancel()
        await self.usage_flusher.stop()
        await self.sync.stop()  # first: a sync would see new holds
        await self.holds.stop()
        self.pool.close()
        self.quota_redis.close()
        await self.jwks.close()
        await self.auth_client.close()
        await close_quietly(self.redis.aclose)

    # the pipeline -------------------------------------------------------------------------------------
    async def handle(self, request: Request, conn: HttpConnection) -> None:
        """Handle one HTTP request: the HTTP server's handler."""
        started = time.perf_counter()
        exchange = Exchange(request, conn, self._request_id(request.tracked[REQUEST_ID]))
        outcome = "error"
        status = 500
        try:
            _check_head(request, self._max_header_bytes)
            raw_path = request.raw_path
            if raw_path.startswith(RESERVED_PREFIX) or (raw_path.startswith(b"/t/") and reserved_below_slug(raw_path)):
                outcome = "gateway"
                status = await self.reserved.answer(exchange)
                return
            if escapes_upstream_path(request.raw_path):
                raise bad_request("invalid_path", "The path must not hold '.' or '..' segments, in any encoding.")
            location = self.resolver.locate(exchange)
            if self._passthrough:
                try:
                    tenant = named_tenant(location)
                except GatewayError as problem:  # as below: decided again once a pending change is applied
                    if not (self.sync.pending and problem.code in MAYBE_STALE and await self.sync.catch_up()):
                        raise
                    tenant = named_tenant(self._locate(exchange))
                exchange.tenant = tenant
            else:
                credential = read_credential(request.tracked)
                exchange.credential_header = credential.header
                authenticator = self.authenticator
                try:
                    principal = authenticator.principal(credential)
                    if principal is None:  # a token from the tenant's own identity provider, not verified yet
                        principal = await authenticator.external(credential.value)
                    tenant = authenticator.tenant_of(principal, location)
                except GatewayError as problem:
                    if not self.sync.pending:  # no change event's fetch under way: the refusal stands
                        raise
                    # The directory is about to learn something new (a tenant or key made just now): decide again.
                    principal, tenant = await authenticator.again(problem, credential, self._locate, exchange)
                exchange.principal = principal
                exchange.tenant = tenant
            if tenant.hold is not None:  # its database is being switched: wait until it is done (hold.py)
                tenant = exchange.tenant = await self.holds.wait(tenant)
            # Counted in flight in the same step as the tenant's entry was read (nothing awaited in between): a worker
            # that acknowledges a hold has counted every request that saw the tenant without it.
            holds, tenant_id = self.holds, tenant.id
            holds.enter(tenant_id)
            try:
                if not self._passthrough:
                    exchange.quota_headers = await self.limiter.admit(tenant)
                outcome = "forwarded"
                status = await self.forwarder.forward(exchange, tenant)
            finally:
                holds.leave(tenant_id)
            if status in (502, 504):
                outcome = "upstream_error"
            elif status == 499:
                outcome = "client_gone"
        except GatewayError as problem:
            outcome = problem.code
            status = problem.status
            exchange.refuse(problem)
        finally:
            elapsed = time.perf_counter() - started
            self._metrics.observe(outcome, status, elapsed)
            if self._access_log:
                tenant_seen = exchange.tenant
                _access.info(
                    "request",
                    method=request.method,
                    path=request.raw_path.decode("latin-1"),
                    status=status,
                    outcome=outcome,
                    tenant_id=tenant_seen.id if tenant_seen is not None else None,
                    request_id=exchange.request_id.decode(),
                    duration_ms=round(elapsed * 1000, 3),
                )
