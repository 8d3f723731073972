"""Step 4 — forward: stream the request to the tenant's upstream and the response back.

Hop-by-hop headers are dropped both ways, client ``X-Tenant-*`` headers are removed, the gateway's identity
headers are added, and ``X-Forwarded-*`` is set (appended to only when the peer is a trusted proxy). Requests
are never retried, except an idempotent one whose pooled connection was found closed before any answer. A
response whose body is already complete (the usual small one) leaves in one write of head and body; others are
streamed with back-pressure, chunk-coded when their length is unknown.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote, urlsplit

import structlog

from gateway.directory import TenantEntry
from gateway.errors import GatewayError, bad_request
from gateway.exchange import Exchange
from gateway.http import (
    CONTENT_LENGTH,
    X_PROTO,
    BodyTimeoutError,
    ClientGoneError,
    Header,
    MalformedBodyError,
    Request,
)
from gateway.tokens import TokenIssuer
from gateway.upstream import (
    Origin,
    StaleConnectionError,
    UpstreamError,
    UpstreamInvalidError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeoutError,
)

_log = structlog.get_logger("tenantry.gateway")

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"expect",
    }
)
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
#: Client headers the gateway sets itself (or, for the prefixes, only a trusted proxy may have set).
_STRIPPED_PREFIXES: Final = (b"x-tenant-", b"x-forwarded-")
_REPLACED: Final = (b"x-request-id", b"content-length", b"forwarded")
_origins: dict[str, tuple[Origin, bytes]] = {}


def origin_of(url: str) -> tuple[Origin, bytes]:
    """The origin and path prefix of an upstream URL (cached: a handful of distinct URLs)."""
    cached = _origins.get(url)
    if cached is None:
        parts = urlsplit(url)
        scheme = parts.scheme or "http"
        port = parts.port or (443 if scheme == "https" else 80)
        cached = (Origin(scheme, parts.hostname or "127.0.0.1", port), parts.path.rstrip("/").encode())
        _origins[url] = cached
    return cached


def escapes_upstream_path(raw_path: bytes) -> bool:
    """Whether a request path could climb out of the ``upstream_url``'s path prefix it is appended to.

    That is a ``.`` or ``..`` segment in any spelling an upstream might decode into one: percent-encoded dots or
    slashes (decoded up to three times, for upstreams that decode twice), backslashes (read as ``/`` by some
    servers) and ``;`` parameters (``..;`` is ``..`` to some). Clients normalise dot segments before sending, so
    honest requests do not carry them. A target that does not start with ``/`` (``*``) would be glued onto the
    prefix's last segment. The usual path has none of ``/.``, ``%`` and a backslash, and costs three scans.
    """
    if not raw_path.startswith(b"/"):
        return True
    if b"/." not in raw_path and b"%" not in raw_path and b"\\" not in raw_path:
        return False
    path = raw_path.decode("latin-1")
    for _ in range(3):
        decoded = unquote(path, encoding="latin-1")
        if decoded == path:
            break
        path = decoded
    return any(segment.partition(";")[0] in (".", "..") for segment in path.replace("\\", "/").split("/"))


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names listed in ``Connection`` (also hop-by-hop)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens)


async def send_upstream(
    pool: UpstreamPool,
    origin: Origin,
    head: bytes,
    request: Request,
    *,
    max_body: int,
    body_timeout: float,
    response_timeout: float,
) -> UpstreamResponse:
    """Send the request (streaming its body from the client) and return the response head.

    Raises:
        BodyTooLargeError: the body grew past ``max_body`` while streaming.
        BodyTimeoutError: the client stopped sending its body.
        MalformedBodyError: the body's framing was invalid, or its length differs from its Content-Length.
        ClientGoneError: the client disconnected while its body was being forwarded.
        UpstreamError: the upstream failed before answering.
    """
    received = 0
    declared = request.tracked[CONTENT_LENGTH]
    expected = int(declared) if declared is not None and declared.isdigit() else None

    async def body() -> tuple[bytes, bool]:
        nonlocal received
        chunk, more = await request.receive(body_timeout)
        received += len(chunk)
        if received > max_body:
            raise BodyTooLargeError
        if not more and expected is not None and received != expected:
            # Never hand the upstream fewer (or more) bytes than the Content-Length it was told: it would read
            # the difference from whatever comes next on the pooled connection.
            raise MalformedBodyError
        return chunk, more

    has_body = request.has_body
    source = body if has_body else None
    chunked = request.chunked and request.tracked[CONTENT_LENGTH] is None
    head_request = request.method == "HEAD"
    try:
        return await pool.request(
            origin, head, source, chunked=chunked, head_request=head_request, response_timeout=response_timeout
        )
    except StaleConnectionError:
        if request.method not in IDEMPOTENT or has_body:
            raise
        return await pool.request(
            origin, head, None, chunked=False, head_request=head_request, response_timeout=response_timeout
        )


class BodyTooLargeError(Exception):
    """The request body exceeded the configured maximum."""


class Forwarder:
    """Forwards a request that passed the earlier steps and sends the upstream's answer to the client."""

    def __init__(
        self,
        pool: UpstreamPool,
        tokens: TokenIssuer,
        *,
        default_upstream: str,
        max_body: int,
        read_timeout: float,
        response_timeout: float,
    ) -> None:
        """``read_timeout``: silence allowed while a body streams, either way; ``response_timeout``: from the
        request sent to the whole response head."""
        self._pool = pool
        self._tokens = tokens
        self._default_upstream = default_upstream
        self._max_body = max_body
        self._read_timeout = read_timeout
        self._response_timeout = response_timeout

    async def forward(self, exchange: Exchange, tenant: TenantEntry) -> int:
        """Forward to ``tenant``'s upstream; return the status sent to the client (499: the client left).

        Raises:
            GatewayError: the request cannot be forwarded (413, 400, 408); failures of the upstream are answered
                here (502, 504) and returned as the status.
        """
        request = exchange.request
        content_length = request.tracked[CONTENT_LENGTH]
        if content_length is not None:
            if not content_length.isdigit():
                raise bad_request("invalid_content_length", "Content-Length is not a number.")
            if int(content_length) > self._max_body:
                raise GatewayError("The request body is too large.", code="payload_too_large", status=413)
        origin, prefix = origin_of(tenant.upstream_url or self._default_upstream)
        target = prefix + exchange.upstream_path + (b"?" + request.query if request.query else b"")
        head = self._upstream_head(exchange, tenant, target, origin.host_header)
        try:
            response = await send_upstream(
                self._pool,
                origin,
                head,
                request,
                max_body=self._max_body,
                body_timeout=self._read_timeout,
                response_timeout=self._response_timeout,
            )
        except BodyTooLargeError:
            raise GatewayError("The request body is too large.", code="payload_too_large", status=413) from None
        except MalformedBodyError:
            raise bad_request("invalid_request", "The request body's framing is invalid.") from None
        except BodyTimeoutError:
            raise GatewayError("The request body did not arrive in time.", code="request_timeout", status=408) from None
        except ClientGoneError:
            return 499
        except UpstreamError as exc:
            return _upstream_failed(exchange, exc)
        try:
            body = response.complete_body()
        except UpstreamError as exc:
            response.abort()
            return _upstream_failed(exchange, exc)
        headers, length = _client_headers(response.headers)
        headers.append((b"x-request-id", exchange.request_id))
        headers.extend(exchange.quota_headers)
        status = response.status
        if body is not None:
            if length is not None and (request.method == "HEAD" or status == 304):
                headers.append((b"content-length", length))
            exchange.conn.send_complete(request, status, headers, body)
            response.release()
            return status
        return await self._stream(exchange, response, headers, length)

    async def _stream(
        self, exchange: Exchange, response: UpstreamResponse, headers: list[Header], length: bytes | None
    ) -> int:
        """Send a response whose body is still arriving, chunk by chunk; return the status (499: the client left)."""
        conn, status = exchange.conn, response.status
        try:
            chunked = conn.start_stream(exchange.request, status, headers, int(length) if length is not None else None)
            async for chunk in response.body():
                if conn.gone:
                    response.abort()
                    return 499
                conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                await conn.drain(self._read_timeout)
            if chunked:
                conn.write(b"0\r\n\r\n")
        except UpstreamError as exc:
            # The head is out: all that is left is to cut the connection so the client sees a broken body.
            if isinstance(exc, UpstreamInvalidError):
                _log.warning("upstream_invalid", error=str(exc), request_id=exchange.request_id.decode())
            response.abort()
            conn.close()
            return status
        except ClientGoneError:  # the client stopped reading the response
            response.abort()
            return 499
        except BaseException:
            response.abort()
            raise
        response.release()
        return status

    def _upstream_head(self, exchange: Exchange, tenant: TenantEntry, target: bytes, host_header: bytes) -> bytes:
        """The request head for the upstream: the client's headers minus hop-by-hop, stripped and replaced ones,
        then framing, ``X-Forwarded-*``, the request id and the tenant's identity."""
        request, conn = exchange.request, exchange.conn
        extra_hop = connection_tokens(request.headers)
        dropped = exchange.credential_header
        lines = [request.method.encode(), b" ", target, b" HTTP/1.1\r\nhost: ", host_header, b"\r\n"]
        for name, value in request.headers:
            if (
                name in HOP_BY_HOP
                or name in extra_hop
                or name.startswith(_STRIPPED_PREFIXES)
                or name in _REPLACED
                or name == dropped
            ):
                continue
            lines += [name, b": ", value, b"\r\n"]
        trusted = exchange.trusted
        x_for = request.x_for
        forwarded_for = (x_for + b", " if trusted and x_for else b"") + conn.peer.encode()
        x_proto = request.tracked[X_PROTO]
        proto = x_proto if trusted and x_proto else conn.scheme.encode()
        content_length = request.tracked[CONTENT_LENGTH]
        if content_length is not None:
            lines += [b"content-length: ", content_length, b"\r\n"]
        elif request.chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
        lines += [
            b"x-forwarded-for: ", forwarded_for, b"\r\n",
            b"x-forwarded-proto: ", proto, b"\r\n",
            b"x-forwarded-host: ", exchange.host, b"\r\n",
            b"x-request-id: ", exchange.request_id, b"\r\n",
            b"x-tenant-id: ", tenant.id.encode(), b"\r\n",
            b"x-tenant-slug: ", tenant.slug.encode(), b"\r\n",
        ]  # fmt: skip
        principal = exchange.principal
        if principal is not None:
            lines += [b"x-tenant-token: ", self._tokens.tenant_token(tenant, principal), b"\r\n"]
        lines.append(b"\r\n")
        return b"".join(lines)


def _upstream_failed(exchange: Exchange, exc: UpstreamError) -> int:
    """Answer an upstream failure that happened before anything was sent to the client; return the status."""
    if isinstance(exc, UpstreamTimeoutError):
        problem = GatewayError("The upstream did not answer in time.", code="upstream_timeout", status=504)
    elif isinstance(exc, UpstreamInvalidError):
        problem = GatewayError("The upstream's answer is not valid HTTP.", code="upstream_invalid", status=502)
        _log.warning("upstream_invalid", error=str(exc), request_id=exchange.request_id.decode())
    else:
        problem = GatewayError("The upstream is unreachable.", code="upstream_unavailable", status=502)
    exchange.refuse(problem, exchange.quota_headers)
    return problem.status


def _client_headers(headers: list[Header]) -> tuple[list[Header], bytes | None]:
    """Upstream response headers fit for the client, and the upstream's Content-Length (framing is ours).

    ``RateLimit-*`` are the gateway's to set: an upstream's own would reach the client twice, contradicting them.
    """
    extra = connection_tokens(headers)
    out: list[Header] = []
    length: bytes | None = None
    for name, value in headers:
        if name == b"content-length":
            length = value
        elif name not in HOP_BY_HOP and name not in extra and name != b"server" and not name.startswith(b"ratelimit-"):
            out.append((name, value))
    return out, length
