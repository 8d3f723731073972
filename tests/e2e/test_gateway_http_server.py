"""The gateway's own HTTP/1.1 server and quota client, over raw sockets against real processes.

Pipelining, keep-alive rules, ``Expect: 100-continue``, slow and idle clients, malformed requests, worker
processes, graceful shutdown, pass-through mode, and the quota script surviving a Redis script flush.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from support.gateway_support import EchoUpstream, GatewayProcess
from support.platform import Installation, TenantServiceProcess, wait_until
from tenantry_common.jwt_keys import generate_signing_key


@dataclass
class Server:
    service: TenantServiceProcess
    echo: EchoUpstream
    gateway: GatewayProcess
    keys: str
    admin: httpx.Client
    key: str
    slug: str
    folder: Path


@pytest.fixture(scope="module")
def server(installation: Installation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("http-server")
    service = TenantServiceProcess(installation, folder / "tenant-service.log").start()
    echo = EchoUpstream(folder / "echo.log").start()
    keys = "k1:" + generate_signing_key()
    gateway = GatewayProcess(
        installation, service.url, echo.url, folder / "gateway.log", keys,
        REDIS_TIMEOUT="2", CLIENT_HEADER_TIMEOUT="1", CLIENT_KEEPALIVE_TIMEOUT="2",
    ).start()  # fmt: skip
    admin = service.client()
    response = admin.post("/admin/tenants", json={"slug": "srv", "name": "srv"})
    assert response.status_code == 201, response.text
    key = response.json()["api_key"]["key"]
    wait_until(
        lambda: httpx.get(gateway.url + "/x", headers={"X-API-Key": key}, timeout=5).status_code == 200, timeout=10
    )
    yield Server(service, echo, gateway, keys, admin, key, "srv", folder)
    admin.close()
    gateway.stop()
    echo.stop()
    service.stop()


@contextlib.contextmanager
def _connected(port: int) -> Iterator[socket.socket]:
    """A raw connection to ``port``, closed afterwards."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.settimeout(10)
        yield sock


def _read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response (Content-Length framed) from ``buffer`` + the socket; leaves what follows in ``buffer``."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full head: {bytes(buffer)!r}")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()

    def more() -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        return chunk

    if headers.get("transfer-encoding") == "chunked":
        # The upstream's body was not complete with its head: the gateway streams it chunk-coded.
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += more()
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            while len(rest) < size + 2:
                rest += more()
            body, rest = body + rest[:size], rest[size + 2 :]
            if size == 0:
                buffer[:] = rest
                return status, headers, body
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        rest += more()
    buffer[:] = rest[length:]
    return status, headers, rest[:length]


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def _get(server: Server, target: str = "/echo", extra: str = "", version: str = "1.1") -> bytes:
    return (
        f"GET {target} HTTP/{version}\r\nHost: {server.slug}.localhost\r\nX-API-Key: {server.key}\r\n{extra}\r\n"
    ).encode()


def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    with _connected(server.gateway.port) as sock:
        burst = b"".join(_get(server, f"/p{i}", f"X-Request-ID: req-{i}\r\n") for i in range(5))
        sock.sendall(burst)
        buffer = bytearray()
        for i in range(5):
            status, headers, body = _read_response(sock, buffer)
            assert status == 200
            assert headers["x-request-id"] == f"req-{i}"
            assert f'"path": "/p{i}"' in body.decode()


def test_http10_closes_unless_asked_to_keep_alive(server: Server) -> None:
    with _connected(server.gateway.port) as sock:
        sock.sendall(_get(server, version="1.0"))
        status, headers, _ = _read_response(sock, bytearray())
        assert status == 200
        assert headers.get("connection") == "close"
        assert _closed_by_peer(sock, 5)
    with _connected(server.gateway.port) as sock:
        buffer = bytearray()
        for _ in range(2):  # a response with a known length keeps an HTTP/1.0 keep-alive connection open
            sock.sendall(b"GET /_gateway/healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            status, headers, _ = _read_response(sock, buffer)
            assert status == 200
            assert headers.get("connection") == "keep-alive"
    with _connected(server.gateway.port) as sock:
        # An upstream body of unknown length cannot be chunk-coded to HTTP/1.0: then it ends with the connection.
        sock.sendall(_get(server, extra="Connection: keep-alive\r\n", version="1.0"))
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        if b"content-length:" in head.lower():
            assert b"connection: keep-alive" in head.lower()
        else:
            assert b"connection: close" in head.lower()
            while chunk := sock.recv(65536):
                body += chunk
            assert body.endswith(b"}")  # the whole JSON document, then the close


def test_connection_close_is_honoured(server: Server) -> None:
    with _connected(server.gateway.port) as sock:
        sock.sendall(_get(server, extra="Connection: close\r\n"))
        status, headers, _ = _read_response(sock, bytearray())
        assert status == 200
        assert headers.get("connection") == "close"
        assert _closed_by_peer(sock, 5)


def test_expect_100_continue_gets_an_interim_response(server: Server) -> None:
    with _connected(server.gateway.port) as sock:
        sock.sendall(
            f"POST /upload HTTP/1.1\r\nHost: {server.slug}.localhost\r\nX-API-Key: {server.key}\r\n"
            "Content-Type: text/plain\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        interim = sock.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"hello")
        buffer = bytearray(interim[len(b"HTTP/1.1 100 Continue\r\n\r\n") :])
        status, _, body = _read_response(sock, buffer)
        assert status == 200
        assert '"body": "hello"' in body.decode()
        assert "expect" not in body.decode().lower()  # hop-by-hop: the upstream never sees it


def test_a_client_that_never_finishes_its_head_is_disconnected(server: Server) -> None:
    with _connected(server.gateway.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: srv.localhost\r\nX-Slow: ")
        # CLIENT_HEADER_TIMEOUT is 1 s and the sweep runs every second; allow generous slack.
        assert _closed_by_peer(sock, 8)


def test_idle_keep_alive_connections_are_closed(server: Server) -> None:
    with _connected(server.gateway.port) as sock:
        sock.sendall(_get(server))
        assert _read_response(sock, bytearray())[0] == 200
        assert _closed_by_peer(sock, 10)  # CLIENT_KEEPALIVE_TIMEOUT is 2 s


def test_a_busy_connection_is_not_cut_by_the_header_timeout(server: Server) -> None:
    # The upstream takes longer than CLIENT_HEADER_TIMEOUT; the request in flight must still complete.
    response = httpx.get(
        server.gateway.url + "/slow?seconds=2.5",
        headers={"Host": f"{server.slug}.localhost", "X-API-Key": server.key},
        timeout=20,
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: srv.localhost\r\nBad Header\r\n\r\n", 400),
        (b"GET / HTTP/9.9\r\nHost: srv.localhost\r\n\r\n", 400),
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: srv.localhost\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: srv.localhost\r\n" + b"X-Big: " + b"b" * 40000 + b"\r\n\r\n", 431),
    ],
    ids=["garbage", "header-without-colon", "bad-version", "long-target", "huge-headers"],
)
def test_malformed_requests_get_a_problem_and_the_connection_closes(server: Server, raw: bytes, status: int) -> None:
    with _connected(server.gateway.port) as sock:
        sock.sendall(raw)
        got, headers, body = _read_response(sock, bytearray())
        assert got == status
        assert headers["content-type"] == "application/problem+json"
        assert b'"code"' in body
        assert headers.get("connection") == "close"
        assert _closed_by_peer(sock, 5)


def test_head_requests_get_no_body(server: Server) -> None:
    with _connected(server.gateway.port) as sock:
        sock.sendall(
            f"HEAD /echo HTTP/1.1\r\nHost: srv.localhost\r\nX-API-Key: {server.key}\r\n\r\n".encode() + _get(server)
        )
        buffer = bytearray()
        while b"\r\n\r\n" not in buffer:
            buffer += sock.recv(65536)
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        # The next bytes are the second response's head, not a body of the HEAD response.
        second = bytearray(rest)
        status, _, body = _read_response(sock, second)
        assert status == 200
        assert b'"method": "GET"' in body


def test_streamed_upstream_body_is_chunk_coded_to_the_client(server: Server) -> None:
    with httpx.stream(
        "GET",
        server.gateway.url + "/stream?chunks=20",
        headers={"Host": "srv.localhost", "X-API-Key": server.key},
        timeout=20,
    ) as response:
        assert response.status_code == 200
        assert response.headers.get("transfer-encoding") == "chunked"
        body = b"".join(response.iter_bytes())
    assert body == b"".join(f"chunk{i}\n".encode() for i in range(20))


def test_date_header_appears_once(server: Server) -> None:
    response = httpx.get(
        server.gateway.url + "/echo", headers={"Host": "srv.localhost", "X-API-Key": server.key}, timeout=10
    )
    assert len(response.headers.get_list("date")) == 1


def test_quota_script_survives_a_script_flush(server: Server, installation: Installation) -> None:
    client = redis.Redis.from_url(installation.redis_url)
    try:
        headers = {"Host": "srv.localhost", "X-API-Key": server.key}
        first = httpx.get(server.gateway.url + "/echo", headers=headers, timeout=10)
        client.script_flush()
        second = httpx.get(server.gateway.url + "/echo", headers=headers, timeout=10)
        assert first.status_code == second.status_code == 200
        # Still counted: the per-minute remaining count went down (unless the minute turned over in between).
        if "ratelimit-remaining" in first.headers:
            assert int(second.headers["ratelimit-remaining"]) in (
                int(first.headers["ratelimit-remaining"]) - 1,
                int(second.headers["ratelimit-limit"]) - 1,
            )
    finally:
        client.close()


def test_sigterm_lets_the_request_in_flight_finish(server: Server, installation: Installation, tmp_path: Path) -> None:
    gateway = GatewayProcess(
        installation, server.service.url, server.echo.url, tmp_path / "gw.log", server.keys, REDIS_TIMEOUT="2"
    ).start()
    try:
        headers = {"Host": "srv.localhost", "X-API-Key": server.key}
        wait_until(lambda: httpx.get(gateway.url + "/x", headers=headers, timeout=5).status_code == 200, timeout=10)
        result: dict[str, int] = {}

        def slow() -> None:
            result["status"] = httpx.get(gateway.url + "/slow?seconds=1.5", headers=headers, timeout=20).status_code

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.5)
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGTERM)
        thread.join(20)
        assert result.get("status") == 200
        assert gateway.proc.wait(timeout=20) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(gateway.url + "/x", headers=headers, timeout=2)
    finally:
        gateway.stop()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_worker_processes_serve_and_a_dead_worker_is_replaced(
    server: Server, installation: Installation, tmp_path: Path
) -> None:
    gateway = GatewayProcess(
        installation, server.service.url, server.echo.url, tmp_path / "gw.log", server.keys,
        REDIS_TIMEOUT="2", GATEWAY_WORKERS="2",
    ).start()  # fmt: skip
    try:
        assert gateway.proc is not None
        headers = {"Host": "srv.localhost", "X-API-Key": server.key}
        wait_until(lambda: httpx.get(gateway.url + "/x", headers=headers, timeout=5).status_code == 200, timeout=10)
        workers = _children(gateway.proc.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        wait_until(
            lambda: len(_children(gateway.proc.pid)) == 2 and workers[0] not in _children(gateway.proc.pid), timeout=10
        )
        for _ in range(20):
            assert httpx.get(gateway.url + "/x", headers=headers, timeout=5).status_code in (200, 401)
        wait_until(lambda: httpx.get(gateway.url + "/x", headers=headers, timeout=5).status_code == 200, timeout=10)
        gateway.proc.send_signal(signal.SIGTERM)
        assert gateway.proc.wait(timeout=30) == 0
        assert _children(gateway.proc.pid) == []
    finally:
        gateway.stop()


def test_passthrough_mode_resolves_and_forwards_without_credentials_or_redis(
    server: Server, installation: Installation, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(installation.redis_url)
    gateway = GatewayProcess(
        installation, server.service.url, server.echo.url, tmp_path / "gw.log", server.keys, GATEWAY_MODE="passthrough"
    ).start()
    try:
        wait_until(
            lambda: httpx.get(gateway.url + "/x", headers={"Host": "srv.localhost"}, timeout=5).status_code == 200,
            timeout=10,
        )
        first = httpx.get(gateway.url + "/echo", headers={"Host": "srv.localhost"}, timeout=10)
        tenant_id = next(value for name, value in first.json()["headers"] if name.lower() == "x-tenant-id")

        def quota_state() -> dict[bytes, bytes | None]:
            # The tenant's own Redis keys (its quota counters live there): commandstats would also count the
            # gateways' heartbeat script, which runs whatever the mode.
            return {key: client.dump(key) for key in client.scan_iter(match=f"t:{{{tenant_id}}}:*")}

        before = quota_state()
        response = httpx.get(gateway.url + "/echo", headers={"Host": "srv.localhost"}, timeout=10)
        assert response.status_code == 200
        seen = {name.lower() for name, _ in response.json()["headers"]}
        assert "x-tenant-id" in seen
        assert "x-tenant-token" not in seen
        assert quota_state() == before
        unknown = httpx.get(gateway.url + "/echo", headers={"Host": "nobody.localhost"}, timeout=10)
        assert unknown.status_code == 404
        assert httpx.get(gateway.url + "/echo", timeout=10).status_code == 404
        assert "passthrough_mode" in gateway.log()
    finally:
        gateway.stop()
        client.close()


def test_signing_keys_rotate_from_a_file_without_a_restart(
    server: Server, installation: Installation, tmp_path: Path
) -> None:
    import jwt as pyjwt

    k1, k2 = "k1:" + generate_signing_key(), "k2:" + generate_signing_key()
    keys_file = tmp_path / "signing-keys"
    keys_file.write_text(k1 + "\n")
    gateway = GatewayProcess(
        installation, server.service.url, server.echo.url, tmp_path / "gw.log", "unused:ignored",
        REDIS_TIMEOUT="2", JWT_SIGNING_KEYS_FILE=str(keys_file),
    ).start()  # fmt: skip
    headers = {"Host": "srv.localhost"}

    def token() -> str:
        response = httpx.post(gateway.url + "/_gateway/token", headers={"X-API-Key": server.key}, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()["access_token"]

    def status(access_token: str) -> int:
        bearer = {**headers, "Authorization": f"Bearer {access_token}"}
        return httpx.get(gateway.url + "/x", headers=bearer, timeout=10).status_code

    def kids() -> set[str]:
        return {key["kid"] for key in httpx.get(gateway.url + "/_gateway/jwks.json", timeout=10).json()["keys"]}

    try:
        wait_until(
            lambda: httpx.post(gateway.url + "/_gateway/token", headers={"X-API-Key": server.key}).status_code == 200,
            timeout=10,
        )
        old = token()
        assert pyjwt.get_unverified_header(old)["kid"] == "k1"
        assert status(old) == 200
        keys_file.write_text(f"{k2}\n{k1}\n")  # the new key signs, the old one is still accepted
        wait_until(lambda: kids() == {"k1", "k2"}, timeout=10)
        new = token()
        assert pyjwt.get_unverified_header(new)["kid"] == "k2"
        assert status(old) == status(new) == 200
        keys_file.write_text("this is not a key list")  # a broken file keeps the keys in use
        wait_until(lambda: "signing_keys_reload_failed" in gateway.log(), timeout=10)
        assert status(new) == 200
        keys_file.write_text(k2)  # the old key is retired
        wait_until(lambda: kids() == {"k2"}, timeout=10)
        assert status(old) == 401
        assert status(new) == 200
        assert gateway.proc is not None
        assert gateway.proc.poll() is None  # never restarted
    finally:
        gateway.stop()


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "fe80::1",
        "::ffff:169.254.169.254",
        "100.100.100.200",
        "fd00:ec2::254",
        "0.0.0.0",
        "224.0.0.1",
    ],
)
def test_forbidden_upstream_addresses(address: str) -> None:
    from gateway.upstream import forbidden_address

    assert forbidden_address(address)


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.1.2.3", "192.168.0.10", "203.0.113.7"])
def test_ordinary_upstream_addresses(address: str) -> None:
    from gateway.upstream import forbidden_address

    assert not forbidden_address(address)


def test_an_upstream_resolving_to_a_metadata_address_is_never_connected(
    server: Server, installation: Installation, tmp_path: Path
) -> None:
    # The admin API refuses such an upstream_url; a DEFAULT_UPSTREAM (or a DNS answer) is checked at connect time.
    gateway = GatewayProcess(
        installation, server.service.url, "http://169.254.169.254:80", tmp_path / "gw.log", server.keys,
        REDIS_TIMEOUT="2", UPSTREAM_CONNECT_TIMEOUT="10",
    ).start()  # fmt: skip
    try:
        headers = {"Host": "srv.localhost", "X-API-Key": server.key}
        wait_until(lambda: httpx.get(gateway.url + "/x", headers=headers, timeout=20).status_code != 401, timeout=20)
        started = time.monotonic()
        response = httpx.get(gateway.url + "/x", headers=headers, timeout=20)
        assert response.status_code == 502
        assert response.json()["code"] == "upstream_unavailable"
        assert time.monotonic() - started < 5  # refused before any connect attempt (whose timeout is 10 s)
        assert "upstream_address_refused" in gateway.log()
    finally:
        gateway.stop()


def test_an_upgrade_request_with_a_body_is_refused(server: Server) -> None:
    with _connected(server.gateway.port) as sock:
        smuggled = b"GET /smuggled HTTP/1.1\r\nHost: srv.localhost\r\n\r\n"
        sock.sendall(
            f"POST /upgrade-with-body HTTP/1.1\r\nHost: srv.localhost\r\nX-API-Key: {server.key}\r\n"
            f"Connection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: {len(smuggled)}\r\n\r\n".encode()
            + smuggled
        )
        status, headers, _ = _read_response(sock, bytearray())
        assert status == 400
        assert headers.get("connection") == "close"
        assert _closed_by_peer(sock, 5)
    seen = httpx.get(server.echo.url + "/upgrade-with-body", timeout=10).json()["count"]
    assert seen == 1  # only this probe: the gateway never forwarded the refused request


def test_an_endless_header_line_is_cut_off(server: Server) -> None:
    with _connected(server.gateway.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: srv.localhost\r\nX-Endless: ")
        with contextlib.suppress(OSError):
            for _ in range(40):  # 40 x 16 KiB without a line end
                sock.sendall(b"a" * 16384)
        data = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                data += chunk
        assert data == b"" or data.startswith(b"HTTP/1.1 431")


class _RawUpstream:
    """An upstream that answers every request with fixed bytes (one connection at a time)."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                data = b""
                with contextlib.suppress(OSError):
                    while True:
                        while b"\r\n\r\n" not in data:
                            chunk = conn.recv(65536)
                            if not chunk:
                                raise ConnectionError
                            data += chunk
                        data = data.partition(b"\r\n\r\n")[2]
                        conn.sendall(self.answer)

    def close(self) -> None:
        self.listener.close()


def test_interim_responses_and_upstream_ratelimit_headers(
    server: Server, installation: Installation, tmp_path: Path
) -> None:
    upstream = _RawUpstream(
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nRateLimit-Limit: 1\r\nRateLimit-Remaining: 0\r\n\r\nfinal"
    )
    gateway = GatewayProcess(
        installation, server.service.url, upstream.url, tmp_path / "gw.log", server.keys, REDIS_TIMEOUT="2"
    ).start()
    try:
        headers = {"Host": "srv.localhost", "X-API-Key": server.key}
        wait_until(lambda: httpx.get(gateway.url + "/x", headers=headers, timeout=10).status_code == 200, timeout=10)
        with httpx.Client(timeout=10) as client:
            for _ in range(3):  # the same pooled upstream connection: each answer is its own request's
                response = client.get(gateway.url + "/x", headers=headers)
                assert response.status_code == 200
                assert response.text == "final"
                # The gateway's RateLimit-* only (the tenant's limit, if its plan has one), never the upstream's.
                assert len(response.headers.get_list("ratelimit-limit")) <= 1
                assert response.headers.get("ratelimit-limit") != "1"
                assert response.headers.get("ratelimit-remaining") != "0"
    finally:
        gateway.stop()
        upstream.close()
