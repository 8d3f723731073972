"""The gateway as one lean ASGI app: reserved ``/_gateway/*`` endpoints, then resolve → authenticate → limit →
forward for everything else. No framework on the hot path: one pass over the headers, in-memory lookups, one
Redis call, a pooled upstream connection.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
import redis.asyncio as redis
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from gateway.authenticate import Authenticator, Principal
from gateway.config import GatewaySettings
from gateway.directory import Directory, DirectorySync, TenantEntry
from gateway.errors import GatewayError, bad_request, unauthorized
from gateway.forward import (
    HOP_BY_HOP,
    BodyTooLargeError,
    ClientGoneError,
    connection_tokens,
    origin_of,
    response_headers,
    send_upstream,
)
from gateway.limit import Limiter, QuotaDecision, QuotaUnavailableError
from gateway.resolve import Resolver, normalize_host
from gateway.tokens import TokenIssuer
from gateway.upstream import UpstreamError, UpstreamPool, UpstreamTimeoutError
from tenantry_common.apikeys import looks_like_api_key
from tenantry_common.jwt_keys import KeyRing
from tenantry_common.problems import PROBLEM_MEDIA_TYPE, problem_bytes

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_log = structlog.get_logger("tenantry.gateway")
_access = structlog.get_logger("tenantry.gateway.access")
REQUESTS: Final = Counter("tenantry_gateway_requests_total", "Requests by outcome and status", ["outcome", "status"])
LATENCY: Final = Histogram(
    "tenantry_gateway_request_seconds",
    "Time to the response head, by outcome",
    ["outcome"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
_JSON: Final = b"application/json"
_STRIPPED_PREFIXES: Final = (b"x-tenant-", b"x-forwarded-")
_STATUS_ERRORS: Final = {
    "suspended": (403, "tenant_suspended", "The tenant is suspended."),
    "provisioning": (503, "tenant_unavailable", "The tenant is not ready yet."),
    "failed": (503, "tenant_unavailable", "The tenant is unavailable."),
}


def _request_id(incoming: bytes | None) -> bytes:
    if incoming and len(incoming) <= 128 and all(33 <= c < 127 for c in incoming):
        return incoming
    return os.urandom(16).hex().encode()


class Gateway:
    """The ASGI application."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.directory = Directory()
        self.keys = KeyRing.from_config(settings.jwt_signing_keys, settings.jwt_algorithm)
        self.resolver = Resolver(self.directory, settings.base_domain)
        self.authenticator = Authenticator(
            self.directory,
            settings.api_key_hash_secret,
            self.keys,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway=settings.jwt_leeway,
        )
        self.tokens = TokenIssuer(
            self.keys,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            upstream_audience=settings.upstream_audience,
            access_ttl=settings.access_token_ttl,
            tenant_ttl=settings.tenant_token_ttl,
        )
        self.redis = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_timeout,
            max_connections=256,
        )
        self.limiter = Limiter(self.redis, timeout=settings.redis_timeout, failure_mode=settings.quota_failure_mode)
        self.pool = UpstreamPool(connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout)
        self.sync: DirectorySync | None = None
        self._trusted = settings.trusted_proxies
        self._trusted_cache: dict[str, bool] = {}

    # ASGI ---------------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        """Start and stop the directory sync."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.sync = DirectorySync(
                    self.directory,
                    base_url=self.settings.tenant_service_url,
                    token=self.settings.directory_token,
                    redis_client=self.redis,
                    refresh_seconds=self.settings.directory_refresh_seconds,
                    full_sync_seconds=self.settings.directory_full_sync_seconds,
                )
                await self.sync.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.sync is not None:
                    await self.sync.stop()
                self.pool.close()
                with contextlib.suppress(Exception):
                    await self.redis.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _is_trusted(self, peer: str) -> bool:
        if not self._trusted:
            return False
        known = self._trusted_cache.get(peer)
        if known is None:
            try:
                address = ipaddress.ip_address(peer)
                known = any(address in network for network in self._trusted)
            except ValueError:
                known = False
            if len(self._trusted_cache) < 10_000:
                self._trusted_cache[peer] = known
        return known

    async def _respond(
        self,
        send: Send,
        status: int,
        body: bytes,
        content_type: bytes,
        request_id: bytes,
        extra: tuple[tuple[bytes, bytes], ...] | list[tuple[bytes, bytes]] = (),
    ) -> None:
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _problem(
        self, send: Send, problem: GatewayError, request_id: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        body = problem_bytes(problem.status, problem.code, detail=problem.detail)
        headers = [(k.encode(), v.encode()) for k, v in problem.headers.items()]
        await self._respond(send, problem.status, body, PROBLEM_MEDIA_TYPE.encode(), request_id, [*headers, *extra])

    # the pipeline -------------------------------------------------------------------------------------
    async def http(self, scope: Scope, receive: Receive, client_send: Send) -> None:
        """Handle one HTTP request."""
        started = time.perf_counter()
        path: str = scope["path"]
        host = x_host = x_for = x_proto = tenant_ref = api_key = authorization = incoming_id = None
        content_length: bytes | None = None
        chunked = False
        duplicates = False
        header_bytes = 0
        for name, value in scope["headers"]:
            header_bytes += len(name) + len(value) + 4
            if name == b"host":
                duplicates |= host is not None
                host = value
            elif name == b"authorization":
                duplicates |= authorization is not None
                authorization = value
            elif name == b"x-api-key":
                duplicates |= api_key is not None
                api_key = value
            elif name == b"x-tenant-id":
                duplicates |= tenant_ref is not None
                tenant_ref = value
            elif name == b"content-length":
                duplicates |= content_length is not None
                content_length = value
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"x-request-id":
                incoming_id = value
            elif name == b"x-forwarded-host":
                x_host = x_host or value
            elif name == b"x-forwarded-for":
                x_for = value if x_for is None else x_for + b", " + value
            elif name == b"x-forwarded-proto":
                x_proto = x_proto or value
        request_id = _request_id(incoming_id)
        started = False

        def send(message: dict[str, Any]) -> Awaitable[None]:
            nonlocal started
            started = True
            return client_send(message)

        outcome = "error"
        status = 500
        tenant_id = None
        try:
            if path.startswith("/_gateway/"):
                outcome = "gateway"
                status = await self.reserved(scope, receive, send, request_id, api_key, authorization)
                return
            if header_bytes > self.settings.max_header_bytes:
                raise GatewayError(
                    "The request headers are too large.", code="request_header_fields_too_large", status=431
                )
            if duplicates:
                raise bad_request("duplicate_header", "Host, Authorization, X-API-Key, X-Tenant-ID and "
                                  "Content-Length may appear only once.")  # fmt: skip
            if chunked and content_length is not None:
                raise bad_request("ambiguous_length", "Content-Length and Transfer-Encoding must not both be sent.")
            client = scope.get("client")
            peer = client[0] if client else ""
            trusted = self._is_trusted(peer)
            effective_host = x_host if trusted and x_host else host
            host_name = normalize_host(effective_host.decode("latin-1")) if effective_host else ""
            location = self.resolver.resolve(
                host_name,
                path,
                scope.get("raw_path") or path.encode(),
                tenant_ref.decode("latin-1") if tenant_ref else None,
            )
            principal, used_header = self._authenticate(api_key, authorization)
            tenant = self._tenant(location.tenant, location.named, principal)
            tenant_id = tenant.id
            decision = await self._limit(tenant)
            if decision.verdict != "allowed":
                outcome = decision.verdict
                status = 429
                detail = "Too many requests this minute." if outcome == "rate_limited" else "Daily quota used up."
                await self._problem(
                    send,
                    GatewayError(detail, code=outcome, status=429),
                    request_id,
                    (*decision.headers, (b"retry-after", str(decision.retry_after).encode())),
                )
                return
            outcome = "forwarded"
            status = await self.forward(
                scope,
                receive,
                send,
                tenant=tenant,
                principal=principal,
                upstream_path=location.upstream_path,
                request_id=request_id,
                trusted=trusted,
                peer=peer,
                x_for=x_for,
                x_proto=x_proto,
                effective_host=effective_host or b"",
                content_length=content_length,
                chunked=chunked,
                drop=used_header,
                quota_headers=decision.headers,
            )
            if status in (502, 504):
                outcome = "upstream_error"
        except GatewayError as problem:
            outcome = problem.code
            status = problem.status
            await self._problem(send, problem, request_id)
        except Exception:
            # A bug still answers as a problem document when nothing was sent yet; else the connection is cut.
            _log.exception("unhandled_error", path=path, request_id=request_id.decode())
            outcome, status = "internal_error", 500
            if started:
                raise
            await self._problem(
                send, GatewayError("An unexpected error occurred.", code="internal_error", status=500), request_id
            )
        finally:
            elapsed = time.perf_counter() - started
            REQUESTS.labels(outcome, str(status)).inc()
            LATENCY.labels(outcome).observe(elapsed)
            if self.settings.access_log:
                _access.info(
                    "request",
                    method=scope["method"],
                    path=path,
                    status=status,
                    outcome=outcome,
                    tenant_id=tenant_id,
                    request_id=request_id.decode(),
                    duration_ms=round(elapsed * 1000, 3),
                )

    def _authenticate(self, api_key: bytes | None, authorization: bytes | None) -> tuple[Principal, bytes]:
        if api_key is not None:
            return self.authenticator.api_key(api_key.decode("latin-1").strip()), b"x-api-key"
        if authorization is not None:
            scheme, _, credential = authorization.decode("latin-1").partition(" ")
            credential = credential.strip()
            if scheme.lower() == "bearer" and credential:
                if looks_like_api_key(credential):
                    return self.authenticator.api_key(credential), b"authorization"
                return self.authenticator.jwt(credential), b"authorization"
        raise unauthorized()

    def _tenant(self, located: TenantEntry | None, named: str | None, principal: Principal) -> TenantEntry:
        if named is not None and named != principal.tenant_id:
            if located is None:
                raise GatewayError("No such tenant.", code="tenant_not_found", status=404)
            raise GatewayError("The credential belongs to another tenant.", code="tenant_mismatch", status=403)
        tenant = self.directory.by_id.get(principal.tenant_id)
        if tenant is None or tenant.status in ("deleted", "deleting"):
            raise GatewayError("No such tenant.", code="tenant_not_found", status=404)
        if tenant.status != "active":
            status, code, detail = _STATUS_ERRORS.get(tenant.status, (503, "tenant_unavailable", "Unavailable."))
            headers = {"retry-after": "5"} if status == 503 else {}
            raise GatewayError(detail, code=code, status=status, headers=headers)
        return tenant

    async def _limit(self, tenant: TenantEntry) -> QuotaDecision:
        try:
            return await self.limiter.check(tenant.id, tenant.requests_per_minute, tenant.requests_per_day)
        except QuotaUnavailableError:
            raise GatewayError(
                "Quotas cannot be checked right now.",
                code="quota_unavailable",
                status=503,
                headers={"retry-after": "1"},
            ) from None

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        tenant: TenantEntry,
        principal: Principal,
        upstream_path: bytes,
        request_id: bytes,
        trusted: bool,
        peer: str,
        x_for: bytes | None,
        x_proto: bytes | None,
        effective_host: bytes,
        content_length: bytes | None,
        chunked: bool,
        drop: bytes,
        quota_headers: tuple[tuple[bytes, bytes], ...],
    ) -> int:
        """Forward to the tenant's upstream; return the status sent to the client."""
        settings = self.settings
        if content_length is not None:
            if not content_length.isdigit():
                raise bad_request("invalid_content_length", "Content-Length is not a number.")
            if int(content_length) > settings.max_body_bytes:
                raise GatewayError("The request body is too large.", code="payload_too_large", status=413)
        origin, prefix = origin_of(tenant.upstream_url or settings.default_upstream)
        method: str = scope["method"]
        query: bytes = scope.get("query_string", b"")
        target = prefix + upstream_path + (b"?" + query if query else b"")
        extra_hop = connection_tokens(scope["headers"])
        lines = [method.encode(), b" ", target, b" HTTP/1.1\r\nhost: ", origin.host_header, b"\r\n"]
        for name, value in scope["headers"]:
            if (
                name in HOP_BY_HOP
                or name in extra_hop
                or name.startswith(_STRIPPED_PREFIXES)
                or name in (b"x-request-id", b"content-length", drop)
            ):
                continue
            lines += [name, b": ", value, b"\r\n"]
        forwarded_for = (x_for + b", " if trusted and x_for else b"") + peer.encode()
        proto = x_proto if trusted and x_proto else scope.get("scheme", "http").encode()
        has_body = chunked or (content_length is not None and content_length != b"0")
        if content_length is not None:
            lines += [b"content-length: ", content_length, b"\r\n"]
        elif chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
        lines += [
            b"x-forwarded-for: ", forwarded_for, b"\r\n",
            b"x-forwarded-proto: ", proto, b"\r\n",
            b"x-forwarded-host: ", effective_host, b"\r\n",
            b"x-request-id: ", request_id, b"\r\n",
            b"x-tenant-id: ", tenant.id.encode(), b"\r\n",
            b"x-tenant-slug: ", tenant.slug.encode(), b"\r\n",
            b"x-tenant-token: ", self.tokens.tenant_token(tenant, principal), b"\r\n\r\n",
        ]  # fmt: skip
        try:
            response = await send_upstream(
                self.pool,
                origin,
                b"".join(lines),
                receive,
                method=method,
                has_body=has_body,
                chunked=content_length is None and chunked,
                max_body=settings.max_body_bytes,
                response_timeout=settings.total_timeout,
            )
        except BodyTooLargeError:
            raise GatewayError("The request body is too large.", code="payload_too_large", status=413) from None
        except ClientGoneError:
            return 499
        except UpstreamTimeoutError:
            problem = GatewayError("The upstream did not answer in time.", code="upstream_timeout", status=504)
            await self._problem(send, problem, request_id, quota_headers)
            return 504
        except UpstreamError:
            problem = GatewayError("The upstream is unreachable.", code="upstream_unavailable", status=502)
            await self._problem(send, problem, request_id, quota_headers)
            return 502
        headers = response_headers(response.headers)
        headers.append((b"x-request-id", request_id))
        headers.extend(quota_headers)
        try:
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            async for chunk in response.body():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (UpstreamError, OSError):
            response.abort()
            raise
        except BaseException:
            response.abort()
            raise
        response.release()
        return response.status

    # reserved endpoints -------------------------------------------------------------------------------
    async def reserved(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: bytes,
        api_key: bytes | None,
        authorization: bytes | None,
    ) -> int:
        """``/_gateway/*``: health, readiness, metrics, token exchange, JWKS."""
        path, method = scope["path"], scope["method"]
        if path == "/_gateway/healthz" and method in ("GET", "HEAD"):
            await self._respond(send, 200, b'{"status":"ok"}', _JSON, request_id)
            return 200
        if path == "/_gateway/readyz" and method in ("GET", "HEAD"):
            return await self._readyz(send, request_id)
        if path == "/_gateway/metrics" and method == "GET":
            await self._respond(send, 200, generate_latest(), CONTENT_TYPE_LATEST.encode(), request_id)
            return 200
        if path == "/_gateway/jwks.json" and method in ("GET", "HEAD"):
            await self._respond(
                send, 200, self.tokens.jwks_body, b"application/jwk-set+json", request_id,
                [(b"cache-control", b"public, max-age=60")],
            )  # fmt: skip
            return 200
        if path == "/_gateway/token":
            if method != "POST":
                problem = GatewayError("Use POST.", code="method_not_allowed", status=405)
                await self._problem(send, problem, request_id, ((b"allow", b"POST"),))
                return 405
            return await self._token(send, request_id, api_key, authorization)
        await self._problem(send, GatewayError("No such gateway endpoint.", code="not_found", status=404), request_id)
        return 404

    async def _readyz(self, send: Send, request_id: bytes) -> int:
        checks = {"directory": "ok" if self.directory.loaded else "not loaded"}
        try:
            await self.redis.ping()
            checks["redis"] = "ok"
        except (redis.RedisError, OSError, TimeoutError) as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
        ready = all(v == "ok" for v in checks.values())
        status = 200 if ready else 503
        body = msgspec.json.encode({"status": "ok" if ready else "unavailable", "checks": checks})
        await self._respond(send, status, body, _JSON, request_id)
        return status

    async def _token(self, send: Send, request_id: bytes, api_key: bytes | None, authorization: bytes | None) -> int:
        key: str | None = None
        if api_key is not None:
            key = api_key.decode("latin-1").strip()
        elif authorization is not None:
            scheme, _, credential = authorization.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and looks_like_api_key(credential.strip()):
                key = credential.strip()
        if key is None:
            raise unauthorized()
        principal = self.authenticator.api_key(key)
        self._tenant(None, None, principal)
        body = msgspec.json.encode(
            {
                "access_token": self.tokens.access_token(principal),
                "token_type": "Bearer",
                "expires_in": self.tokens.access_ttl,
            }
        )
        await self._respond(send, 200, body, _JSON, request_id, [(b"cache-control", b"no-store")])
        return 200


def create_app() -> Gateway:
    """ASGI factory (``uvicorn --factory gateway.app:create_app``)."""
    from tenantry_common.logging import configure_logging  # noqa: PLC0415 - per worker process

    settings = GatewaySettings.from_env()
    configure_logging("gateway", fmt=settings.log_format, level=settings.log_level)
    return Gateway(settings)
