"""A minimal Redis client for the one call on the gateway's hot path: the quota script.

Why not redis-py here: its asyncio client spends several times longer in Python per call (connection pool,
retry wrapper, encoders, parser classes) than the round trip to Redis itself takes. This client keeps one
pipelined connection: each call is one ``transport.write`` and one future, answers are matched to calls in
order, and one timer per connection (not one per call) fails everything pending when Redis stops answering.
redis-py still does everything else (directory events, readiness pings).
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
from collections.abc import Awaitable
from typing import Final
from urllib.parse import unquote, urlsplit

RespValue = bytes | int | list["RespValue"] | None
_CRLF: Final = b"\r\n"
_THREE_INTS: Final = re.compile(rb"\*3\r\n:(-?\d+)\r\n:(-?\d+)\r\n:(-?\d+)\r\n").match


class RespError(Exception):
    """Redis answered with an error reply."""


class RespConnectionError(Exception):
    """The connection to Redis failed, closed or timed out."""


def encode_command(*parts: bytes) -> bytes:
    """A command as a RESP array of bulk strings."""
    return b"*%d\r\n" % len(parts) + encode_arguments(parts)


def encode_arguments(parts: tuple[bytes, ...]) -> bytes:
    """Bulk strings, without the array header (for commands whose first parts are encoded once)."""
    return b"".join([b"$%d\r\n%b\r\n" % (len(part), part) for part in parts])


def _parse(buf: bytes | bytearray, pos: int) -> tuple[RespValue | RespError, int] | None:
    """One reply starting at ``pos``: ``(value, next position)``, or None while it is incomplete."""
    end = buf.find(_CRLF, pos)
    if end < 0:
        return None
    kind = buf[pos]
    line = bytes(buf[pos + 1 : end])
    after = end + 2
    if kind == 0x3A:  # ':' integer
        return int(line), after
    if kind == 0x2B:  # '+' simple string
        return line, after
    if kind == 0x2D:  # '-' error
        return RespError(line.decode("utf-8", "replace")), after
    if kind == 0x24:  # '$' bulk string
        length = int(line)
        if length < 0:
            return None, after
        if len(buf) < after + length + 2:
            return None
        return bytes(buf[after : after + length]), after + length + 2
    if kind == 0x2A:  # '*' array
        count = int(line)
        if count < 0:
            return None, after
        items: list[RespValue] = []
        for _ in range(count):
            parsed = _parse(buf, after)
            if parsed is None:
                return None
            item, after = parsed
            if isinstance(item, RespError):
                raise item
            items.append(item)
        return items, after
    raise RespConnectionError(f"unexpected reply type {kind!r}")


class _Connection(asyncio.Protocol):
    def __init__(self, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._buffer = bytearray()
        self._pending: collections.deque[tuple[asyncio.Future[RespValue], float]] = collections.deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._out: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RespConnectionError("connection to Redis lost"))

    def data_received(self, data: bytes) -> None:
        buf: bytes | bytearray
        if self._buffer:
            self._buffer += data
            buf = self._buffer
        else:
            buf = data
        pos = 0
        pending = self._pending
        size = len(buf)
        try:
            while pos < size:
                # The quota script's answer, three integers, is nearly every reply: matched without the parser.
                match = _THREE_INTS(buf, pos)
                if match is not None:
                    value: RespValue | RespError = [int(match[1]), int(match[2]), int(match[3])]
                    pos = match.end()
                else:
                    parsed = _parse(buf, pos)
                    if parsed is None:
                        break
                    value, pos = parsed
                if not pending:
                    raise RespConnectionError("reply without a request")
                future, _ = pending.popleft()
                if not future.done():
                    if isinstance(value, RespError):
                        future.set_exception(value)
                    else:
                        future.set_result(value)
        except (RespError, RespConnectionError, ValueError) as exc:
            # RespError here: an error nested in an array, which the one script never answers; treat the stream
            # as broken rather than guess.
            self._fail(RespConnectionError(f"unreadable reply from Redis: {exc}"))
            return
        if pos >= len(buf):
            self._buffer = bytearray()
        elif buf is self._buffer:
            del self._buffer[:pos]
        else:
            self._buffer = bytearray(buf[pos:])

    def call(self, command: bytes) -> asyncio.Future[RespValue]:
        future: asyncio.Future[RespValue] = self._loop.create_future()
        if self.closed or self.transport is None or self.transport.is_closing():
            future.set_exception(RespConnectionError("connection to Redis closed"))
            return future
        self._pending.append((future, self._loop.time() + self._timeout))
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(self._pending[0][1], self._check)
        out = self._out
        out.append(command)
        if len(out) == 1:
            # Calls made in the same loop iteration (concurrent requests) leave in one write.
            self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        out = self._out
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if not self.closed and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _check(self) -> None:
        """Fail everything when the oldest call is overdue: answers come in order, so the rest is stuck too."""
        self._watchdog = None
        if not self._pending:
            return
        oldest_deadline = self._pending[0][1]
        if self._loop.time() >= oldest_deadline:
            self._fail(RespConnectionError("Redis did not answer in time"))
            return
        self._watchdog = self._loop.call_at(oldest_deadline, self._check)

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self._pending:
            future, _ = self._pending.popleft()
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


class RespClient:
    """One pipelined connection to Redis, re-opened on the next call after it fails."""

    def __init__(self, url: str, *, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError("the quota Redis URL must be redis:// or rediss://")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "rediss" else None
        self._timeout = timeout
        setup: list[bytes] = []
        if parts.password is not None:
            user = unquote(parts.username) if parts.username else None
            password = unquote(parts.password).encode()
            auth = (b"AUTH", user.encode(), password) if user else (b"AUTH", password)
            setup.append(encode_command(*auth))
        db = parts.path.lstrip("/")
        if db and db != "0":
            setup.append(encode_command(b"SELECT", db.encode()))
        self._setup = setup
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(self._timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self._timeout), self._host, self._port, ssl=self._ssl
                )
                for command in self._setup:
                    await conn.call(command)
        except TimeoutError:
            raise RespConnectionError("timed out connecting to Redis") from None
        except OSError as exc:
            raise RespConnectionError(f"cannot connect to Redis: {exc.strerror or exc}") from None
        except RespError as exc:
            if conn is not None and conn.transport is not None:
                conn.transport.abort()
            raise RespConnectionError(f"Redis refused the connection setup: {exc}") from None
        return conn

    async def _connection(self) -> _Connection:
        connecting = self._connecting
        if connecting is None:
            # One connect at a time: concurrent callers wait for the same attempt.
            connecting = self._connecting = asyncio.ensure_future(self._connect())
            connecting.add_done_callback(self._connected)
        return await asyncio.shield(connecting)

    def _connected(self, attempt: asyncio.Future[_Connection]) -> None:
        self._connecting = None
        if not attempt.cancelled() and attempt.exception() is None:
            self._conn = attempt.result()

    def call(self, command: bytes) -> Awaitable[RespValue]:
        """Send one encoded command; await the result for its reply.

        While connected this is a bare future (no coroutine frame on the hot path).

        Raises (when awaited):
            RespError: Redis answered with an error.
            RespConnectionError: Redis could not be reached, closed the connection, or did not answer in time.
        """
        conn = self._conn
        if conn is None or conn.closed:
            return self._call_after_connecting(command)
        return conn.call(command)

    async def _call_after_connecting(self, command: bytes) -> RespValue:
        # One bound for connecting and the call together: a request never waits longer than the timeout.
        try:
            async with asyncio.timeout(self._timeout):
                conn = await self._connection()
                return await conn.call(command)
        except TimeoutError:
            raise RespConnectionError("Redis did not answer in time") from None

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.abort()
        self._conn = None
