"""The gateway's own HTTP/1.1 server: an asyncio Protocol over ``httptools``' C parser.

Why not uvicorn: behind ASGI every response costs a scope dict, message dicts, a receive/send pair and at
least two socket writes (head, then body). Here the parser's callbacks fill one :class:`Request` (noting the
headers the pipeline reads as they stream past), the handler answers with one ``transport.write`` of head and
body for every response that is complete when it is ready, and only streamed bodies take more writes.

What the protocol guarantees the handler:

- one request at a time per connection; pipelined requests wait their turn (reading pauses meanwhile);
- the request body as an async stream with back-pressure (reading pauses while too much is buffered);
- malformed framing (bad chunk sizes, ``Content-Length`` together with ``Transfer-Encoding``, conflicting
  lengths, bytes the parser rejects) answered with 400 and the connection closed, so nothing smuggled after it
  is ever read as a request;
- idle keep-alive connections and clients that never finish their headers (slowloris) closed by a sweep.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from email.utils import formatdate
from http import HTTPStatus
from typing import Final
from urllib.parse import unquote

import httptools
import structlog

from tenantry_common.problems import PROBLEM_MEDIA_TYPE, problem_bytes

_log = structlog.get_logger("tenantry.gateway.http")

Header = tuple[bytes, bytes]
Headers = list[Header]
Handler = Callable[["Request", "HttpConnection"], Awaitable[None]]

#: Read no more than this much request body ahead of the handler; reading pauses above it.
_BODY_HIGH_WATER: Final = 256 * 1024
_MAX_PIPELINED: Final = 16
#: One socket read's worth of bytes that may belong to earlier requests when a head is counted.
_READ_SLACK: Final = 256 * 1024
_REASONS: Final = {status.value: status.phrase.encode() for status in HTTPStatus}
_PROBLEM_TYPE: Final = PROBLEM_MEDIA_TYPE.encode()
# Headers the pipeline reads, noted while parsing: index into Request.tracked.
HOST, AUTHORIZATION, API_KEY, TENANT_ID, CONTENT_LENGTH, REQUEST_ID, X_HOST, X_PROTO = range(8)
_SINGLE: Final = {
    b"host": HOST,
    b"authorization": AUTHORIZATION,
    b"x-api-key": API_KEY,
    b"x-tenant-id": TENANT_ID,
    b"content-length": CONTENT_LENGTH,
}
_FIRST_WINS: Final = {b"x-request-id": REQUEST_ID, b"x-forwarded-host": X_HOST, b"x-forwarded-proto": X_PROTO}


class _Clock:
    """The ``Date`` header, formatted at most once a second."""

    second = 0
    value = b""

    @classmethod
    def date(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second = now
            cls.value = formatdate(now, usegmt=True).encode()
        return cls.value


class ClientGoneError(Exception):
    """The client disconnected before its request body was read."""


class BodyTimeoutError(Exception):
    """The client stopped sending its request body."""


class MalformedBodyError(Exception):
    """The request body's framing was invalid (e.g. a bad chunk size): the body must not be used."""


class Request:
    """One parsed request: line, headers, the headers the pipeline reads, and the body as a stream."""

    __slots__ = (
        "_complete",
        "_conn",
        "_failed",
        "_pending",
        "_waiter",
        "buffered",
        "chunked",
        "duplicates",
        "expect_continue",
        "header_bytes",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "query",
        "raw_path",
        "tracked",
        "transfer_encoding",
        "x_for",
    )

    def __init__(self, conn: HttpConnection) -> None:
        self._conn = conn
        self.method = ""
        self.raw_path = b"/"
        self.query = b""
        self.http_version = "1.1"
        self.headers: Headers = []
        self.tracked: list[bytes | None] = [None] * 8
        self.x_for: bytes | None = None
        self.duplicates = False
        self.chunked = False
        self.transfer_encoding: bytes | None = None
        self.expect_continue = False
        self.keep_alive = True
        self.header_bytes = 0
        self._pending: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self._complete = False
        self._failed = False
        self._waiter: asyncio.Future[None] | None = None

    @property
    def path(self) -> str:
        """The percent-decoded path."""
        raw = self.raw_path.decode("latin-1")
        return unquote(raw) if "%" in raw else raw

    @property
    def has_body(self) -> bool:
        """Whether a body follows the head (chunked, or a non-zero Content-Length)."""
        length = self.tracked[CONTENT_LENGTH]
        return self.chunked or (length is not None and length != b"0")

    @property
    def body_complete(self) -> bool:
        """The whole body has been read off the connection, validly framed."""
        return self._complete and not self._failed

    # fed by the protocol ----------------------------------------------------------------------------
    def _feed(self, chunk: bytes) -> None:
        self._pending.append(chunk)
        self.buffered += len(chunk)
        if self.buffered > _BODY_HIGH_WATER:
            self._conn.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self) -> None:
        self._failed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # read by the handler ----------------------------------------------------------------------------
    async def receive(self, timeout: float) -> tuple[bytes, bool]:  # noqa: ASYNC109 - applies to each wait only
        """The next body chunk and whether more follows.

        Raises:
            ClientGoneError: the client disconnected first.
            BodyTimeoutError: no body bytes for ``timeout`` seconds.
            MalformedBodyError: the body's framing was invalid; what arrived so far must not be used either.
        """
        if self.expect_continue:
            self.expect_continue = False
            self._conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while self._failed or not self._pending:
            if self._failed:
                raise MalformedBodyError
            if self._complete:
                return b"", False
            if self._conn.gone:
                raise ClientGoneError
            self._conn.resume_reading()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            except TimeoutError:
                raise BodyTimeoutError from None
            finally:
                self._waiter = None
        chunk = self._pending.popleft()
        self.buffered -= len(chunk)
        if self.buffered <= _BODY_HIGH_WATER // 4:
            self._conn.resume_reading()
        return chunk, bool(self._pending) or not self._complete


class HttpConnection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = server.loop
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.scheme = "http"
        self.gone = False
        self._reading_paused = False
        self._closing = False
        self._writable: asyncio.Future[None] | None = None
        self._parsing: Request | None = None
        self._url = b""
        self._active: Request | None = None
        #: The task handling the active request.
        self._task: asyncio.Task[None] | None = None
        self._queue: collections.deque[Request] = collections.deque()
        self._in_head = False
        self._head_bytes = 0
        #: monotonic time since when the connection is idle or waiting for a request head; 0 while busy.
        self.waiting_since = time.monotonic()
        self.response_started = False

    # asyncio.Protocol -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self._server.connections.discard(self)
        if self._parsing is not None:
            self._parsing._wake()
        if self._active is not None:
            self._active._wake()
        writable = self._writable
        if writable is not None and not writable.done():
            writable.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._parser.feed_data(data)
            if self._in_head:
                # httptools hands a header line over only when it ends: bound what one unfinished head may
                # buffer (this chunk may also hold earlier pipelined requests, hence the slack of one read).
                self._head_bytes += len(data)
                if self._head_bytes > 4 * self._server.max_header_bytes + _READ_SLACK:
                    self._malformed("request head too large", status=431, code="request_header_fields_too_large")
        except httptools.HttpParserUpgrade:
            # No protocol upgrades (WebSocket) through the gateway: the request is served as plain HTTP and the
            # connection closed after it, since what follows the head would not be HTTP.
            request = self._parsing
            if request is not None and request.has_body:
                # llhttp skips the body of an upgrade request; forwarding its Content-Length without those bytes
                # would let the upstream read the next bytes on the connection as this body.
                self._malformed("upgrade request with a body")
                return
            if request is not None:
                request.keep_alive = False
                request._finish()
                self._parsing = None
            self._closing = True
        except httptools.HttpParserError as exc:
            self._malformed(str(exc))

    def pause_writing(self) -> None:
        self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        writable = self._writable
        self._writable = None
        if writable is not None and not writable.done():
            writable.set_result(None)
        if self._active is None and not self.gone and not self._closing:
            if self._queue:
                self._start(self._queue.popleft())
            self.resume_reading()

    # parser callbacks -------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._closing:
            return  # nothing after a refused request is ever parsed as a request
        self._parsing = Request(self)
        self._url = b""
        self._in_head = True
        self._head_bytes = 0
        if self._active is None:
            self.waiting_since = time.monotonic()  # the head must now arrive within the header timeout

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._server.max_header_bytes:
            self._malformed("request target too long", status=414, code="uri_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._parsing
        if request is None:
            return
        name = name.lower()
        request.headers.append((name, value))
        request.header_bytes += len(name) + len(value) + 4
        if request.header_bytes > 4 * self._server.max_header_bytes:
            # Far past the limit: stop reading instead of buffering an unbounded head.
            self._malformed("request headers too large", status=431, code="request_header_fields_too_large")
            return
        slot = _SINGLE.get(name)
        if slot is not None:
            request.duplicates |= request.tracked[slot] is not None
            request.tracked[slot] = value
            return
        slot = _FIRST_WINS.get(name)
        if slot is not None:
            if request.tracked[slot] is None:
                request.tracked[slot] = value
        elif name == b"x-forwarded-for":
            request.x_for = value if request.x_for is None else request.x_for + b", " + value
        elif name == b"transfer-encoding":
            request.chunked = True
            te = request.transfer_encoding
            request.transfer_encoding = value if te is None else te + b", " + value
        elif name == b"expect":
            request.expect_continue = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        self._in_head = False
        request = self._parsing
        if request is None:
            return
        te = request.transfer_encoding
        if te is not None and te.strip().lower() != b"chunked":
            # Only plain chunked framing is understood; anything else (identity, gzip, chunked twice) could be
            # read differently by the upstream, which is how requests get smuggled.
            self._malformed("unsupported transfer coding", code="invalid_transfer_encoding")
            return
        parser = self._parser
        if request.has_body and parser.should_upgrade():
            # llhttp would skip this body (an upgrade hands the connection over); refuse it before anything is
            # forwarded, so the upstream is never told of a body it would then read from the next bytes.
            self._malformed("upgrade request with a body")
            return
        request.method = parser.get_method().decode("ascii", "replace")
        request.http_version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        url = self._url
        path, sep, query = url.partition(b"?")
        if b"#" in query or (not sep and b"#" in path):
            path = path.partition(b"#")[0]
            query = query.partition(b"#")[0]
        if path.startswith((b"http://", b"https://")):
            # absolute-form request target: the path is what follows the authority
            authority_end = path.find(b"/", path.find(b"//") + 2)
            path = path[authority_end:] if authority_end > 0 else b"/"
        request.raw_path = path or b"/"
        request.query = query
        if self._active is None:
            self._start(request)
        else:
            self._queue.append(request)
            if len(self._queue) >= _MAX_PIPELINED:
                self.pause_reading()

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing._feed(body)

    def on_message_complete(self) -> None:
        request = self._parsing
        self._parsing = None
        if request is not None:
            request._finish()

    # request lifecycle ------------------------------------------------------------------------------
    def _start(self, request: Request) -> None:
        self._active = request
        self.waiting_since = 0.0
        self.response_started = False
        # The loop keeps only a weak reference to a task: one nobody holds could be collected mid-request. The
        # server holds it until _run's last step (cheaper than a done callback, which takes a loop iteration).
        self._task = self._loop.create_task(self._run(request))
        self._server.handling.add(self._task)

    async def _run(self, request: Request) -> None:
        try:
            await self._server.handler(request, self)
        except Exception:  # noqa: BLE001 - a bug answers 500 (if it still can) and closes the connection
            _log.exception("unhandled_error", path=request.raw_path.decode("latin-1"))
            if not self.response_started:
                self.respond(
                    request,
                    500,
                    problem_bytes(500, "internal_error", detail="An unexpected error occurred."),
                    _PROBLEM_TYPE,
                )
            self.close()
        finally:
            self._server.handling.discard(self._task)
            self._done(request)

    def _done(self, request: Request) -> None:
        self._active = None
        if self.gone:
            return
        if not request.keep_alive or not request.body_complete or self._closing:
            # Unread body bytes (a refused upload) or a connection the client or we asked to end: close rather
            # than read the rest of a body nobody wants, or guess where the next request starts.
            self.close()
            return
        self.waiting_since = time.monotonic()
        if self._writable is not None:
            # The client is not reading its responses: answer nothing more (and read nothing more) until it does.
            self.pause_reading()
            return
        if self._queue:
            self._start(self._queue.popleft())
        self.resume_reading()

    def _malformed(self, reason: str, *, status: int = 400, code: str = "invalid_request") -> None:
        """Answer a request the parser (or a limit) refused, then close: nothing after it is read."""
        self._closing = True
        parsing = self._parsing
        self._parsing = None
        if parsing is not None and parsing is self._active:
            parsing._fail()  # the handler reading this body learns it is broken; the upstream never gets it whole
        if self._active is None and self.transport is not None and not self.gone:
            detail = {
                400: "The request is not valid HTTP/1.1.",
                414: "The request target is too long.",
                431: "The request headers are too large.",
            }[status]
            body = problem_bytes(status, code, detail=detail)
            head = self._head(status, [(b"content-type", _PROBLEM_TYPE)], len(body), connection=b"close")
            self.transport.write(head + body)
            _log.info("malformed_request", peer=self.peer, reason=reason)
            self.close()
        elif self._active is not None:
            self._active.keep_alive = False

    # writing ----------------------------------------------------------------------------------------
    def _head(self, status: int, headers: Headers, length: int | None, *, connection: bytes | None) -> bytes:
        lines = [b"HTTP/1.1 %d %b\r\n" % (status, _REASONS.get(status, b"Unknown"))]
        has_date = False
        for name, value in headers:
            lines += [name, b": ", value, b"\r\n"]
            has_date = has_date or name == b"date"
        if not has_date:
            lines += [b"date: ", _Clock.date(), b"\r\n"]
        if length is not None:
            lines += [b"content-length: ", b"%d" % length, b"\r\n"]
        if connection is not None:
            lines += [b"connection: ", connection, b"\r\n"]
        lines.append(b"\r\n")
        return b"".join(lines)

    def _connection_header(self, request: Request) -> bytes | None:
        """``close`` when the connection ends after this response; ``keep-alive`` to an HTTP/1.0 client keeping it."""
        if not request.keep_alive or not request.body_complete or self._closing or self._server.shutting_down:
            request.keep_alive = False
            return b"close"
        return b"keep-alive" if request.http_version == "1.0" else None

    def respond(
        self, request: Request, status: int, body: bytes, content_type: bytes, extra: Sequence[Header] = ()
    ) -> None:
        """Send a complete response (head and body in one write)."""
        headers = [(b"content-type", content_type), *extra]
        head = self._head(status, headers, len(body), connection=self._connection_header(request))
        self.response_started = True
        self.write(head if request.method == "HEAD" else head + body)

    def send_complete(self, request: Request, status: int, headers: Headers, body: bytes) -> None:
        """Send an upstream response whose body is all here: one write; ``Content-Length`` set from the body.

        ``headers`` must not carry framing headers (Content-Length, Transfer-Encoding) unless ``body`` is empty
        for a HEAD request, where the upstream's Content-Length is kept.
        """
        length: int | None = len(body)
        if request.method == "HEAD" or status in (204, 304) or status < 200:
            length = None
            body = b""
        head = self._head(status, headers, length, connection=self._connection_header(request))
        self.response_started = True
        self.write(head + body)

    def start_stream(self, request: Request, status: int, headers: Headers, length: int | None) -> bool:
        """Send the head of a response whose body follows in pieces; return whether it is chunk-coded."""
        chunked = length is None and request.http_version == "1.1"
        if length is None and not chunked:
            request.keep_alive = False  # HTTP/1.0: the body ends when the connection does
        connection = self._connection_header(request)
        if chunked:
            headers = [*headers, (b"transfer-encoding", b"chunked")]
        self.response_started = True
        self.write(self._head(status, headers, length, connection=connection))
        return chunked

    def write(self, data: bytes) -> None:
        """Write to the client unless it is gone."""
        if not self.gone and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 - a bound on one wait
        """Wait while the client reads slower than the response arrives; cut a client that stops reading."""
        writable = self._writable
        if writable is not None:
            try:
                async with asyncio.timeout(timeout):
                    await writable
            except TimeoutError:
                self.close(abort=True)
                raise ClientGoneError from None

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.gone:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.gone:
            self._reading_paused = False
            self.transport.resume_reading()

    def close(self, *, abort: bool = False) -> None:
        """Close after what was written has been flushed; ``abort``: at once when the client is not reading it."""
        self._closing = True
        if self.transport is None:
            return
        if abort and self.transport.get_write_buffer_size() > 0:
            self.transport.abort()
        elif not self.transport.is_closing():
            self.transport.close()

    @property
    def idle(self) -> bool:
        """Between requests (or before the first)."""
        return self._active is None and self._parsing is None


class HttpServer:
    """Accepts connections, runs the handler per request, closes idle and slow connections."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_header_bytes: int,
        keepalive_timeout: float,
        header_timeout: float,
    ) -> None:
        self.handler = handler
        self.max_header_bytes = max_header_bytes
        self.keepalive_timeout = keepalive_timeout
        self.header_timeout = header_timeout
        self.loop = asyncio.get_running_loop()
        self.connections: set[HttpConnection] = set()
        #: The tasks handling a request, held until each is done.
        self.handling: set[asyncio.Task[None]] = set()
        self.shutting_down = False
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def serve(self, sock: socket.socket) -> None:
        """Start accepting on an already bound, listening socket."""
        self._server = await self.loop.create_server(
            lambda: HttpConnection(self),
            sock=sock,
            backlog=2048,
        )
        self._sweeper = self.loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        """Close keep-alive connections idle too long, and connections whose request head takes too long."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for conn in list(self.connections):
                since = conn.waiting_since
                if since == 0.0:
                    continue
                limit = self.keepalive_timeout if conn.idle else self.header_timeout
                if now - since > limit:
                    conn.close(abort=True)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let requests in flight finish for up to ``grace`` seconds, then close everything."""
        self.shutting_down = True
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            busy = False
            for conn in list(self.connections):
                if conn.idle:
                    conn.close()
                else:
                    busy = True
            if not busy:
                break
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()
