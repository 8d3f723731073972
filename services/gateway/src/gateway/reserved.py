"""The gateway's own endpoints under ``/_gateway/``, never proxied: health, readiness, metrics, the token
exchange and the JWKS of the keys that sign access tokens and ``X-Tenant-Token``."""

from __future__ import annotations

from typing import Final

import msgspec
import redis.asyncio as redis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.authenticate import Authenticator, read_credential
from gateway.directory import Directory, DirectorySync
from gateway.errors import GatewayError, unauthorized
from gateway.exchange import Exchange
from gateway.tokens import TokenIssuer
from tenantry_common.problems import PROBLEM_MEDIA_TYPE, problem_bytes

#: Requests whose path starts with this are the gateway's own.
RESERVED_PREFIX: Final = b"/_gateway/"
_JSON: Final = b"application/json"
_PROBLEM: Final = PROBLEM_MEDIA_TYPE.encode()


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
    ) -> None:
        """``redis_client``: pinged for readiness (the quota client is not: it connects on its first call)."""
        self._directory = directory
        self._sync = sync
        self._redis = redis_client
        self._authenticator = authenticator
        self._tokens = tokens

    async def answer(self, exchange: Exchange) -> int:
        """Answer a ``/_gateway/*`` request; return the status.

        Raises:
            GatewayError: 404 ``not_found`` for any other path; the token exchange's refusals.
        """
        request, conn = exchange.request, exchange.conn
        path, method = request.raw_path, request.method
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
            return self._token(exchange)
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

    def _token(self, exchange: Exchange) -> int:
        """``POST /_gateway/token``: an access token for the request's API key (a JWT is refused: 401)."""
        credential = read_credential(exchange.request.tracked)
        if not credential.is_api_key:
            raise unauthorized()
        principal = self._authenticator.api_key(credential.value)
        self._authenticator.tenant_of(principal)
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
