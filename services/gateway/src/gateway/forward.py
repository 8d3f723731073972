"""Step 4 — forward: stream the request to the tenant's upstream and the response back.

Hop-by-hop headers are dropped both ways, client ``X-Tenant-*`` headers are removed, the gateway's identity
headers are added, and ``X-Forwarded-*`` is set (appended to only when the peer is a trusted proxy). Requests
are never retried, except an idempotent one whose pooled connection was found closed before any answer.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote, urlsplit

from gateway.http import CONTENT_LENGTH, MalformedBodyError, Request
from gateway.upstream import Origin, StaleConnectionError, UpstreamPool, UpstreamResponse

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
