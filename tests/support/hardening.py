"""Shared pieces of the hardening suite: raw-socket HTTP and scripted (misbehaving) upstreams (the running stack
is :mod:`support.stacks`'s).

* :func:`raw_request` / :func:`raw_exchange` speak HTTP/1.1 over a plain socket, so a test controls every byte
  (two ``Host`` headers, obs-fold, smuggling attempts) and sees a closed connection as such.
* :class:`ScriptedUpstream` is a TCP upstream in a thread that records every request it reads and then hangs,
  resets, closes or answers partially.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

# --- raw HTTP/1.1 over a socket ---------------------------------------------------------------------------


class RawResponse(NamedTuple):
    """One response read off a socket; ``status`` 0 means the connection ended before a response head."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool = True

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), None)

    def header_names(self) -> set[str]:
        """Every header name, lowercased."""
        return {key for key, _ in self.headers}

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


CLOSED = RawResponse(0, [], b"", complete=False)


def _parse_one(buffer: bytes, final: bool) -> tuple[RawResponse, int] | None:
    """One response from the start of ``buffer`` and the bytes it used, or None when more data is needed.

    With ``final`` (no more data will come) an incomplete response is returned with ``complete=False``.
    """
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return (RawResponse(0, [], buffer, complete=False), len(buffer)) if final and buffer else None
    lines = buffer[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    names = dict(headers)
    start = end + 4
    if status < 200 or status in (204, 304):
        return RawResponse(status, headers, b""), start
    if "chunked" in names.get("transfer-encoding", "").lower():
        body, pos = b"", start
        while True:
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                break
            size_text = buffer[pos:line_end].split(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                return RawResponse(status, headers, body, complete=False), len(buffer)
            if size == 0:
                trailer_end = buffer.find(b"\r\n\r\n", line_end)
                if trailer_end < 0:
                    break
                return RawResponse(status, headers, body), trailer_end + 4
            if len(buffer) < line_end + 2 + size + 2:
                break
            body += buffer[line_end + 2 : line_end + 2 + size]
            pos = line_end + 2 + size + 2
        return (RawResponse(status, headers, body, complete=False), len(buffer)) if final else None
    if "content-length" in names:
        length = int(names["content-length"])
        if len(buffer) - start >= length:
            return RawResponse(status, headers, buffer[start : start + length]), start + length
        return (RawResponse(status, headers, buffer[start:], complete=False), len(buffer)) if final else None
    # Delimited by the connection's end.
    return (RawResponse(status, headers, buffer[start:], complete=True), len(buffer)) if final else None


def raw_exchange(
    port: int, data: bytes, timeout: float = 10.0, responses: int | None = None, source: str | None = None
) -> list[RawResponse]:
    """Send ``data`` to ``127.0.0.1:port`` and read responses until the peer closes, ``responses`` complete ones
    arrived, or ``timeout`` seconds passed; a response cut short comes last with ``complete=False``.

    ``source`` binds the client end to another loopback address (say ``127.0.0.2``) to play another peer.
    """
    deadline = time.monotonic() + timeout
    found: list[RawResponse] = []
    buffer = b""
    address = (source, 0) if source else None
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=address) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        final = False
        while True:
            while buffer:
                parsed = _parse_one(buffer, final)
                if parsed is None:
                    break
                response, used = parsed
                found.append(response)
                buffer = buffer[used:]
            if final or (responses is not None and len(found) >= responses):
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                final = True
                continue
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                final = True
                continue
            except OSError:  # reset by the peer
                chunk = b""
            if not chunk:
                final = True
            buffer += chunk


def raw_request(port: int, data: bytes, timeout: float = 10.0, source: str | None = None) -> RawResponse:
    """Send one request's bytes and return the first response (``CLOSED`` when none came)."""
    found = raw_exchange(port, data, timeout, responses=1, source=source)
    return found[0] if found else CLOSED


def http_bytes(method: str, target: str, headers: list[tuple[str, str]] | list[tuple[bytes, bytes]],
               body: bytes = b"") -> bytes:  # fmt: skip
    """A request's bytes exactly as given: no header is added, merged or normalised."""
    out = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1")]
    for name, value in headers:
        raw_name = name if isinstance(name, bytes) else name.encode("latin-1")
        raw_value = value if isinstance(value, bytes) else value.encode("latin-1")
        out.append(raw_name + b": " + raw_value + b"\r\n")
    out.append(b"\r\n")
    return b"".join(out) + body


# --- scripted upstreams ---------------------------------------------------------------------------------


def read_request(conn: socket.socket, timeout: float = 2.0) -> bytes:
    """Read one request (head, then a Content-Length or chunked body) off ``conn``; b"" if none came."""
    conn.settimeout(timeout)
    data = b""
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lowered = head.lower()
        if b"transfer-encoding: chunked" in lowered:
            while not body.endswith(b"0\r\n\r\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                body += chunk
                data += chunk
        else:
            length = 0
            for line in lowered.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip() == b"content-length":
                    length = int(value.strip())
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                body += chunk
                data += chunk
    return data


Behaviour = Callable[[socket.socket, threading.Event], None]


def hang(conn: socket.socket, stop: threading.Event) -> None:
    """Never answer; keep the connection open until the upstream is closed."""
    stop.wait()


def reset(conn: socket.socket, stop: threading.Event) -> None:
    """Answer with a TCP RST."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def close(conn: socket.socket, stop: threading.Event) -> None:
    """Close cleanly (FIN) without a byte of answer."""


def send_then(data: bytes, then: Behaviour = close) -> Behaviour:
    """Send ``data`` (say, half a response), then behave as ``then``."""

    def behaviour(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(data)
        time.sleep(0.05)
        then(conn, stop)

    return behaviour


class Endless:
    """A hostile behaviour: send ``prefix``, then ``unit`` again and again until the gateway stops reading (the
    connection fails) or ``cap`` bytes are out; ``sent`` records the bytes each connection took."""

    def __init__(self, prefix: bytes, unit: bytes, cap: int = 64 * 1024 * 1024) -> None:
        self.prefix = prefix
        self.block = unit * max(1, 65536 // len(unit))
        self.cap = cap
        self.sent: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, conn: socket.socket, stop: threading.Event) -> None:
        total = 0
        conn.settimeout(10)  # a gateway that stops reading without closing ends the stream too
        try:
            conn.sendall(self.prefix)
            total = len(self.prefix)
            while total < self.cap and not stop.is_set():
                conn.sendall(self.block)
                total += len(self.block)
        except OSError:
            pass
        finally:
            with self._lock:
                self.sent.append(total)


def drip(prefix: bytes, unit: bytes, every: float = 0.2, seconds: float = 30.0) -> Behaviour:
    """Send ``prefix``, then ``unit`` every ``every`` seconds (a head that never ends, slowly)."""

    def behaviour(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(prefix)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not stop.wait(every):
            conn.sendall(unit)

    return behaviour


def pause_then(seconds: float, data: bytes, then: Behaviour = close) -> Behaviour:
    """Send nothing for ``seconds`` (a slow application), then ``data``, then behave as ``then``."""

    def behaviour(conn: socket.socket, stop: threading.Event) -> None:
        if not stop.wait(seconds):
            send_then(data, then)(conn, stop)

    return behaviour


class ScriptedUpstream:
    """A TCP upstream in a thread: reads each request, records it, then runs a behaviour and closes.

    ``behaviour`` is one :data:`Behaviour` for every request, or a dict choosing one by the request path's first
    segment (``{"hang": hang}`` serves ``/hang/...``; anything else is reset). One request per connection;
    ``requests`` holds the raw bytes read, in order of arrival.
    """

    def __init__(self, behaviour: Behaviour | dict[str, Behaviour]) -> None:
        self.behaviour = behaviour
        self.requests: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.getsockname()[1]}"

    def hits(self, prefix: bytes = b"") -> int:
        """How many requests starting with ``prefix`` (e.g. ``b"POST /pay "``) arrived."""
        with self._lock:
            return sum(1 for request in self.requests if request.startswith(prefix))

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            request = read_request(conn)
            if request:
                with self._lock:
                    self.requests.append(request)
                self._choose(request)(conn, self._stop)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def _choose(self, request: bytes) -> Behaviour:
        if not isinstance(self.behaviour, dict):
            return self.behaviour
        target = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b"/"
        segment = target.split(b"?")[0].split(b"/")[1].decode("latin-1") if b"/" in target else ""
        return self.behaviour.get(segment, reset)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._server.close()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.close()

    def __enter__(self) -> ScriptedUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
