"""Hardening, group 8 — proxying: what crosses the gateway towards an upstream and back.

* Hop-by-hop headers (RFC 9110 §7.6.1: Connection and the names it lists, Keep-Alive, TE, Trailer, Upgrade,
  Proxy-*) never cross, in either direction.
* Request smuggling over a raw socket: every framing a front end and a back end could read differently
  (Content-Length with Transfer-Encoding, two lengths, a coding list not ending in chunked, whitespace before the
  colon, obs-fold, bad chunk sizes, a CL.TE prefix poisoning the next pipelined request) is refused with 400 or a
  closed connection — and the smuggled request, which carries a valid API key, never reaches the upstream (the
  echo upstream counts the requests it serves per path).
* Misbehaving upstreams (dead, silent, resetting, cut mid-response, stalled) give 502/504 within the timeout,
  a cut response is never passed off as complete, and a POST is never sent twice.
* Hostile upstreams (a head or trailers without end, one endless header line, a head dripped slowly) are cut at
  the response-head limits: 502 ``upstream_invalid`` (or 504 for the head timeout), the connection closed after a
  bounded read, the gateway's memory flat, and other tenants served meanwhile.
* ``X-Request-ID`` crosses (to the upstream, the response and the log) only when it is short and plain.
* A request path never climbs out of an ``upstream_url``'s path prefix: a dot segment in any spelling an
  upstream might decode into one is 400 ``invalid_path``.
* An ``upstream_url`` at link-local, metadata, unspecified or multicast addresses — in any spelling that still
  reaches them — is refused by the admin API even when the allow-list admits everything.

What tests/e2e/test_gateway.py already covers (X-Secret-Hop named in Connection, a dead DEFAULT_UPSTREAM, /slow,
one POST to a closing upstream, UPSTREAM_ALLOWLIST refusals in tests/integration) is extended, not repeated.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from support.assertions import assert_problem
from support.gateway_support import GatewayProcess
from support.hardening import (
    CLOSED,
    Behaviour,
    Endless,
    RawResponse,
    ScriptedUpstream,
    close,
    drip,
    hang,
    http_bytes,
    pause_then,
    raw_exchange,
    raw_request,
    reset,
    send_then,
)
from support.load import process_tree
from support.platform import Tenant, free_port, wait_until
from support.stacks import GatewayStack, echo_hits, seen_headers
from tenantry_common.problems import PROBLEM_MEDIA_TYPE

#: Timeouts of the strict gateway that faces the misbehaving upstreams.
UPSTREAM_TIMEOUT = 1.0
READ_TIMEOUT = 1.0
#: Slack on top of a timeout for a loaded CI machine; a hang would last far longer (the default timeouts are 30 s).
SLACK = 4.0
#: Lets the operator allow every host and address: the dangerous ones must be refused anyway.
PERMISSIVE_ALLOWLIST = "*,0.0.0.0/0,::/0"

pytestmark = pytest.mark.stack(
    service_env={"UPSTREAM_ALLOWLIST": PERMISSIVE_ALLOWLIST},
    gateways={
        "strict": {
            "UPSTREAM_TIMEOUT": str(UPSTREAM_TIMEOUT),
            "UPSTREAM_READ_TIMEOUT": str(READ_TIMEOUT),
            "UPSTREAM_CONNECT_TIMEOUT": "2",
        }
    },
)


@pytest.fixture(scope="module")
def acme(stack: GatewayStack) -> Tenant:
    """A tenant on the echo upstream, known to both gateways."""
    return stack.tenant("proxy", gateways=[stack.gateway, *stack.extra])


def strict(stack: GatewayStack) -> GatewayProcess:
    return stack.extra[0]


def get_raw(port: int, target: str, headers: list[tuple[bytes, bytes]], method: str = "GET",
            body: bytes = b"", timeout: float = 10) -> RawResponse:  # fmt: skip
    data = http_bytes(method, target, [(b"Host", b"127.0.0.1"), *headers, (b"Connection", b"close")], body)
    return raw_request(port, data, timeout=timeout)


# --- hop-by-hop headers ---------------------------------------------------------------------------------

HOP_BY_HOP = {"keep-alive", "te", "trailer", "upgrade", "proxy-authorization", "proxy-authenticate",
              "proxy-connection", "x-hop-a", "x-hop-b", "x-secret-hop"}  # fmt: skip


def test_hop_by_hop_request_headers_never_reach_the_upstream(stack: GatewayStack, acme: Tenant) -> None:
    headers = [
        (b"X-API-Key", acme.key.encode()),
        (b"Keep-Alive", b"timeout=5, max=100"),
        (b"TE", b"trailers"),
        (b"Trailer", b"X-Checksum"),
        (b"Upgrade", b"h2c"),
        (b"Proxy-Authorization", b"Basic cHJveHk6c2VjcmV0"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"X-Hop-A", b"1"),
        (b"X-Hop-B", b"2"),
        (b"X-Kept", b"yes"),
    ]
    data = http_bytes(
        "GET", "/hop", [(b"Host", b"127.0.0.1"), (b"Connection", b"keep-alive, X-HOP-A"), *headers,
                        (b"Connection", b"x-hop-b, close")],
    )  # fmt: skip
    response = raw_request(stack.gateway.port, data)
    assert response.status == 200, response
    seen = seen_headers(response.json())
    assert seen["x-kept"] == ["yes"]
    leaked = HOP_BY_HOP & set(seen)
    assert not leaked, {name: seen[name] for name in leaked}
    for value in seen.get("connection", []):
        assert value.lower() in ("keep-alive", "close"), seen["connection"]


def test_connection_upgrade_is_refused_or_stripped(stack: GatewayStack, acme: Tenant) -> None:
    """A WebSocket/h2c upgrade: the gateway proxies neither, so it must not pass the upgrade on half-done."""
    response = get_raw(
        stack.gateway.port, "/upgrade",
        [(b"X-API-Key", acme.key.encode()), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"),
         (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="), (b"Sec-WebSocket-Version", b"13")],
    )  # fmt: skip
    assert response.status != 101
    assert response.status < 500, response
    if response.status == 200:
        seen = seen_headers(response.json())
        assert "upgrade" not in seen
        assert all(v.lower() in ("keep-alive", "close") for v in seen.get("connection", [])), seen


UPSTREAM_HOP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 2\r\n"
    b"Connection: keep-alive, X-Secret-Hop\r\n"
    b"Keep-Alive: timeout=5, max=100\r\n"
    b'Proxy-Authenticate: Basic realm="upstream"\r\n'
    b"Proxy-Connection: keep-alive\r\n"
    b"Trailer: X-Checksum\r\n"
    b"Upgrade: h2c\r\n"
    b"X-Secret-Hop: leak\r\n"
    b"X-Kept: yes\r\n"
    b"\r\n"
    b"ok"
)
UPSTREAM_CHUNKED_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Trailer: X-Checksum\r\n"
    b"\r\n"
    b"6\r\nhello \r\n5\r\nworld\r\n0\r\nX-Checksum: abc\r\n\r\n"
)


@pytest.fixture(scope="module")
def scripted(stack: GatewayStack) -> Iterator[tuple[ScriptedUpstream, Tenant]]:
    """One scripted upstream, its behaviour chosen by the first path segment, and a tenant routed to it."""
    routes: dict[str, Behaviour] = {
        "hops": send_then(UPSTREAM_HOP_RESPONSE),
        "chunked": send_then(UPSTREAM_CHUNKED_RESPONSE),
        "hang": hang,
        "reset": reset,
        "close": close,
        "half-head": send_then(b"HTTP/1.1 200 OK\r\nContent-Ty"),
        "garbage": send_then(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
        "half-body": send_then(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10),
        "half-chunked": send_then(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"),
        "stall-body": send_then(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10, hang),
    }
    upstream = ScriptedUpstream(routes)
    tenant = stack.tenant("scripted", gateways=[stack.gateway, *stack.extra], upstream_url=upstream.url)
    yield upstream, tenant
    upstream.close()


def test_hop_by_hop_response_headers_never_reach_the_client(
    stack: GatewayStack, scripted: tuple[ScriptedUpstream, Tenant]
) -> None:
    _, tenant = scripted
    response = get_raw(stack.gateway.port, "/hops", [(b"X-API-Key", tenant.key.encode())])
    assert response.status == 200, response
    assert response.body == b"ok"
    assert response.header("x-kept") == "yes"
    leaked = HOP_BY_HOP & response.header_names()
    assert not leaked, {name: response.header(name) for name in leaked}
    for name, value in response.headers:
        if name == "connection":
            assert value.lower() in ("keep-alive", "close"), value


def test_chunked_upstream_response_with_trailers_arrives_whole(
    stack: GatewayStack, scripted: tuple[ScriptedUpstream, Tenant]
) -> None:
    _, tenant = scripted
    response = get_raw(stack.gateway.port, "/chunked", [(b"X-API-Key", tenant.key.encode())])
    assert response.status == 200, response
    assert response.complete
    assert response.body == b"hello world"
    assert "trailer" not in response.header_names()


# --- X-Request-ID ---------------------------------------------------------------------------------------

GENERATED_ID = re.compile(r"[0-9a-f]{32}")
KEPT_IDS = [b"req-123", b"a.b:c_d-E9", b"0" * 128, b"4bf92f3577b34da6a3ce929d0e0e4736", b"1-5759e988-bd862e3fe1be46a9"]
REPLACED_IDS = [
    b"x" * 129, b"", b" ", b"abc<script>alert(1)</script>", b'"quoted"', b"{a0b1}", b"../../etc/passwd",
    b"a b", b"a\tb", b"a%0d%0ab", b"id\\n", b"caf\xe9", b"a/b", b"a=b;c", b"a,b", b"${jndi:ldap://x/a}",
    b'{"level":"error","event":"forged"}',
]  # fmt: skip


def test_a_safe_client_request_id_is_kept_and_any_other_replaced_never_refused(
    stack: GatewayStack, acme: Tenant
) -> None:
    """X-Request-ID reaches the upstream, the response and the access log only when it is at most 128 characters
    of ``A-Z a-z 0-9 . _ : -``; anything else (too long, markup, quotes, spaces, tabs, encoded line breaks, JSON
    meant for the log, non-ASCII) is replaced by a new id, and the request is served as usual."""
    key = (b"X-API-Key", acme.key.encode())
    for value in KEPT_IDS + REPLACED_IDS:
        response = get_raw(stack.gateway.port, "/request-id", [key, (b"X-Request-ID", value)])
        assert response.status == 200, (value, response)
        seen = seen_headers(response.json())
        assert len(seen["x-request-id"]) == 1, seen["x-request-id"]
        forwarded = seen["x-request-id"][0]
        assert response.header("x-request-id") == forwarded
        if value in KEPT_IDS:
            assert forwarded == value.decode(), value
        else:
            assert GENERATED_ID.fullmatch(forwarded), (value, forwarded)
    # Two of them: the first wins when it is safe; only one ever reaches the upstream.
    response = get_raw(stack.gateway.port, "/request-id", [key, (b"X-Request-ID", b"first"), (b"X-Request-ID", b"2")])
    assert seen_headers(response.json())["x-request-id"] == ["first"]
    # The access log has the replacement, never what the client sent.
    marker = secrets.token_hex(4)
    forged = f'{marker}","event":"forged'.encode()
    response = get_raw(stack.gateway.port, "/request-id", [key, (b"X-Request-ID", forged)])
    replaced = response.header("x-request-id")
    assert replaced is not None
    assert GENERATED_ID.fullmatch(replaced)
    wait_until(lambda: replaced in stack.gateway.log(), timeout=5)
    assert marker not in stack.gateway.log()


# --- request smuggling ----------------------------------------------------------------------------------


@dataclass
class Smuggle:
    """One attempt: the head lines after the request line and Host, then the raw body."""

    name: str
    headers: list[bytes]
    body: bytes
    #: The fault is in the head, so the gateway knows before forwarding anything; a bad chunk only shows up
    #: while the body streams, after the request head may already be on its way upstream (then aborted).
    in_head: bool = True


def smuggled_request(path: str, key: str) -> bytes:
    """A complete request with a valid key: if anything reads it as a request, the echo upstream counts it."""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n\r\n".encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def smuggle_cases(inner: bytes) -> list[Smuggle]:
    cl_te_body = b"0\r\n\r\n" + inner
    te_cl_body = chunk(inner) + b"0\r\n\r\n"
    te_cl_prefix = b"%x\r\n" % len(inner)
    length = b"Content-Length: %d" % len(cl_te_body)
    return [
        Smuggle("CL.TE", [length, b"Transfer-Encoding: chunked"], cl_te_body),
        Smuggle("TE.CL", [b"Transfer-Encoding: chunked", b"Content-Length: %d" % len(te_cl_prefix)], te_cl_body),
        Smuggle("two different Content-Length", [b"Content-Length: 5", length], b"AAAAA" + inner),
        Smuggle("two Content-Length, long first", [length, b"Content-Length: 5"], b"AAAAA" + inner),
        Smuggle("Content-Length list", [b"Content-Length: 5, %d" % len(inner)], b"AAAAA" + inner),
        Smuggle("Transfer-Encoding: chunked, identity", [b"Transfer-Encoding: chunked, identity"], cl_te_body),
        Smuggle(
            "two Transfer-Encoding headers", [b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity"], cl_te_body
        ),
        Smuggle("Transfer-Encoding: identity", [b"Transfer-Encoding: identity"], inner),
        Smuggle("space before the colon", [length, b"Transfer-Encoding : chunked"], cl_te_body),
        Smuggle("tab before the value", [length, b"Transfer-Encoding:\tchunked"], cl_te_body),
        Smuggle("xchunked", [length, b"Transfer-Encoding: xchunked"], cl_te_body),
        Smuggle("obs-fold Transfer-Encoding", [length, b"Transfer-Encoding:\r\n chunked"], cl_te_body),
        Smuggle("obs-fold Content-Length", [b"Transfer-Encoding: chunked", b"Content-Length:\r\n 5"], cl_te_body),
        Smuggle("bare CR in a header", [length, b"X-Pad: a\rTransfer-Encoding: chunked"], cl_te_body),
        Smuggle("signed Content-Length", [b"Content-Length: +%d" % len(inner)], inner),
        Smuggle("negative Content-Length", [b"Content-Length: -1"], inner),
        *(
            Smuggle(name, [b"Transfer-Encoding: chunked"], body + b"0\r\n\r\n" + inner, in_head=False)
            for name, body in (
                ("non-numeric chunk size", b"zz\r\nabc\r\n"),
                ("negative chunk size", b"-5\r\nabcde\r\n"),
                ("0x chunk size", b"0x5\r\nabcde\r\n"),
                ("overflowing chunk size", b"1" + b"0" * 16 + b"\r\nabcde\r\n"),
                ("chunk longer than its size", b"3\r\nabcdef\r\n"),
            )
        ),
    ]


SMUGGLE_NAMES = [case.name for case in smuggle_cases(b"")]


@pytest.mark.parametrize("name", SMUGGLE_NAMES)
def test_smuggling_attempt_is_refused_and_never_reaches_the_upstream(
    stack: GatewayStack, acme: Tenant, name: str
) -> None:
    marker = secrets.token_hex(4)
    outer, inner_path = f"/outer-{marker}", f"/smuggled-{marker}"
    case = next(c for c in smuggle_cases(smuggled_request(inner_path, acme.key)) if c.name == name)
    head = f"POST {outer} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {acme.key}\r\n".encode()
    data = head + b"".join(line + b"\r\n" for line in case.headers) + b"\r\n" + case.body
    responses = raw_exchange(stack.gateway.port, data, timeout=5)
    first = responses[0] if responses else CLOSED
    assert first.status in (0, 400, 501), (name, first)
    assert len(responses) <= 1, f"{name}: a second response came back on the connection: {responses[1:]}"
    time.sleep(0.2)  # anything the gateway forwarded has reached the echo upstream by now
    assert echo_hits(stack, inner_path) == 0, f"{name}: the smuggled request reached the upstream"
    if case.in_head:
        assert echo_hits(stack, outer) == 0, f"{name}: the ambiguous request was forwarded"


def test_cl_te_prefix_never_poisons_the_next_pipelined_request(stack: GatewayStack, acme: Tenant) -> None:
    """The classic CL.TE attack: a body that a TE reader ends early leaves ``GET /smuggled ... X-Ignore:`` on
    the connection, and the victim's next request line becomes that header's value."""
    marker = secrets.token_hex(4)
    prefix = f"GET /smuggled-{marker} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {acme.key}\r\nX-Ignore: ".encode()
    body = b"0\r\n\r\n" + prefix
    attack = (
        f"POST /outer-{marker} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {acme.key}\r\n"
        f"Content-Length: {len(body)}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode() + body
    victim_headers = [(b"Host", b"127.0.0.1"), (b"X-API-Key", acme.key.encode()), (b"Connection", b"close")]
    victim = http_bytes("GET", f"/victim-{marker}", victim_headers)
    responses = raw_exchange(stack.gateway.port, attack + victim, timeout=5)
    assert responses, "no answer at all"
    assert responses[0].status == 400, responses[0]
    for later in responses[1:]:  # the connection should close after the 400; if it did not, no mix-up at least
        assert later.status == 200, later
        assert later.json()["path"] == f"/victim-{marker}", later
    time.sleep(0.2)
    assert echo_hits(stack, f"/smuggled-{marker}") == 0
    assert echo_hits(stack, f"/outer-{marker}") == 0


def test_pipelined_requests_are_answered_in_order(stack: GatewayStack, acme: Tenant) -> None:
    """The control for the smuggling tests: honest pipelining works, one response per request, in order."""
    key = (b"X-API-Key", acme.key.encode())
    paths = [f"/pipe-{i}-{secrets.token_hex(3)}" for i in range(3)]
    data = http_bytes("GET", paths[0], [(b"Host", b"x"), key])
    data += http_bytes("POST", paths[1], [(b"Host", b"x"), key, (b"Transfer-Encoding", b"chunked")],
                       chunk(b"abc") + b"0\r\n\r\n")  # fmt: skip
    data += http_bytes("GET", paths[2], [(b"Host", b"x"), key, (b"Connection", b"close")])
    responses = raw_exchange(stack.gateway.port, data, timeout=10)
    assert [r.status for r in responses] == [200, 200, 200], responses
    assert [r.json()["path"] for r in responses] == paths
    assert responses[1].json()["body"] == "abc"


def test_gateway_keeps_serving_after_malformed_framing(stack: GatewayStack, acme: Tenant) -> None:
    assert httpx.get(stack.gateway.url + "/_gateway/healthz", timeout=5).status_code == 200
    response = httpx.post(stack.gateway.url + "/after", content=b"fine", headers={"X-API-Key": acme.key}, timeout=10)
    assert response.status_code == 200
    assert response.json()["body"] == "fine"


# --- misbehaving upstreams ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_dead_upstream_gives_502_and_other_tenants_are_unaffected(
    stack: GatewayStack, acme: Tenant, method: str
) -> None:
    dead = stack.tenant(
        f"dead-{method.lower()}", gateways=[strict(stack)], upstream_url=f"http://127.0.0.1:{free_port()}"
    )
    started = time.monotonic()
    response = httpx.request(method, strict(stack).url + "/x", content=b"body" if method == "POST" else None,
                             headers={"X-API-Key": dead.key}, timeout=30)  # fmt: skip
    assert time.monotonic() - started < 2 + SLACK
    assert_problem(response, 502, "upstream_unavailable")
    assert httpx.get(strict(stack).url + "/x", headers={"X-API-Key": acme.key}, timeout=10).status_code == 200


FAILURES = [
    # route, expected status and code
    ("hang", 504, "upstream_timeout"),
    ("reset", 502, "upstream_unavailable"),
    ("close", 502, "upstream_unavailable"),
    ("half-head", 502, "upstream_unavailable"),
    ("garbage", 502, "upstream_invalid"),
]


@pytest.mark.parametrize(("route", "status", "code"), FAILURES, ids=[f[0] for f in FAILURES])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_failing_upstream_gives_a_problem_in_time_and_a_post_is_sent_once(
    stack: GatewayStack, scripted: tuple[ScriptedUpstream, Tenant], route: str, status: int, code: str, method: str
) -> None:
    upstream, tenant = scripted
    path = f"/{route}/{method.lower()}-{secrets.token_hex(3)}"
    headers = [(b"X-API-Key", tenant.key.encode())]
    body = b"once" if method == "POST" else b""
    if body:
        headers.append((b"Content-Length", b"%d" % len(body)))
    started = time.monotonic()
    response = get_raw(strict(stack).port, path, headers, method=method, body=body, timeout=30)
    elapsed = time.monotonic() - started
    assert_problem(response, status, code)
    assert elapsed < UPSTREAM_TIMEOUT + SLACK, elapsed
    time.sleep(0.2)  # a retry, if any, would have arrived by now
    hits = upstream.hits(f"{method} {path} ".encode())
    if method == "POST":
        assert hits == 1, f"the POST reached the upstream {hits} times"
    else:
        # An idempotent request may be retried once when its connection died before any answer (never on timeout).
        assert hits == 1 or (route != "hang" and hits == 2), hits


@pytest.mark.parametrize("route", ["half-body", "half-chunked", "stall-body"])
def test_response_cut_short_is_never_delivered_as_complete(
    stack: GatewayStack, scripted: tuple[ScriptedUpstream, Tenant], route: str
) -> None:
    """Once the head is out, a failure can only be signalled by ending the connection without a complete body
    — never by closing the frame as if the body were whole. A stalled body ends within the read timeout."""
    upstream, tenant = scripted
    path = f"/{route}/{secrets.token_hex(3)}"
    started = time.monotonic()
    response = get_raw(strict(stack).port, path, [(b"X-API-Key", tenant.key.encode())], timeout=30)
    assert time.monotonic() - started < UPSTREAM_TIMEOUT + READ_TIMEOUT + SLACK
    if response.status == 200:
        assert not response.complete, f"{route}: a truncated body was framed as complete: {response.body!r}"
    else:
        assert_problem(response, 502, "upstream_unavailable")
    assert upstream.hits(f"GET {path} ".encode()) == 1


# --- hostile upstreams: response heads and trailers without end --------------------------------------------

#: Bytes a hostile upstream sends at most: far past every limit, small enough not to endanger the test machine.
HOSTILE_CAP = 64 * 1024 * 1024
#: A gateway that stops reading at its limits has taken at most its own bound plus what the kernel's socket
#: buffers absorbed (a few MiB on loopback); one that buffers without limit takes all of HOSTILE_CAP.
CUT_EARLY = 16 * 1024 * 1024
FLOOD_LINE = b"X-Flood: " + b"a" * 32 + b"\r\n"
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"


def hostile_routes() -> dict[str, Endless]:
    """Each way of never ending a response head or its trailers."""
    return {
        "endless-headers": Endless(b"HTTP/1.1 200 OK\r\n", FLOOD_LINE, HOSTILE_CAP),
        "huge-header": Endless(b"HTTP/1.1 200 OK\r\nX-Huge: ", b"a", HOSTILE_CAP),
        "huge-status": Endless(b"HTTP/1.1 200 ", b"O", HOSTILE_CAP),
        "endless-interim": Endless(b"", b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n", HOSTILE_CAP),
        "endless-trailers": Endless(CHUNKED_HEAD, b"X-Trailer: " + FLOOD_LINE, HOSTILE_CAP),
        "huge-trailer": Endless(CHUNKED_HEAD + b"X-Huge: ", b"a", HOSTILE_CAP),
    }


HEAD_FLOODS = ["endless-headers", "huge-header", "huge-status", "endless-interim"]
TRAILER_FLOODS = ["endless-trailers", "huge-trailer"]
SLOW_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\nslow"


@dataclass
class Hostile:
    """A scripted upstream whose routes are the hostile streams, and a tenant routed to it."""

    upstream: ScriptedUpstream
    streams: dict[str, Endless]
    tenant: Tenant


@pytest.fixture(scope="module")
def hostile(stack: GatewayStack) -> Iterator[Hostile]:
    streams = hostile_routes()
    routes: dict[str, Behaviour] = {
        **streams,
        "garbage": send_then(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
        "drip": drip(b"HTTP/1.1 200 OK\r\n", b"X-Drip: 1\r\n"),
        "slow": pause_then(2.0, SLOW_ANSWER),
        "interim-then-slow": send_then(b"HTTP/1.1 100 Continue\r\n\r\n", pause_then(2.0, SLOW_ANSWER)),
    }
    upstream = ScriptedUpstream(routes)
    tenant = stack.tenant("hostile", gateways=[stack.gateway, *stack.extra], upstream_url=upstream.url)
    yield Hostile(upstream, streams, tenant)
    upstream.close()


@contextlib.contextmanager
def own_gateway(stack: GatewayStack, name: str, **env: str) -> Iterator[GatewayProcess]:
    """A gateway of the test's own on the stack's tenant-service, stopped when the test ends."""
    gateway = GatewayProcess(
        stack.installation, stack.service.url, stack.echo.url, stack.folder / f"{name}.log", stack.signing_keys,
        **{"REDIS_TIMEOUT": "2", **env},
    ).start()  # fmt: skip
    try:
        yield gateway
    finally:
        gateway.stop()


def assert_cut(response: RawResponse, route: str) -> None:
    """A head flood is a 502 ``upstream_invalid``; a trailer flood, once the head and body are out, may only end
    the connection before the body's last chunk (never a complete body)."""
    if route in TRAILER_FLOODS and response.status == 200:
        assert not response.complete, f"{route}: the body was framed as complete"
        assert response.body == b"hello"
        assert not {"x-trailer", "x-huge"} & response.header_names()
    else:
        assert_problem(response, 502, "upstream_invalid")


@pytest.mark.parametrize("route", HEAD_FLOODS + TRAILER_FLOODS)
def test_an_endless_response_head_or_trailer_is_cut_at_the_limit_with_502(
    stack: GatewayStack, hostile: Hostile, acme: Tenant, route: str
) -> None:
    stream = hostile.streams[route]
    before = len(stream.sent)
    started = time.monotonic()
    response = get_raw(stack.gateway.port, f"/{route}/x", [(b"X-API-Key", hostile.tenant.key.encode())], timeout=30)
    assert time.monotonic() - started < SLACK
    assert_cut(response, route)
    wait_until_sent(stream, before + 1)
    assert stream.sent[-1] < CUT_EARLY, f"{route}: the gateway read {stream.sent[-1]} bytes before closing"
    assert httpx.get(stack.gateway.url + "/after", headers={"X-API-Key": acme.key}, timeout=10).status_code == 200


def wait_until_sent(stream: Endless, count: int, timeout: float = 15.0) -> None:
    """Wait until ``count`` connections of ``stream`` have ended on the upstream's side."""
    deadline = time.monotonic() + timeout
    while len(stream.sent) < count:
        assert time.monotonic() < deadline, "the hostile upstream is still sending: the gateway did not close"
        time.sleep(0.05)


def worker_rss_kib(gateway: GatewayProcess) -> dict[int, int]:
    """``VmRSS`` of each worker process of a multi-worker gateway (the supervisor serves no request)."""
    assert gateway.proc is not None
    rss = {}
    for pid in process_tree(gateway.proc.pid)[1:]:
        status = Path(f"/proc/{pid}/status").read_text()
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert found, status
        rss[pid] = int(found.group(1))
    return rss


#: A worker's resident memory after the hostile requests may exceed its idle value by this fraction. Idle is
#: about 60 MiB, so 10 % is about 6 MiB: well above the noise of a warmed-up worker (under 1 MiB), and far below
#: what one unbounded request used to take (hundreds of MiB to 1.5 GiB). No absolute floor is needed.
RSS_GROWTH = 0.10


def test_hostile_upstreams_leave_gateway_memory_flat_and_other_tenants_served(
    stack: GatewayStack, hostile: Hostile
) -> None:
    """Several requests of every flood against a fresh two-worker gateway with the default limits: each worker's
    RSS stays within 10 % of its idle value (measured after a warm-up), and another tenant gets 200 throughout."""
    plan = f"h-unmetered-{secrets.token_hex(3)}"
    limits = {"requests_per_minute": 10**6, "requests_per_day": 10**9}
    assert stack.admin.put(f"/admin/plans/{plan}", json={"limits": limits}).status_code == 200
    neighbour = stack.tenant("neighbour", plan=plan)
    with own_gateway(stack, "memory", GATEWAY_WORKERS="2") as gateway:
        memory_stays_flat(gateway, hostile, neighbour)


def memory_stays_flat(gateway: GatewayProcess, hostile: Hostile, neighbour: Tenant) -> None:
    normal = {"X-API-Key": neighbour.key}
    hostile_key = [(b"X-API-Key", hostile.tenant.key.encode())]
    # Warm-up: ordinary traffic on many connections (both workers) and the 502 path, so the idle value is that of
    # a worker that has run every code path the measurement exercises.
    for _ in range(3):
        for _ in range(40):
            assert httpx.get(gateway.url + "/warm", headers=normal, timeout=10).status_code == 200
        for _ in range(4):
            assert_problem(get_raw(gateway.port, "/garbage/warm", hostile_key), 502, "upstream_invalid")
    time.sleep(1.0)
    idle = worker_rss_kib(gateway)
    assert len(idle) == 2, idle

    statuses: list[int] = []
    done = threading.Event()

    def other_tenant() -> None:
        with httpx.Client(base_url=gateway.url, headers=normal, timeout=10) as client:
            while not done.is_set():
                statuses.append(client.get("/meanwhile").status_code)
                time.sleep(0.01)

    sent_before = {route: len(stream.sent) for route, stream in hostile.streams.items()}
    thread = threading.Thread(target=other_tenant, daemon=True)
    thread.start()
    try:
        rounds = 3
        for _ in range(rounds):
            for route in HEAD_FLOODS + TRAILER_FLOODS:
                served = len(statuses)
                response = get_raw(gateway.port, f"/{route}/rss", hostile_key, timeout=30)
                assert_cut(response, route)
                wait_until(lambda served=served: len(statuses) > served, timeout=10)  # served meanwhile
    finally:
        done.set()
        thread.join(timeout=15)
    for route, stream in hostile.streams.items():
        wait_until_sent(stream, sent_before[route] + rounds)
        assert max(stream.sent) < CUT_EARLY, (route, stream.sent)
    assert statuses, "the other tenant was not served at all"
    assert set(statuses) == {200}, sorted(set(statuses))
    assert httpx.get(gateway.url + "/after", headers=normal, timeout=10).status_code == 200
    time.sleep(1.0)
    after = worker_rss_kib(gateway)
    grown = {pid: f"{idle[pid] / 1024:.1f} -> {after[pid] / 1024:.1f} MiB" for pid in idle}
    for pid, kib in idle.items():
        assert after[pid] <= kib * (1 + RSS_GROWTH), f"worker memory grew: {grown}"


def test_an_upstream_dripping_its_head_gets_504_within_the_head_timeout(stack: GatewayStack, hostile: Hostile) -> None:
    """``UPSTREAM_HEAD_TIMEOUT`` runs from the first byte of a response head, apart from ``UPSTREAM_TIMEOUT``: a head
    dripped a line at a time is cut after it, while an application that is slow to *start* answering (with or
    without a ``100 Continue`` first) still gets the whole ``UPSTREAM_TIMEOUT``."""
    key = [(b"X-API-Key", hostile.tenant.key.encode())]
    with own_gateway(stack, "head-timeout", UPSTREAM_HEAD_TIMEOUT="1", UPSTREAM_TIMEOUT="30") as gateway:
        started = time.monotonic()
        response = get_raw(gateway.port, "/drip/x", key, timeout=30)
        assert time.monotonic() - started < 1 + SLACK
        assert_problem(response, 504, "upstream_timeout")
        for route in ("slow", "interim-then-slow"):
            response = get_raw(gateway.port, f"/{route}/x", key, timeout=30)
            assert response.status == 200, (route, response)
            assert response.body == b"slow"


# --- upstream_url: its path prefix ---------------------------------------------------------------------------

#: What an upstream decodes (percent-encoding, twice; backslashes; ``;`` parameters) into a dot segment.
PREFIX_ESCAPES = [
    "/../admin", "/a/../../admin", "/./admin", "/%2e%2e/admin", "/%2E%2E/admin", "/%2e%2E/admin", "/.%2e/admin",
    "/%2e./admin", "/..%2fadmin", "/..%2Fadmin", "/%2e%2e%2fadmin", "/a%2f..%2f..%2fadmin", "/..\\admin",
    "/..%5cadmin", "/%252e%252e/admin", "/..;/admin", "/x/..",
]  # fmt: skip
#: Dots, encodings and backslashes inside segments: forwarded under the prefix, byte for byte.
PREFIX_SAFE = ["/x", "/.well-known/acme", "/a..b/c", "/a/...", "/file.tar.gz", "/files/a%2Fb", "/a\\b", "/%2e%2e%2e"]


@pytest.fixture(scope="module")
def prefixed(stack: GatewayStack) -> Tenant:
    """A tenant whose upstream_url has a path prefix (on the echo upstream, which reports the path it got)."""
    return stack.tenant("prefix", upstream_url=stack.echo.url + "/base/inner")


@pytest.mark.parametrize("path", PREFIX_SAFE)
def test_a_path_with_dots_inside_segments_is_forwarded_under_the_prefix(
    stack: GatewayStack, prefixed: Tenant, path: str
) -> None:
    response = get_raw(stack.gateway.port, path, [(b"X-API-Key", prefixed.key.encode())])
    assert response.status == 200, response
    assert response.json()["raw_path"] == "/base/inner" + path


@pytest.mark.parametrize("path", PREFIX_ESCAPES)
def test_a_dot_segment_in_any_encoding_gets_400_and_never_leaves_the_prefix(
    stack: GatewayStack, prefixed: Tenant, path: str
) -> None:
    key = (b"X-API-Key", prefixed.key.encode())
    assert_problem(get_raw(stack.gateway.port, path, [key]), 400, "invalid_path")
    # The same through the path source, and with the query string kept apart.
    assert_problem(get_raw(stack.gateway.port, f"/t/{prefixed.slug}{path}", [key]), 400, "invalid_path")
    assert_problem(get_raw(stack.gateway.port, f"{path}?next=/x", [key]), 400, "invalid_path")


def test_an_asterisk_target_is_not_glued_onto_the_prefix(stack: GatewayStack, prefixed: Tenant) -> None:
    """``OPTIONS *`` would become ``/base/inner*``, a sibling of the prefix."""
    response = get_raw(stack.gateway.port, "*", [(b"X-API-Key", prefixed.key.encode())], method="OPTIONS")
    assert_problem(response, 400, "invalid_path")


# --- upstream_url: link-local and metadata addresses ----------------------------------------------------

FORBIDDEN_UPSTREAMS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.169.254.:80/",
    "http://169.254.0.1:8080/",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]:8080/",
    "http://[fd00:ec2::254]/",
    "http://100.100.100.200/latest/meta-data/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://METADATA.google.internal./",
    "http://metadata/",
    "http://instance-data/",
    "http://0.0.0.0:8080/",
    "http://0/",
    "http://[::]/",
    "http://224.0.0.1/",
    "http://239.255.255.250:1900/",
    "http://[ff02::1]/",
    # Other spellings of 169.254.169.254 that the resolver still understands.
    "http://2852039166/",
    "http://0xa9fea9fe/",
    "http://0xa9.0xfe.0xa9.0xfe/",
    "http://0251.0376.0251.0376/",
    "http://169.254.43518/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:a9fe:a9fe]/",
]
ALLOWED_UPSTREAMS = [
    "http://127.0.0.1:9000/base",
    "http://localhost:9000",
    "http://[::1]:9000",
    "http://10.1.2.3:8080",
    "https://upstream.example.com/api",
]
REFUSAL_CODES = {"upstream_not_allowed", "validation_error"}


@pytest.fixture(scope="module")
def patch_target(stack: GatewayStack) -> Tenant:
    return stack.tenant("ssrf")


@pytest.mark.parametrize("url", FORBIDDEN_UPSTREAMS)
def test_create_with_a_link_local_or_metadata_upstream_is_refused(stack: GatewayStack, url: str) -> None:
    slug = f"h-ssrf-{secrets.token_hex(3)}"
    response = stack.admin.post("/admin/tenants", json={"slug": slug, "name": slug, "upstream_url": url})
    assert 400 <= response.status_code < 500, (url, response.status_code, response.text)
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    assert response.json()["code"] in REFUSAL_CODES, response.json()
    assert stack.admin.get(f"/admin/tenants/{slug}").status_code == 404


@pytest.mark.parametrize("url", FORBIDDEN_UPSTREAMS)
def test_patch_to_a_link_local_or_metadata_upstream_is_refused(
    stack: GatewayStack, patch_target: Tenant, url: str
) -> None:
    try:
        response = stack.admin.patch(f"/admin/tenants/{patch_target.id}", json={"upstream_url": url})
        assert 400 <= response.status_code < 500, (url, response.status_code, response.text)
        assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
        assert response.json()["code"] in REFUSAL_CODES, response.json()
        assert stack.admin.get(f"/admin/tenants/{patch_target.id}").json()["upstream_url"] is None
    finally:
        stack.admin.patch(f"/admin/tenants/{patch_target.id}", json={"upstream_url": None})


@pytest.mark.parametrize("url", ALLOWED_UPSTREAMS)
def test_ordinary_upstreams_stay_allowed_under_a_permissive_allowlist(
    stack: GatewayStack, patch_target: Tenant, url: str
) -> None:
    """The control: the refusals above are about the address, not about every non-loopback upstream."""
    try:
        response = stack.admin.patch(f"/admin/tenants/{patch_target.id}", json={"upstream_url": url})
        assert response.status_code == 200, response.text
        assert response.json()["upstream_url"] == url
    finally:
        stack.admin.patch(f"/admin/tenants/{patch_target.id}", json={"upstream_url": None})
