"""A lean HTTP/1.1 client for forwarding: keep-alive pool, streaming both ways, strict timeouts.

Why not httpx or aiohttp: on the proxy's hot path their per-request machinery costs more than everything else
the gateway does. This client is an asyncio Protocol fed to ``httptools``' C parser; bodies stream chunk by chunk
with back-pressure in both directions, and idle connections are kept per origin.

What an upstream may send is bounded like what a client may: a response head (interim responses included) and
the trailer section each hold at most ``max_header_fields`` fields and ``max_head_bytes`` bytes, bytes the parser
holds back without handing anything over (a header line without end) count against the same bound, and a head
that has begun must be complete within ``head_timeout``. Past any of these the exchange fails and the connection
is closed, so one hostile upstream cannot make the gateway buffer without limit.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import httptools
import structlog

from tenantry_common.addresses import forbidden_upstream_ip

_log = structlog.get_logger("tenantry.gateway.upstream")
Headers = list[tuple[bytes, bytes]]
_HIGH_WATER: Final = 16
_LOW_WATER: Final = 4


class UpstreamError(Exception):
    """The upstream could not be reached or broke the exchange before answering."""


class UpstreamTimeoutError(UpstreamError):
    """The upstream did not answer in time."""


class UpstreamInvalidError(UpstreamError):
    """The upstream's answer is not acceptable HTTP: garbage, an upgrade, or a head or trailers over the limits."""


class StaleConnectionError(UpstreamError):
    """A pooled connection turned out closed before any response byte: safe to retry idempotent requests."""


@dataclass(frozen=True)
class Origin:
    """Where requests go: scheme, host and port."""

    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> bytes:
        default = 443 if self.scheme == "https" else 80
        return (self.host if self.port == default else f"{self.host}:{self.port}").encode()


class _Connection(asyncio.Protocol):
    """One upstream connection; serves one exchange at a time."""

    def __init__(self, pool: UpstreamPool, origin: Origin) -> None:
        self._pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._max_fields = pool.max_header_fields
        self._max_bytes = pool.max_head_bytes
        self._write_ready = asyncio.Event()
        self._write_ready.set()
        self._reset()

    def _reset(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: Headers = []
        self._headers_done: asyncio.Future[None] = self._loop.create_future()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._chunk_ready = asyncio.Event()
        self._complete = False
        self._error: BaseException | None = None
        self._got_bytes = False
        self._paused = False
        self.keep_alive = True
        self.head_request = False
        self._interim = False
        #: Fields and their bytes in the head read so far (interim responses included), then in the trailers.
        self._fields = 0
        self._field_bytes = 0
        #: Bytes fed since the parser last handed something over: what it may be holding in a header line.
        self._held = 0
        self._progress = False
        #: A response head has begun and is not complete yet; it must be within the head timeout.
        self._in_head = False
        self._head_timer: asyncio.TimerHandle | None = None
        #: An exchange is in progress; bytes arriving on an idle pooled connection are never anybody's answer.
        self.busy = False

    # asyncio.Protocol -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            # Unsolicited bytes on an idle connection (a late 408, a body longer than announced): never let the
            # next request, perhaps another tenant's, read them as its response.
            self.abort()
            return
        if self._error is not None:
            return
        self._got_bytes = True
        self._progress = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamInvalidError("upstream upgraded the connection"))
            return
        except httptools.HttpParserError as exc:
            if self._error is None:  # else a limit stopped the parser and already said why
                self._fail(UpstreamInvalidError(f"invalid response from upstream: {exc}"))
            return
        if self._progress:
            self._held = 0
        else:
            # httptools hands a header line over only once it ends: bound what it may hold meanwhile (a read that
            # also completed a field is not counted, so it holds at most this bound plus one read).
            self._held += len(data)
            if self._held > self._max_bytes:
                self._fail(UpstreamInvalidError("upstream response head or trailers too large"))
                return
        if self._in_head and self._head_timer is None:
            self._head_timer = self._loop.call_later(self._pool.head_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._write_ready.set()
        if self._complete:
            return
        if not self._got_bytes:
            self._fail(StaleConnectionError("upstream closed the connection"))
        elif self._headers_done.done() and not self._is_framed():
            # A response without Content-Length or chunked coding ends when the connection does.
            self.keep_alive = False
            self.on_message_complete()
        else:
            self._fail(UpstreamError("upstream closed the connection mid-response"))

    def _is_framed(self) -> bool:
        return any(name in (b"content-length", b"transfer-encoding") for name, _ in self.headers)

    def pause_writing(self) -> None:
        self._write_ready.clear()

    def resume_writing(self) -> None:
        self._write_ready.set()

    # httptools callbacks ----------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if not self._complete:
            self._in_head = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self._progress = True
        self._fields += 1
        self._field_bytes += len(name) + len(value) + 4
        if self._fields > self._max_fields or self._field_bytes > self._max_bytes:
            self._overflow()
        if not self.status:  # trailers are counted, never kept: the gateway does not forward them
            self.headers.append((name.lower(), value))

    def _overflow(self) -> None:
        """Fail the exchange and stop the parser (raising in a callback does): nothing more of this read is read."""
        error = UpstreamInvalidError(
            "upstream response trailers too large" if self.status else "upstream response head too large"
        )
        self._fail(error)
        raise error

    def on_headers_complete(self) -> None:
        self._progress = True
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        status = self._parser.get_status_code()
        if status == 101:  # no protocol upgrades through the gateway: 502
            self._fail(UpstreamInvalidError("upstream switched protocols"))
            return
        if 100 <= status < 200:
            # An interim response (100 Continue, 103 Early Hints): not the answer; the final one follows. Each one
            # counts as a field, so an endless series of them is cut like an endless head.
            self.headers = []
            self._interim = True
            self._fields += 1
            if self._fields > self._max_fields:
                self._overflow()
            return
        self.status = status
        self._fields = self._field_bytes = 0  # the trailers, if any, get a budget of their own
        self.keep_alive = self._parser.should_keep_alive()
        if not self._headers_done.done():
            self._headers_done.set_result(None)
        if self.head_request or self.status in (204, 304):
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        self._progress = True
        self._chunks.append(body)
        self._chunk_ready.set()
        if len(self._chunks) >= _HIGH_WATER and self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        self._progress = True
        if self._interim:
            self._interim = False
            return
        if self._complete:
            return
        self._complete = True
        self._chunk_ready.set()

    def _timed_out(self) -> None:
        self._fail(UpstreamTimeoutError("upstream did not answer in time"))
        self.abort()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self._fail(UpstreamTimeoutError("upstream did not finish its response head in time"))
        self.abort()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:  # the first failure is the one to report (closing the connection adds another)
            self._error = exc
        self.keep_alive = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if not self._headers_done.done():
            self._headers_done.set_exception(exc)
            self._headers_done.exception()  # mark retrieved; the waiter re-raises it
        self._chunk_ready.set()
        if self.transport is not None:
            self.transport.close()

    # exchange -------------------------------------------------------------------------------------
    def _lost(self) -> UpstreamError:
        if not self._got_bytes:
            return StaleConnectionError("upstream closed the connection")
        return UpstreamError("upstream closed the connection")

    def send(self, data: bytes) -> None:
        """Write to the upstream; a connection it already closed is an upstream error, never a crash."""
        if self.closed or self.transport is None or self.transport.is_closing():
            raise self._lost()
        try:
            self.transport.write(data)
        except RuntimeError:  # uvloop: the transport closed between the check and the write
            raise self._lost() from None

    async def drain(self) -> None:
        if not self._write_ready.is_set():
            try:
                async with asyncio.timeout(self._pool.read_timeout):
                    await self._write_ready.wait()
            except TimeoutError:
                self.abort()
                raise UpstreamTimeoutError("upstream stopped reading the request body") from None
        if self.closed:
            raise self._lost()

    async def wait_headers(self, limit_seconds: float) -> None:
        if self._headers_done.done():
            self._headers_done.result()
            return
        # A plain timer, cheaper than asyncio.timeout on every request: on expiry the exchange fails as timed out.
        timer = self._loop.call_later(limit_seconds, self._timed_out)
        try:
            await self._headers_done
        finally:
            timer.cancel()

    async def body(self, read_timeout: float) -> AsyncIterator[bytes]:
        while True:
            while self._chunks:
                chunk = self._chunks.popleft()
                if self._paused and len(self._chunks) <= _LOW_WATER and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                yield chunk
            if self._error is not None:
                raise self._error if isinstance(self._error, UpstreamError) else UpstreamError(str(self._error))
            if self._complete:
                return
            self._chunk_ready.clear()
            try:
                await asyncio.wait_for(self._chunk_ready.wait(), read_timeout)
            except TimeoutError:
                self.abort()
                raise UpstreamTimeoutError("upstream stalled while sending the body") from None

    def take_complete_body(self) -> bytes | None:
        if self._error is not None:
            # Failed before anything went to the client (trailers over the limit, cut mid-body): still a 502.
            raise self._error if isinstance(self._error, UpstreamError) else UpstreamError(str(self._error))
        if not self._complete:
            return None
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return body

    def abort(self) -> None:
        self.keep_alive = False
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def release(self) -> None:
        """Give the connection back to the pool if the exchange finished cleanly, else close it."""
        if self._complete and self.keep_alive and not self.closed and self._error is None:
            self._reset()
            self._pool.put_back(self)
        else:
            self.abort()


class UpstreamResponse:
    """An upstream response whose body is consumed by iterating :meth:`body`."""

    def __init__(self, conn: _Connection, read_timeout: float) -> None:
        self._conn = conn
        self._read_timeout = read_timeout
        self.status = conn.status
        self.headers = conn.headers

    def complete_body(self) -> bytes | None:
        """The whole body when it has already arrived (the usual small response), else None: then stream it.

        Raises:
            UpstreamError: the exchange already failed (the client has been sent nothing yet).
        """
        return self._conn.take_complete_body()

    async def body(self) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive."""
        async for chunk in self._conn.body(self._read_timeout):
            yield chunk

    def release(self) -> None:
        """Return the connection to the pool (or close it)."""
        self._conn.release()

    def abort(self) -> None:
        """Close the connection without reuse."""
        self._conn.abort()


BodySource = Callable[[], Awaitable[tuple[bytes, bool]]]


def forbidden_address(address: str) -> bool:
    """Whether ``address`` (as getaddrinfo gives it, maybe with a scope) may never be an upstream."""
    return forbidden_upstream_ip(ipaddress.ip_address(address.partition("%")[0]))


async def _allowed_address(loop: asyncio.AbstractEventLoop, origin: Origin) -> str:
    """Resolve the upstream's host and pick an address that is allowed.

    The admin API refuses such addresses in ``upstream_url`` already; this catches what it cannot see: a host
    name whose DNS answer (perhaps changed since) points at a metadata or link-local address. The connection
    goes to the address checked here, so a second lookup cannot swap it.

    Raises:
        UpstreamError: the name does not resolve, or only to forbidden addresses.
    """
    try:
        infos = await loop.getaddrinfo(origin.host, origin.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UpstreamError(f"cannot resolve the upstream: {exc.strerror or exc}") from None
    for info in infos:
        address = str(info[4][0])
        if not forbidden_address(address):
            return address
    _log.warning("upstream_address_refused", host=origin.host)
    raise UpstreamError("the upstream resolves only to forbidden addresses")


class UpstreamPool:
    """Keep-alive connections per origin, and the limits every upstream response is held to."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        head_timeout: float,
        max_head_bytes: int,
        max_header_fields: int,
        max_idle_per_origin: int = 256,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.head_timeout = head_timeout
        self.max_head_bytes = max_head_bytes
        self.max_header_fields = max_header_fields
        self._max_idle = max_idle_per_origin
        self._idle: dict[Origin, list[_Connection]] = collections.defaultdict(list)

    def put_back(self, conn: _Connection) -> None:
        idle = self._idle[conn.origin]
        if len(idle) < self._max_idle:
            idle.append(conn)
        else:
            conn.abort()

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                address = await _allowed_address(loop, origin)
                https = origin.scheme == "https"
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, origin),
                    address,
                    origin.port,
                    ssl=https or None,
                    server_hostname=origin.host if https else None,
                )
        except TimeoutError:
            raise UpstreamTimeoutError("timed out connecting to the upstream") from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to the upstream: {exc.strerror or exc}") from None
        return conn

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def request(
        self,
        origin: Origin,
        head: bytes,
        body: BodySource | None,
        *,
        chunked: bool,
        head_request: bool,
        response_timeout: float,
    ) -> UpstreamResponse:
        """Send ``head`` (request line and headers, CRLF-terminated) and the body; wait for the response head.

        Args:
            origin: where to send it.
            head: the serialised request head.
            body: a callable returning ``(chunk, more)``, or ``None`` for no body.
            chunked: frame the body with chunked transfer coding (no Content-Length known).
            head_request: the method is HEAD (the response has no body whatever it says).
            response_timeout: seconds to wait for the response head after the request is sent.

        Raises:
            StaleConnectionError: a reused connection was found closed before anything was answered.
            UpstreamTimeoutError: connect, response or head timeout.
            UpstreamInvalidError: the answer is not acceptable HTTP or exceeds the head limits.
            UpstreamError: any other failure before the response head.
        """
        conn = self._take_idle(origin) or await self._connect(origin)
        conn.head_request = head_request
        conn.busy = True
        try:
            conn.send(head)
            if body is not None:
                while True:
                    chunk, more = await body()
                    if chunk:
                        conn.send(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                        await conn.drain()
                    if not more:
                        break
                if chunked:
                    conn.send(b"0\r\n\r\n")
            await conn.wait_headers(response_timeout)
        except BaseException:
            conn.abort()
            raise
        return UpstreamResponse(conn, self.read_timeout)

    def close(self) -> None:
        """Close every idle connection."""
        for conns in self._idle.values():
            for conn in conns:
                conn.abort()
        self._idle.clear()
