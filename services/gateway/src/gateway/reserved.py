"""The gateway's own endpoints under ``/_gateway/``, never proxied and never counted against a quota: health,
readiness, metrics, the token exchange, the JWKS of the keys that sign access tokens and ``X-Tenant-Token``, and
those of tenant users (:mod:`gateway.accounts`). Under a ``/t/{slug}/`` path prefix they are the same endpoints,
the slug naming the tenant."""

from __future__ import annotations

from typing import Final

import msgspec
import redis.asyncio as redis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.accounts import AccountEndpoints
from gateway.auth_client import RelayedProblem
from gateway.authenticate import Authenticator, read_credential
from gateway.directory import Directory, DirectorySync
from gateway.errors import GatewayError, unauthorized
from gateway.exchange import Exchange
from gateway.tokens import TokenIssuer
from tenantry_common.problems import PROBLEM_MEDIA_TYPE, problem_bytes

#: Requests whose path starts with this (or with ``/t/{slug}`` and then this) are the gateway's own.
RESERVED_PREFIX: Final = b"/_gateway/"
_USERS: Final = b"/_gateway/users"
_USER: Final = b"/_gateway/users/"


def reserved_below_slug(raw_path: bytes) -> bool:
    """Whether a ``/t/{slug}/…`` path is one of the gateway's own: ``/t/{slug}/_gateway/…``."""
    parts = raw_path.split(b"/", 3)
    return len(parts) > 3 and (b"/" + parts[3]).startswith(RESERVED_PREFIX)


def _own_path(raw_path: bytes) -> bytes:
    """The path without its ``/t/{slug}`` prefix."""
    return b"/" + raw_path.split(b"/", 3)[3] if raw_path.startswith(b"/t/") else raw_path


def _method_not_allowed(allowed: str) -> GatewayError:
    return GatewayError("Method not allowed.", code="method_not_allowed", status=405, headers={"allow": allowed})


_JSON: Final = b"application/json"
_PROBLEM: Final = PROBLEM_MEDIA_TYPE.encode()


def _nowhere(_exchange: Exchange) -> None:
    """The location of a request that names no tenant (its key does)."""


class ReservedEndpoints:
    """Answers ``/_gateway/*``."""

    def __init__(
        self,
        *,
        directory: Directory,
        sync: DirectorySync,
        redis_client: redis.Redis,
        authenticator: Authenticator,
        tokens: TokenIssuer,
        accounts: AccountEndpoints,
    ) -> None:
        """``redis_client``: pinged for readiness (the quota client is not: it connects on its first call)."""
        self._directory = directory
        self._sync = sync
        self._redis = redis_client
        self._authenticator = authenticator
        self._tokens = tokens
        self._accounts = accounts
        self._posts = {
            b"/_gateway/auth/login": accounts.login,
            b"/_gateway/auth/accept-invitation": accounts.accept_invitation,
            b"/_gateway/auth/refresh": accounts.refresh,
            b"/_gateway/auth/logout": accounts.logout,
            b"/_gateway/auth/password": accounts.password,
            b"/_gateway/signup": accounts.signup,
        }
        self._gets = {b"/_gateway/me": accounts.me, b"/_gateway/tenant": accounts.tenant}

    async def answer(self, exchange: Exchange) -> int:
        """Answer a ``/_gateway/*`` request; return the status.

        Raises:
            GatewayError: 404 ``not_found`` for any other path; the token exchange's refusals.
        """
        try:
            return await self._answer(exchange)
        except RelayedProblem as answer:  # the tenant-service's refusal, as it is
            headers = [(b"x-request-id", exchange.request_id), (b"cache-control", b"no-store"), *answer.headers]
            exchange.conn.respond(exchange.request, answer.status, answer.body, answer.content_type, headers)
            return answer.status

    async def _answer(self, exchange: Exchange) -> int:
        request, conn = exchange.request, exchange.conn
        path, method = _own_path(request.raw_path), request.method
        json_id = [(b"x-request-id", exchange.request_id)]
        if path == b"/_gateway/healthz" and method in ("GET", "HEAD"):
            conn.respond(request, 200, b'{"status":"ok"}', _JSON, json_id)
            return 200
        if path == b"/_gateway/readyz" and method in ("GET", "HEAD"):
            return await self._readyz(exchange)
        if path == b"/_gateway/metrics" and method == "GET":
            conn.respond(request, 200, generate_latest(), CONTENT_TYPE_LATEST.encode(), json_id)
            return 200
        if path == b"/_gateway/jwks.json" and method in ("GET", "HEAD"):
            conn.respond(
                request, 200, self._tokens.jwks_body, b"application/jwk-set+json",
                [*json_id, (b"cache-control", b"public, max-age=60")],
            )  # fmt: skip
            return 200
        if path == b"/_gateway/token":
            if method != "POST":
                problem = GatewayError("Use POST.", code="method_not_allowed", status=405)
                exchange.refuse(problem, ((b"allow", b"POST"),))
                return 405
            return await self._token(exchange)
        if (post := self._posts.get(path)) is not None:
            if method != "POST":
                raise _method_not_allowed("POST")
            return await post(exchange)
        if (get := self._gets.get(path)) is not None:
            if method != "GET":
                raise _method_not_allowed("GET")
            return await get(exchange)
        if path == _USERS:
            return await self._accounts.users(exchange, None)
        if path.startswith(_USER) and b"/" not in path[len(_USER) :]:
            return await self._accounts.users(exchange, path[len(_USER) :])
        raise GatewayError("No such gateway endpoint.", code="not_found", status=404)

    async def _readyz(self, exchange: Exchange) -> int:
        """200 when the directory is loaded and fresh and Redis answers; else 503 problem+json naming the first
        failing check (``directory_not_loaded``, ``directory_stale``, ``redis_unavailable``) with every check."""
        problems: list[tuple[str, str]] = []
        checks = {"directory": "ok"}
        if not self._directory.loaded:
            checks["directory"] = "not loaded"
            problems.append(("directory_not_loaded", "The tenant directory has not been loaded yet."))
        elif self._sync.stale:
            checks["directory"] = f"stale: last synced {self._sync.age() or 0.0:.0f} s ago"
            problems.append(("directory_stale", "The tenant directory has not synced with the tenant-service."))
        try:
            await self._redis.ping()
            checks["redis"] = "ok"
        except (redis.RedisError, OSError, TimeoutError) as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
            problems.append(("redis_unavailable", "Redis does not answer."))
        request, conn = exchange.request, exchange.conn
        headers = [(b"x-request-id", exchange.request_id)]
        if not problems:
            conn.respond(request, 200, msgspec.json.encode({"status": "ok", "checks": checks}), _JSON, headers)
            return 200
        code, detail = problems[0]
        body = problem_bytes(503, code, detail=detail, extra={"checks": checks})
        conn.respond(request, 503, body, _PROBLEM, [*headers, (b"cache-control", b"no-store")])
        return 503

    async def _token(self, exchange: Exchange) -> int:
        """``POST /_gateway/token``: an access token for the request's API key (a JWT is refused: 401)."""
        credential = read_credential(exchange.request.tracked)
        if not credential.is_api_key:
            raise unauthorized()
        principal, _ = await self._authenticator.identify(credential, None, _nowhere, exchange)
        body = msgspec.json.encode(
            {
                "access_token": self._tokens.access_token(principal),
                "token_type": "Bearer",
                "expires_in": self._tokens.access_ttl,
            }
        )
        headers = [(b"x-request-id", exchange.request_id), (b"cache-control", b"no-store")]
        exchange.conn.respond(exchange.request, 200, body, _JSON, headers)
        return 200
