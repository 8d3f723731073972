"""The tenant-service's internal API for tenant users (contract §12, :mod:`tenantry_common.users_api`), as the
gateway calls it: logins, refreshes, ``/_gateway/me``, ``/_gateway/tenant`` and the tenant admins' user management.

The gateway holds no password hash and no refresh token: it passes the request on with its service token and
answers with what comes back. A refusal of the tenant-service (a 4xx problem+json: wrong password, spent refresh
token, too many attempts, weak password…) reaches the client as it is, with its ``Retry-After``. A tenant-service
that fails (5xx, a timeout, no connection, an answer that is not problem+json) is 503 ``auth_unavailable``; so is a
service token without the scope these endpoints need, which is the operator's to fix, not the client's. Nothing
here logs a request or response body: they hold passwords and tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, TypeVar

import httpx
import msgspec
import structlog

from gateway.errors import GatewayError
from tenantry_common.problems import PROBLEM_MEDIA_TYPE

_log = structlog.get_logger("tenantry.gateway.auth")
#: Retry-After of 503 ``auth_unavailable``.
_RETRY_AFTER: Final = "2"
#: The largest answer the gateway relays (a page of users is far below it).
_MAX_ANSWER_BYTES: Final = 1024 * 1024
_CARRIED: Final = ("retry-after", "www-authenticate")
T = TypeVar("T")


def unavailable() -> GatewayError:
    """503 ``auth_unavailable``: the tenant-service cannot answer right now."""
    return GatewayError(
        "Signing in is unavailable right now; retry shortly.",
        code="auth_unavailable",
        status=503,
        headers={"retry-after": _RETRY_AFTER},
    )


class RelayedProblem(Exception):  # noqa: N818 - an answer to relay, not an error of the gateway's
    """A refusal of the tenant-service the client receives as it is."""

    def __init__(self, status: int, body: bytes, content_type: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


class AuthClient:
    """Calls the tenant-service's internal API with the gateway's service token (scope ``users:authenticate``)."""

    def __init__(self, base_url: str, token: str, *, timeout: float) -> None:
        """``timeout``: seconds each call may take in all (AUTH_TIMEOUT_SECONDS)."""
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
        )

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: msgspec.Struct | bytes | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """The tenant-service's 2xx answer.

        Raises:
            RelayedProblem: a 4xx problem+json, for the client as it is.
            GatewayError: 503 ``auth_unavailable`` for anything else.
        """
        content = body if isinstance(body, bytes) or body is None else msgspec.json.encode(body)
        sent = dict(headers or {})
        if content is not None:
            sent["content-type"] = "application/json"
        try:
            response = await self._http.request(method, path, content=content, params=params, headers=sent)
        except httpx.HTTPError as exc:
            _log.warning("auth_call_failed", path=_route(path), error=type(exc).__name__)
            raise unavailable() from None
        if len(response.content) > _MAX_ANSWER_BYTES:
            _log.warning("auth_call_failed", path=_route(path), error="answer_too_large")
            raise unavailable()
        if 200 <= response.status_code < 300:
            return response
        if 400 <= response.status_code < 500:
            refusal = _refusal(response)
            if refusal is not None:
                raise refusal
        _log.warning("auth_call_failed", path=_route(path), status=response.status_code)
        raise unavailable()

    async def fetch(
        self,
        decoder: Callable[[bytes], T],
        method: str,
        path: str,
        *,
        body: msgspec.Struct | None = None,
    ) -> T:
        """:meth:`call`, its answer decoded.

        Raises:
            RelayedProblem: as :meth:`call`.
            GatewayError: 503 ``auth_unavailable`` as :meth:`call`, and for an answer that does not decode.
        """
        response = await self.call(method, path, body=body)
        try:
            return decoder(response.content)
        except (msgspec.DecodeError, RecursionError):
            _log.warning("auth_call_failed", path=_route(path), error="unexpected_answer")
            raise unavailable() from None


def _route(path: str) -> str:
    """The path without the ids in it (for logs): ``/internal/v1/tenants/{id}/users/{id}``."""
    parts = path.split("/")
    if len(parts) > 4 and parts[3] == "tenants":
        parts[4] = "{id}"
        if len(parts) > 6:
            parts[6] = "{id}"
    return "/".join(parts)


def _refusal(response: httpx.Response) -> RelayedProblem | None:
    """The refusal to relay; None when it is not a problem+json of the client's doing."""
    content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != PROBLEM_MEDIA_TYPE:
        return None
    try:
        problem = msgspec.json.decode(response.content)
    except (msgspec.DecodeError, RecursionError):
        return None
    if not isinstance(problem, dict) or not isinstance(problem.get("code"), str):
        return None
    if problem["code"] == "insufficient_scope":
        # The gateway's own service token lacks users:authenticate: the operator's problem, not the client's.
        _log.error("auth_service_token_refused", status=response.status_code, code=problem["code"])
        return None
    # The tenant-service's path is its own business.
    problem.pop("instance", None)
    headers = [(name.encode(), response.headers[name].encode()) for name in _CARRIED if name in response.headers]
    return RelayedProblem(response.status_code, msgspec.json.encode(problem), PROBLEM_MEDIA_TYPE.encode(), headers)
