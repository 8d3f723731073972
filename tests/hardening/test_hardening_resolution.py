"""Hardening, group 1 — tenant resolution at the gateway's client-facing entry point.

An attacker holding tenant A's credentials controls every byte of the request: the Host header (case, dots, port,
IDN, userinfo, repeats, length, raw bytes), the request target (dot segments, encoded slashes, double encoding,
absolute form), X-Forwarded-* and Forwarded, and X-Tenant-ID. Whatever they send, the request either reaches
tenant A's upstream *as tenant A* (what the echo upstream saw: X-Tenant-ID, X-Tenant-Slug and the X-Tenant-Token's
``tid``) or is refused with a 4xx problem document — never a 500, never another tenant.

Everything goes over raw sockets (:func:`support.hardening.raw_request`): an HTTP client would normalise the very
bytes under test. What tests/e2e/test_gateway.py and test_gateway_faults.py already cover (each tenant source, a
conflict, a foreign credential, X-Forwarded-Host through a trusted proxy routing to another tenant) is not
repeated; these tests push the same rules through hostile encodings.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from support.hardening import RawResponse, http_bytes, raw_request
from support.platform import Tenant
from support.stacks import GatewayStack, seen_headers
from tenantry_common.problems import PROBLEM_MEDIA_TYPE

#: Outcomes a case may allow. ACME: forwarded to tenant A's upstream as tenant A. Others: "<status> <code>".
ACME = "acme"
INVALID_HOST = "400 invalid_host"
DUPLICATE = "400 duplicate_header"
NOT_FOUND = "404 tenant_not_found"
MISMATCH = "403 tenant_mismatch"

pytestmark = pytest.mark.stack(gateways={"trusted": {"TRUSTED_PROXIES": "127.0.0.1/32"}})


@dataclass
class Pair:
    """Two tenants: the attacker's (acme, whose key is used) and the victim (globex)."""

    acme: Tenant
    globex: Tenant


@pytest.fixture(scope="module")
def pair(stack: GatewayStack) -> Pair:
    gateways = [stack.gateway, *stack.extra]
    return Pair(stack.tenant("acme", gateways=gateways), stack.tenant("globex", gateways=gateways))


def trusted_port(stack: GatewayStack) -> int:
    return stack.extra[0].port


def tenant_token_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def classify(response: RawResponse, pair: Pair) -> str:
    """The outcome of one request, checking on the way what the outcome promises.

    A 200 must have reached the upstream as acme — and nothing else: any other tenant there fails at once.
    A 4xx must be a problem document with a code. Anything else is returned as ``"<status> ..."``.
    """
    if response.status == 200:
        echoed = response.json()
        seen = seen_headers(echoed)
        assert seen.get("x-tenant-id") == [pair.acme.id], f"forwarded as another tenant: {seen}"
        assert seen.get("x-tenant-slug") == [pair.acme.slug], seen
        assert tenant_token_claims(seen["x-tenant-token"][0])["tid"] == pair.acme.id
        return ACME
    if 400 <= response.status < 500 and (response.header("content-type") or "").startswith(PROBLEM_MEDIA_TYPE):
        body = response.json()
        assert body["status"] == response.status
        assert body["code"], body
        assert "Traceback" not in response.body.decode("latin-1")
        return f"{response.status} {body['code']}"
    return f"{response.status} {response.header('content-type')} {response.body[:200]!r}"


def send(
    port: int,
    key: str,
    host: bytes | None,
    target: str = "/probe",
    extra: list[tuple[bytes, bytes]] | None = None,
    source: str | None = None,
) -> RawResponse:
    headers: list[tuple[bytes, bytes]] = [] if host is None else [(b"Host", host)]
    headers += [(b"X-API-Key", key.encode()), *(extra or []), (b"Connection", b"close")]
    return raw_request(port, http_bytes("GET", target, headers), timeout=10, source=source)


# --- Host -----------------------------------------------------------------------------------------------

HostBuilder = Callable[[str, str], bytes | None]


def homograph(slug: str) -> str:
    """The slug with its first letter swapped for a look-alike Cyrillic letter (U+04BB for h)."""
    assert slug.startswith("h")
    return "\u04bb" + slug[1:]


HOST_CASES: list[tuple[str, HostBuilder, set[str]]] = [
    # Spelled differently, the same tenant (contract: case-insensitive, port and trailing dot ignored).
    ("upper case", lambda a, g: f"{a.upper()}.LOCALHOST".encode(), {ACME}),
    ("mixed case base domain", lambda a, g: f"{a}.LocalHost".encode(), {ACME}),
    ("trailing dot", lambda a, g: f"{a}.localhost.".encode(), {ACME}),
    ("explicit port", lambda a, g: f"{a}.localhost:8080".encode(), {ACME}),
    ("trailing dot and port", lambda a, g: f"{a}.localhost.:443".encode(), {ACME}),
    ("surrounding whitespace", lambda a, g: f"  {a}.localhost \t".encode(), {ACME, INVALID_HOST}),
    ("empty port", lambda a, g: f"{a}.localhost:".encode(), {ACME, INVALID_HOST}),
    ("huge port", lambda a, g: f"{a}.localhost:99999999999999999999".encode(), {ACME, INVALID_HOST}),
    # The other tenant, however spelled, stays the other tenant: acme's key is refused there.
    ("victim", lambda a, g: f"{g}.localhost".encode(), {MISMATCH}),
    ("victim upper case, dot and port", lambda a, g: f"{g.upper()}.localhost.:80".encode(), {MISMATCH}),
    # Malformed: 400 invalid_host.
    ("non-numeric port", lambda a, g: f"{a}.localhost:http".encode(), {INVALID_HOST}),
    ("two ports", lambda a, g: f"{a}.localhost:80:80".encode(), {INVALID_HOST}),
    ("two trailing dots", lambda a, g: f"{a}.localhost..".encode(), {INVALID_HOST}),
    ("empty label", lambda a, g: f"{a}..localhost".encode(), {INVALID_HOST}),
    ("leading dot", lambda a, g: f".{a}.localhost".encode(), {INVALID_HOST}),
    ("userinfo", lambda a, g: f"user@{a}.localhost".encode(), {INVALID_HOST}),
    ("userinfo naming the victim", lambda a, g: f"{g}.localhost@{a}.localhost".encode(), {INVALID_HOST}),
    ("userinfo with password", lambda a, g: f"{g}:pw@{a}.localhost".encode(), {INVALID_HOST}),
    ("percent-encoded dot", lambda a, g: f"{a}%2elocalhost".encode(), {INVALID_HOST}),
    ("space inside", lambda a, g: f"{a} .localhost".encode(), {INVALID_HOST}),
    ("comma list", lambda a, g: f"{a}.localhost, {g}.localhost".encode(), {INVALID_HOST}),
    ("over 253 characters", lambda a, g: ("a" * 250 + f".{a}.localhost").encode(), {INVALID_HOST}),
    ("one 300-character label", lambda a, g: ("a" * 300 + ".localhost").encode(), {INVALID_HOST}),
    ("2 KB host", lambda a, g: ("a." * 1024 + "localhost").encode(), {INVALID_HOST}),
    ("unclosed IPv6 literal", lambda a, g: b"[::1", {INVALID_HOST}),
    # IDN: raw non-ASCII is malformed; punycode is a valid name that is no tenant's (a slug never has "--").
    ("raw UTF-8 homograph", lambda a, g: f"{homograph(a)}.localhost".encode(), {INVALID_HOST}),
    ("raw latin-1 byte", lambda a, g: f"{a}\xe9.localhost".encode("latin-1"), {INVALID_HOST}),
    ("punycode homograph", lambda a, g: homograph(a).encode("idna") + b".localhost", {NOT_FOUND, INVALID_HOST}),
    ("punycode label", lambda a, g: b"xn--bcher-kva.localhost", {NOT_FOUND, INVALID_HOST}),
    ("63+ character label", lambda a, g: ("b" * 64 + ".localhost").encode(), {NOT_FOUND, INVALID_HOST}),
    # Hosts that name no tenant: the credential's tenant is the tenant.
    ("no Host header", lambda a, g: None, {ACME, "400 missing_host", INVALID_HOST}),
    ("empty Host", lambda a, g: b"", {ACME, INVALID_HOST}),
    ("IPv4 literal", lambda a, g: b"127.0.0.1:8080", {ACME}),
    ("IPv6 literal", lambda a, g: b"[::1]:8080", {ACME}),
    ("bare base domain", lambda a, g: b"localhost", {ACME}),
    ("reserved subdomain", lambda a, g: b"www.localhost", {ACME}),
    ("victim nested under acme", lambda a, g: f"{g}.{a}.localhost".encode(), {ACME, NOT_FOUND, INVALID_HOST}),
    ("acme under a foreign domain", lambda a, g: f"{a}.localhost.evil.example".encode(), {ACME, NOT_FOUND}),
]


@pytest.mark.parametrize(("case", "build", "allowed"), HOST_CASES, ids=[c[0] for c in HOST_CASES])
def test_host_variants_resolve_to_the_same_tenant_or_get_a_4xx_problem(
    stack: GatewayStack, pair: Pair, case: str, build: HostBuilder, allowed: set[str]
) -> None:
    host = build(pair.acme.slug, pair.globex.slug)
    outcome = classify(send(stack.gateway.port, pair.acme.key, host), pair)
    assert outcome in allowed, f"{case}: Host {host!r} gave {outcome}, expected one of {sorted(allowed)}"


@pytest.mark.parametrize(
    "host",
    [b"{a}.localhost\x00.{g}.localhost", b"{a}.localhost\x7f", b"{a}.localhost\x01"],
    ids=["NUL", "DEL", "control character"],
)
def test_control_bytes_in_host_are_refused(stack: GatewayStack, pair: Pair, host: bytes) -> None:
    """Not a valid field value at all: the HTTP layer may refuse it itself (a 400 or a closed connection)."""
    value = host.replace(b"{a}", pair.acme.slug.encode()).replace(b"{g}", pair.globex.slug.encode())
    response = send(stack.gateway.port, pair.acme.key, value)
    outcome = classify(response, pair)
    assert outcome == INVALID_HOST or response.status in (0, 400), outcome


@pytest.mark.parametrize(
    ("first", "second"),
    [("{a}", "{a}"), ("{a}", "{g}"), ("{g}", "{a}"), ("{a}", "")],
    ids=["same twice", "acme then victim", "victim then acme", "acme then empty"],
)
def test_two_host_headers_get_400(stack: GatewayStack, pair: Pair, first: str, second: str) -> None:
    def host(template: str) -> bytes:
        return (template.format(a=pair.acme.slug, g=pair.globex.slug) + ".localhost").encode() if template else b""

    extra = [(b"Host", host(second))]
    response = send(stack.gateway.port, pair.acme.key, host(first), extra=extra)
    assert classify(response, pair) in {DUPLICATE, INVALID_HOST, "400 bad_request"} or response.status == 400


def test_absolute_form_target_never_routes_by_its_authority(stack: GatewayStack, pair: Pair) -> None:
    """``GET http://victim.localhost/x`` with ``Host: acme.localhost``: RFC 9112 says the target's authority wins;
    a gateway that follows it must then refuse acme's key (403), one that does not must stay with acme, and a
    disagreement may also be refused outright (400)."""
    target = f"http://{pair.globex.slug}.localhost/probe"
    response = send(stack.gateway.port, pair.acme.key, f"{pair.acme.slug}.localhost".encode(), target=target)
    assert classify(response, pair) in {ACME, MISMATCH, "400 tenant_conflict", INVALID_HOST}


# --- X-Forwarded-Host / Forwarded -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "forwarded_host",
    ["{g}.localhost", "{g}.localhost@{a}.localhost", "\u00e9vil.localhost", "{g}.localhost, {a}.localhost"],
    ids=["victim", "userinfo", "non-ASCII", "comma list"],
)
@pytest.mark.parametrize("peer", ["untrusted gateway", "trusted gateway, other peer address"])
def test_x_forwarded_host_from_an_untrusted_peer_is_ignored(
    stack: GatewayStack, pair: Pair, forwarded_host: str, peer: str
) -> None:
    """Whatever X-Forwarded-Host an untrusted peer sends, the real Host decides and is what the upstream sees.

    The second gateway trusts only 127.0.0.1/32; connecting from 127.0.0.2 makes the same client untrusted there.
    """
    port, source = (stack.gateway.port, None) if peer == "untrusted gateway" else (trusted_port(stack), "127.0.0.2")
    real_host = f"{pair.acme.slug}.localhost"
    value = forwarded_host.format(a=pair.acme.slug, g=pair.globex.slug).encode("utf-8")
    extra = [(b"X-Forwarded-Host", value), (b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-For", b"203.0.113.9")]
    response = send(port, pair.acme.key, real_host.encode(), extra=extra, source=source)
    assert classify(response, pair) == ACME
    seen = seen_headers(response.json())
    assert seen["x-forwarded-host"] == [real_host]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-for"] == ["127.0.0.1" if source is None else source]


@pytest.mark.parametrize(
    ("forwarded_host", "allowed"),
    [
        ("{A}.localhost.:443", {ACME}),
        ("{a}.localhost", {ACME}),
        ("{g}.localhost", {MISMATCH}),
        ("{G}.LOCALHOST.", {MISMATCH}),
        ("{g}.localhost@{a}.localhost", {INVALID_HOST}),
        ("\u00e9vil.localhost", {INVALID_HOST}),
        ("{a}.localhost:http", {INVALID_HOST}),
        ("{g}.localhost, {a}.localhost", {INVALID_HOST, MISMATCH}),
    ],
    ids=["spelled differently", "acme", "victim", "victim spelled differently", "userinfo", "non-ASCII",
         "bad port", "comma list"],
)  # fmt: skip
def test_x_forwarded_host_from_a_trusted_proxy_is_honoured_and_validated(
    stack: GatewayStack, pair: Pair, forwarded_host: str, allowed: set[str]
) -> None:
    """From 127.0.0.1 (trusted) X-Forwarded-Host replaces Host — here Host names the victim, so a forwarded host
    that were ignored would show up as a mismatch — and gets the same validation as a Host header."""
    value = forwarded_host.format(
        a=pair.acme.slug, A=pair.acme.slug.upper(), g=pair.globex.slug, G=pair.globex.slug.upper()
    ).encode("utf-8")
    host = f"{pair.globex.slug}.localhost".encode()
    response = send(trusted_port(stack), pair.acme.key, host, extra=[(b"X-Forwarded-Host", value)])
    outcome = classify(response, pair)
    assert outcome in allowed, f"X-Forwarded-Host {value!r} gave {outcome}"
    if outcome == ACME:
        assert seen_headers(response.json())["x-forwarded-host"] == [value.decode()]


def test_forwarded_header_from_an_untrusted_client_never_reaches_the_upstream(stack: GatewayStack, pair: Pair) -> None:
    """RFC 7239 ``Forwarded`` carries the same claims as X-Forwarded-* (host, proto, for). From an untrusted
    client it must not reach the upstream as sent, or a framework that reads it believes a forged host and
    client address the gateway itself refused to believe."""
    forged = f"for=203.0.113.9;host={pair.globex.slug}.localhost;proto=https".encode()
    response = send(
        stack.gateway.port, pair.acme.key, f"{pair.acme.slug}.localhost".encode(), extra=[(b"Forwarded", forged)]
    )
    assert classify(response, pair) == ACME
    seen = seen_headers(response.json())
    assert forged.decode() not in seen.get("forwarded", []), seen.get("forwarded")


# --- the request target ---------------------------------------------------------------------------------

PATH_CASES = [
    "/t/{a}/../{g}/probe",
    "/t/{a}/%2e%2e/{g}/probe",
    "/t/{a}/%2E%2E%2F{g}/probe",
    "/t/{a}/..%2F{g}/probe",
    "/t/{a}/%252e%252e/{g}/probe",
    "/t/{a}%2F{g}/probe",
    "/t/{a}%2f..%2f{g}/probe",
    "/t/{a}/./../../t/{g}/probe",
    "//t/{g}/probe",
    "/t//{g}/probe",
    "/./t/{g}/probe",
    "/x/../t/{g}/probe",
    "/t/{A}/probe",
    "/T/{g}/probe",
    "/t/{a}\\..\\{g}/probe",
    "/t/{a};/{g}/probe",
    "/t/{g}%00/probe",
    "/t/%{g}/probe",
    "/%74/{a}/probe",
    "/t/%68{a_tail}/probe",
]


@pytest.mark.parametrize("template", PATH_CASES)
def test_path_tricks_with_acme_credentials_never_reach_another_tenant(
    stack: GatewayStack, pair: Pair, template: str
) -> None:
    """Dot segments, encoded and double-encoded slashes and dots, doubled slashes, case and NUL: with acme's key
    each either reaches acme's upstream as acme or gets a 4xx problem (403 when it names the victim)."""
    target = template.format(a=pair.acme.slug, A=pair.acme.slug.upper(), g=pair.globex.slug, a_tail=pair.acme.slug[1:])
    response = send(stack.gateway.port, pair.acme.key, b"127.0.0.1", target=target)
    outcome = classify(response, pair)
    assert outcome == ACME or outcome.startswith(("400 ", "403 ", "404 ")), f"{target}: {outcome}"
    if outcome == ACME:
        # The /t/<slug> prefix the gateway resolved is consumed, never passed on looking like the victim's.
        assert not response.json()["path"].startswith(f"/t/{pair.globex.slug}/"), response.json()["path"]


def test_path_prefix_naming_the_victim_gets_403_in_every_spelling(stack: GatewayStack, pair: Pair) -> None:
    """The control for the path tricks: when the path really names the victim, acme's key is refused."""
    for target in (f"/t/{pair.globex.slug}/probe", f"/t/%{ord('h'):02x}{pair.globex.slug[1:]}/probe"):
        response = send(stack.gateway.port, pair.acme.key, b"127.0.0.1", target=target)
        assert classify(response, pair) == MISMATCH, target


# --- X-Tenant-ID ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        ("{gid}", {MISMATCH}),
        ("{g}", {MISMATCH}),
        ("  {G}  ", {MISMATCH, NOT_FOUND}),
        ("{GID}", {MISMATCH, NOT_FOUND}),
        ("{aid}, {gid}", {NOT_FOUND, "400 tenant_conflict", DUPLICATE}),
        ("{g}.localhost", {NOT_FOUND}),
    ],
    ids=["victim id", "victim slug", "victim slug upper case with spaces", "victim id upper case", "list",
         "host form"],
)  # fmt: skip
def test_x_tenant_id_naming_the_victim_with_acme_key_gets_403_tenant_mismatch(
    stack: GatewayStack, pair: Pair, value: str, allowed: set[str]
) -> None:
    ref = value.format(
        gid=pair.globex.id, GID=pair.globex.id.upper(), g=pair.globex.slug, G=pair.globex.slug.upper(),
        aid=pair.acme.id,
    )  # fmt: skip
    response = send(stack.gateway.port, pair.acme.key, b"127.0.0.1", extra=[(b"X-Tenant-ID", ref.encode())])
    outcome = classify(response, pair)
    assert outcome in allowed, f"X-Tenant-ID {ref!r} gave {outcome}"


def test_two_x_tenant_id_headers_get_400(stack: GatewayStack, pair: Pair) -> None:
    extra = [(b"X-Tenant-ID", pair.acme.id.encode()), (b"X-Tenant-ID", pair.globex.id.encode())]
    response = send(stack.gateway.port, pair.acme.key, b"127.0.0.1", extra=extra)
    assert classify(response, pair) == DUPLICATE
