"""Hardening, group 2: hostile JWTs against a real gateway, black-box over HTTP and raw sockets.

The attacker controls every byte of a bearer token (header, payload, signature), may hold the published public
keys (JWKS), may replay a genuine token late or early, and may send several ``Authorization`` headers. Whatever
they send, the gateway answers 401 ``unauthorized`` (or 400/403/404/431 where the request itself says so), always
as a problem document, never a 5xx. Tokens are crafted byte by byte here (``cryptography`` for the signatures,
PyJWT for the genuine ones) so that each case differs from a working token in exactly one respect: every group
starts with a positive control that the same construction, done right, gets a 200.

Already covered elsewhere, not repeated: the token endpoint and JWKS shape (tests/e2e/test_gateway.py
``test_token_endpoint_and_jwks``), a first pass of hostile tokens (``test_hostile_tokens_get_401_or_403_never_500``),
revocation reaching every gateway (``test_suspension_and_revocation_reach_two_gateways_within_two_seconds``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from support.assertions import assert_problem
from support.gateway_support import GatewayProcess
from support.hardening import http_bytes, raw_request
from support.platform import Tenant
from support.stacks import GatewayStack, wait_known
from tenantry_common.jwt_keys import KeyRing, generate_signing_key

#: The gateway under test runs with this clock skew allowance; the cases below sit 2 s inside or outside it.
LEEWAY = 5
ISSUER = "tenantry-gateway"
AUDIENCE = "tenantry"

pytestmark = pytest.mark.stack(gateway_env={"JWT_LEEWAY_SECONDS": str(LEEWAY)})

Signer = Callable[[bytes], bytes]


# --- crafting tokens ------------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jws(header: dict[str, Any] | bytes, claims: dict[str, Any] | bytes, sign: Signer | None) -> str:
    """A compact JWS built by hand: any header, any payload bytes, any signature (none when ``sign`` is None)."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    body = claims if isinstance(claims, bytes) else json.dumps(claims).encode()
    signing_input = b64(head) + "." + b64(body)
    return signing_input + "." + (b64(sign(signing_input.encode())) if sign else "")


def ed_signer(key: ed25519.Ed25519PrivateKey) -> Signer:
    return key.sign


def rs_signer(key: rsa.RSAPrivateKey) -> Signer:
    return lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def ps_signer(key: rsa.RSAPrivateKey) -> Signer:
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    return lambda data: key.sign(data, pss, hashes.SHA256())


def hs_signer(secret: bytes, alg: str = "HS256") -> Signer:
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    return lambda data: hmac.new(secret, data, digest).digest()


def flip_signature(token: str) -> str:
    """``token`` with the first character of its signature changed: same shape, wrong signature."""
    head, _, signature = token.rpartition(".")
    return head + "." + ("B" if signature[0] == "A" else "A") + signature[1:]


def private_key(spec: str, kid: str, algorithm: str = "EdDSA") -> Any:
    """The private key ``kid`` of a ``JWT_SIGNING_KEYS`` value (the test made the ring, so it holds the keys)."""
    return KeyRing.from_config(spec, algorithm).private_keys[kid]


def claims_for(tenant: Tenant, **changes: Any) -> dict[str, Any]:
    """Claims of a token the gateway would accept for ``tenant``; ``changes`` set (or, with None, drop) claims."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER, "aud": AUDIENCE, "sub": tenant.key_id, "tid": tenant.id, "scope": "",
        "iat": now, "nbf": now, "exp": now + 300, "jti": b64(now.to_bytes(8, "big")),
    }  # fmt: skip
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


# --- the stack ------------------------------------------------------------------------------------------


@dataclass
class Tokens:
    """The module's two tenants and the stack gateway's real signing key, to sign and issue tokens with."""

    gateway: GatewayProcess
    key: ed25519.Ed25519PrivateKey
    a: Tenant
    b: Tenant

    def sign(self, claims: dict[str, Any], kid: Any = "k1", **header: Any) -> str:
        """A token signed with the gateway's real key under ``kid`` (EdDSA), extra header fields as given."""
        return jws({"alg": "EdDSA", "typ": "JWT", "kid": kid, **header}, claims, ed_signer(self.key))

    def issue(self, tenant: Tenant, gateway: GatewayProcess | None = None) -> str:
        """A genuine access token from ``POST /_gateway/token``."""
        response = httpx.post(
            (gateway or self.gateway).url + "/_gateway/token", headers={"X-API-Key": tenant.key}, timeout=10
        )
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])


@pytest.fixture(scope="module")
def tokens(stack: GatewayStack) -> Iterator[Tokens]:
    yield Tokens(stack.gateway, private_key(stack.signing_keys, "k1"), stack.tenant("jwt-a"), stack.tenant("jwt-b"))
    assert_never_a_500(stack.gateway)


def call(gateway: GatewayProcess, token: str | bytes, **headers: str) -> httpx.Response:
    """``GET /x`` through ``gateway`` with ``Authorization: Bearer <token>``."""
    value = b"Bearer " + (token if isinstance(token, bytes) else token.encode("latin-1"))
    return httpx.get(gateway.url + "/x", headers={"Authorization": value, **headers}, timeout=10)  # type: ignore[dict-item]


def assert_401(response: httpx.Response, case: object = "") -> None:
    assert response.status_code == 401, (case, response.status_code, response.text)
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer"), case


def assert_ok(response: httpx.Response, tenant: Tenant, case: object = "") -> None:
    assert response.status_code == 200, (case, response.status_code, response.text)
    assert response.json()["path"] == "/x"
    assert [v for k, v in response.json()["headers"] if k == "x-tenant-id"] == [tenant.id], case


def assert_never_a_500(gateway: GatewayProcess) -> None:
    """The gateway's own request counter never saw a 5xx other than those the tests provoke on purpose (none)."""
    metrics = httpx.get(gateway.url + "/_gateway/metrics", timeout=10).text
    counted = [line for line in metrics.splitlines() if line.startswith("tenantry_gateway_requests_total{")]
    assert counted, "the gateway's request counter is missing"
    fives = [line for line in counted if 'status="5' in line and not line.endswith(" 0.0")]
    assert not fives, fives


# --- algorithm attacks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", ""])
def test_alg_none_in_any_spelling_is_refused(stack: GatewayStack, tokens: Tokens, alg: str) -> None:
    claims = claims_for(tokens.a)
    assert_ok(call(stack.gateway, tokens.sign(claims)), tokens.a, "control")
    genuine_signature = tokens.sign(claims).rsplit(".", 1)[1]
    unsigned = jws({"alg": alg, "typ": "JWT", "kid": "k1"}, claims, None)
    assert_401(call(stack.gateway, unsigned), (alg, "empty signature"))
    assert_401(call(stack.gateway, unsigned + genuine_signature), (alg, "signature of the genuine token"))
    assert_401(call(stack.gateway, unsigned.rstrip(".")), (alg, "two segments"))
    no_alg = jws({"typ": "JWT", "kid": "k1"}, claims, ed_signer(tokens.key))
    assert_401(call(stack.gateway, no_alg), "no alg at all, genuine key")


def public_materials(gateway: GatewayProcess, key: Any) -> dict[str, bytes]:
    """Everything public about the signing key an attacker could try as an HMAC secret."""
    public = key.public_key()
    jwks = httpx.get(gateway.url + "/_gateway/jwks.json", timeout=10)
    materials = {
        "jwks document": jwks.content,
        "jwk": json.dumps(jwks.json()["keys"][0]).encode(),
        "spki pem": public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "spki der": public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
    }
    jwk = jwks.json()["keys"][0]
    for name in ("x", "n"):
        if name in jwk:
            materials[f"jwk {name}"] = jwk[name].encode()
            materials[f"jwk {name} decoded"] = base64.urlsafe_b64decode(jwk[name] + "==")
    if isinstance(public, rsa.RSAPublicKey):
        materials["pkcs1 pem"] = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    return materials


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_signed_with_public_key_material_is_refused(stack: GatewayStack, tokens: Tokens, alg: str) -> None:
    """Key confusion: an HMAC over the token keyed with the public key (PEM, DER, JWK, JWKS) must not verify."""
    claims = claims_for(tokens.a)
    for name, secret in public_materials(stack.gateway, tokens.key).items():
        token = jws({"alg": alg, "typ": "JWT", "kid": "k1"}, claims, hs_signer(secret, alg))
        assert_401(call(stack.gateway, token), (alg, name))


@pytest.fixture(scope="module")
def rs256(stack: GatewayStack, tokens: Tokens) -> tuple[GatewayProcess, rsa.RSAPrivateKey]:
    """A second gateway configured for RS256 with an RSA key ring, on the same tenant-service (stopped with it)."""
    spec = "r1:" + generate_signing_key("RS256")
    gateway = stack.start_gateway(
        "gw-rs256", JWT_ALGORITHM="RS256", JWT_SIGNING_KEYS=spec, JWT_LEEWAY_SECONDS=str(LEEWAY)
    )
    wait_known(gateway, tokens.a.key)
    return gateway, private_key(spec, "r1", "RS256")


def test_rs256_gateway_refuses_hmac_confusion_eddsa_and_pss(
    stack: GatewayStack, tokens: Tokens, rs256: tuple[GatewayProcess, rsa.RSAPrivateKey]
) -> None:
    gateway, key = rs256
    claims = claims_for(tokens.a)
    genuine = tokens.issue(tokens.a, gateway)
    assert pyjwt.get_unverified_header(genuine) == {"alg": "RS256", "kid": "r1", "typ": "JWT"}
    assert_ok(call(gateway, genuine), tokens.a, "genuine RS256 token")
    assert_ok(call(gateway, jws({"alg": "RS256", "kid": "r1"}, claims, rs_signer(key))), tokens.a, "crafted RS256")
    for alg in ("HS256", "HS512"):
        for name, secret in public_materials(gateway, key).items():
            token = jws({"alg": alg, "typ": "JWT", "kid": "r1"}, claims, hs_signer(secret, alg))
            assert_401(call(gateway, token), (alg, name))
    # The right RSA key with another RSA algorithm: the algorithm is configuration, not a family.
    assert_401(call(gateway, jws({"alg": "PS256", "kid": "r1"}, claims, ps_signer(key))), "PS256 with the real key")
    assert_401(call(gateway, jws({"alg": "RS512", "kid": "r1"}, claims, None) + b64(b"x" * 256)), "RS512")
    # EdDSA, whether with an attacker's key or with the EdDSA gateway's real key under this kid.
    intruder = ed25519.Ed25519PrivateKey.generate()
    assert_401(call(gateway, jws({"alg": "EdDSA", "kid": "r1"}, claims, ed_signer(intruder))), "EdDSA intruder")
    assert_401(call(gateway, jws({"alg": "EdDSA", "kid": "r1"}, claims, ed_signer(tokens.key))), "EdDSA other ring")
    # A token of the EdDSA gateway is not one of this gateway's, and the reverse.
    assert_401(call(gateway, tokens.issue(tokens.a)), "EdDSA gateway token on the RS256 gateway")
    assert_401(call(stack.gateway, genuine), "RS256 gateway token on the EdDSA gateway")


def test_eddsa_gateway_refuses_rs256_and_embedded_keys(stack: GatewayStack, tokens: Tokens) -> None:
    claims = claims_for(tokens.a)
    intruder_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert_401(call(stack.gateway, jws({"alg": "RS256", "kid": "k1"}, claims, rs_signer(intruder_rsa))), "RS256")
    intruder = ed25519.Ed25519PrivateKey.generate()
    intruder_x = b64(intruder.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": intruder_x, "kid": "k1"}
    # A listener standing in for the attacker's key server: the gateway must never fetch from it.
    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen(8)
    trap.settimeout(0.2)
    trap_url = f"http://127.0.0.1:{trap.getsockname()[1]}/jwks.json"
    try:
        for name, header in {
            "embedded jwk": {"jwk": jwk},
            "jku": {"jku": trap_url},
            "x5u": {"x5u": trap_url},
            "jku with unknown kid": {"jku": trap_url, "kid": "attacker"},
        }.items():
            token = jws({"alg": "EdDSA", "kid": "k1", **header}, claims, ed_signer(intruder))
            assert_401(call(stack.gateway, token), name)
        with pytest.raises(TimeoutError):
            trap.accept()
    finally:
        trap.close()
    # A tampered genuine token: the tenant swapped after signing.
    genuine = tokens.issue(tokens.a)
    header, _, signature = genuine.split(".")
    tampered = header + "." + b64(json.dumps(claims_for(tokens.b, sub=tokens.a.key_id)).encode()) + "." + signature
    assert_401(call(stack.gateway, tampered), "payload swapped")


# --- time claims ----------------------------------------------------------------------------------------


def test_exp_nbf_and_iat_just_inside_and_just_outside_the_leeway(stack: GatewayStack, tokens: Tokens) -> None:
    """With JWT_LEEWAY_SECONDS=5: 3 s past exp / 3 s before nbf or iat passes, 7 s fails (2 s margin either way).

    ``now`` is rounded up, so that every case keeps at least its 2 s margin however late in a second it starts.
    """
    now = math.ceil(time.time())
    inside = {
        "expired 3 s ago": claims_for(tokens.a, iat=now - 600, nbf=now - 600, exp=now - (LEEWAY - 2)),
        "not before in 3 s": claims_for(tokens.a, iat=now, nbf=now + (LEEWAY - 2)),
        "issued in 3 s": claims_for(tokens.a, iat=now + (LEEWAY - 2), nbf=None),
    }
    outside = {
        "expired 7 s ago": claims_for(tokens.a, iat=now - 600, nbf=now - 600, exp=now - (LEEWAY + 2)),
        "not before in 7 s": claims_for(tokens.a, iat=now, nbf=now + (LEEWAY + 2)),
        "issued in 7 s": claims_for(tokens.a, iat=now + (LEEWAY + 2), nbf=None),
        "expired an hour ago": claims_for(tokens.a, iat=now - 7200, nbf=now - 7200, exp=now - 3600),
        "exp before iat": claims_for(tokens.a, iat=now, exp=now - 60),
    }
    for case, claims in inside.items():
        assert_ok(call(stack.gateway, tokens.sign(claims)), tokens.a, case)
    for case, claims in outside.items():
        assert_401(call(stack.gateway, tokens.sign(claims)), case)


def test_an_accepted_token_stops_working_once_past_exp_plus_leeway(stack: GatewayStack, tokens: Tokens) -> None:
    """A token verified (and cached) while valid is refused once its exp + leeway has passed."""
    now = math.ceil(time.time())
    exp = now - LEEWAY + 2
    token = tokens.sign(claims_for(tokens.a, iat=now - 60, nbf=now - 60, exp=exp))
    assert_ok(call(stack.gateway, token), tokens.a, "inside the leeway")
    time.sleep(max(0.0, exp + LEEWAY - time.time()) + 0.2)
    assert_401(call(stack.gateway, token), "the same token after exp + leeway")


# --- claims ---------------------------------------------------------------------------------------------


def test_missing_or_wrong_registered_claims_are_refused(stack: GatewayStack, tokens: Tokens) -> None:
    a, b = tokens.a, tokens.b
    assert_ok(call(stack.gateway, tokens.sign(claims_for(a))), a, "control")
    cases = {
        "missing exp": claims_for(a, exp=None),
        "missing iss": claims_for(a, iss=None),
        "missing aud": claims_for(a, aud=None),
        "missing iat": claims_for(a, iat=None),
        "missing sub": claims_for(a, sub=None),
        "missing tid": claims_for(a, tid=None),
        "wrong iss": claims_for(a, iss="https://evil.example"),
        "iss differing in case": claims_for(a, iss=ISSUER.upper()),
        "iss with trailing space": claims_for(a, iss=ISSUER + " "),
        "wrong aud": claims_for(a, aud="tenantry-upstream"),
        "aud list without ours": claims_for(a, aud=["someone", "else"]),
        "aud as object": claims_for(a, aud={"aud": AUDIENCE}),
        "exp as string": claims_for(a, exp=str(int(time.time()) + 300)),
        "exp null": {**claims_for(a), "exp": None},
        "exp infinite": claims_for(a, exp=1e400),
        "iat as string": claims_for(a, iat="now"),
        "sub as list": claims_for(a, sub=[a.key_id]),
        "tid as number": claims_for(a, tid=12345),
        "sub of an unknown key": claims_for(a, sub="00000000-0000-4000-8000-000000000000"),
        "tid of another tenant": claims_for(a, tid=b.id),
        "sub of another tenant's key": claims_for(a, sub=b.key_id),
        "payload a list": [claims_for(a)],
        "payload a string": "claims",
    }
    for case, claims in cases.items():
        body = json.dumps(claims, allow_nan=True).encode()
        assert_401(call(stack.gateway, jws({"alg": "EdDSA", "kid": "k1"}, body, ed_signer(tokens.key))), case)
    # Not JSON at all, but signed.
    for case, raw in {"payload not json": b"\xff\xfenot json", "payload empty": b""}.items():
        assert_401(call(stack.gateway, jws({"alg": "EdDSA", "kid": "k1"}, raw, ed_signer(tokens.key))), case)
    # A genuine token for A, presented at B's address: a valid credential of another tenant.
    response = call(stack.gateway, tokens.issue(a), **{"X-Tenant-ID": b.id})
    assert_problem(response, 403, "tenant_mismatch")


@pytest.mark.parametrize(
    "kid",
    [
        "k9",
        "K1",
        "k1 ",
        " k1",
        "k1\u0000",
        "../../../../../../etc/passwd",
        "/dev/null",
        "k1' OR '1'='1",
        'k1"; DROP TABLE api_keys; --',
        "${jndi:ldap://127.0.0.1/x}",
        "k" * 4000,
        "",
        None,
        1,
        ["k1"],
        {"kid": "k1"},
    ],
    ids=lambda kid: repr(kid)[:24],
)
def test_kid_other_than_a_ring_key_is_refused(stack: GatewayStack, tokens: Tokens, kid: Any) -> None:
    claims = claims_for(tokens.a)
    assert_401(call(stack.gateway, tokens.sign(claims, kid=kid)), kid)
    # Signed with the real key too: only the kid names a key, and this one names none.
    header: dict[str, Any] = {"alg": "EdDSA"} if kid is None else {"alg": "EdDSA", "kid": kid}
    assert_401(call(stack.gateway, jws(header, claims, ed_signer(tokens.key))), kid)


# --- malformed tokens and headers -----------------------------------------------------------------------


def test_malformed_tokens_get_401_problem(stack: GatewayStack, tokens: Tokens) -> None:
    genuine = tokens.issue(tokens.a)
    assert_ok(call(stack.gateway, genuine), tokens.a, "control")
    header, payload, signature = genuine.split(".")
    cases: dict[str, str | bytes] = {
        "truncated in the signature": genuine[:-5],
        "truncated in the payload": genuine[: len(header) + 1 + len(payload) // 2],
        "truncated in the header": genuine[: len(header) // 2],
        "signature cut by one character": genuine[:-1],
        "signature with one more character": genuine + "A",
        "signature of zero bytes": header + "." + payload + ".",
        "two segments": header + "." + payload,
        "one segment": header,
        "four segments": genuine + "." + signature,
        "five segments (JWE shape)": ".".join([header, payload, signature, signature, signature]),
        "empty segments": "..",
        "only dots": "." * 40,
        "not base64": "@@@.###.$$$",
        "standard base64 alphabet": genuine.replace("-", "+").replace("_", "/") + "+/",
        "header not json": b64(b"{not json") + "." + payload + "." + signature,
        "header a json list": b64(b'["alg","EdDSA"]') + "." + payload + "." + signature,
        "header a json string": b64(b'"EdDSA"') + "." + payload + "." + signature,
        "header deeply nested": b64(b'{"kid":' + b"[" * 2500 + b"]" * 2500 + b"}") + "." + payload + ".x",
        "payload deeply nested": header + "." + b64(b"[" * 2000 + b"]" * 2000) + "." + signature,
        "whitespace inside": header + ". " + payload + "." + signature,
        "tab inside": header + "\t." + payload + "." + signature,
        "latin-1 bytes": genuine.encode() + b"\xe9\xff",
        "utf-8 bytes": "\u00e9\u4e2d.\u00e9.\u00e9".encode(),
        "json instead of a token": json.dumps(claims_for(tokens.a)),
        "an API key prefix with junk": "tk_" + "!" * 40,
    }
    for case, token in cases.items():
        assert_401(call(stack.gateway, token), case)
    # Padding after the signature: not RFC 7515 base64url, but it decodes to the very same signature bytes, so a
    # lenient decoder may accept it; nothing is forged either way. Only a 5xx would be wrong here.
    lenient = call(stack.gateway, genuine + "==")
    assert lenient.status_code in (200, 401), lenient.text
    for case, value in {
        "bearer without a token": b"Bearer",
        "another scheme": b"Token " + genuine.encode(),
        "basic": b"Basic " + base64.b64encode(b"user:" + genuine.encode()),
        "the token without a scheme": genuine.encode(),
        "bearer twice": b"Bearer Bearer " + genuine.encode(),
    }.items():
        response = httpx.get(stack.gateway.url + "/x", headers={"Authorization": value}, timeout=10)  # type: ignore[dict-item]
        assert_401(response, case)


def test_an_8kb_token_gets_401_or_431_never_500(stack: GatewayStack, tokens: Tokens) -> None:
    header = b64(json.dumps({"alg": "EdDSA", "kid": "k1"}).encode())
    for size in (7_900, 8_192, 8_300, 16_384, 65_536):
        token = (header + "." + b64(b"p" * size))[:size] + ".c2ln"
        response = call(stack.gateway, token)
        assert response.status_code in (401, 431), (size, response.status_code, response.text)
        assert_problem(response, response.status_code)
    # Under the header limit, a large but well-formed token with a real signature is judged on its merits.
    padded = claims_for(tokens.a, pad="p" * 5000)
    assert_ok(call(stack.gateway, tokens.sign(padded)), tokens.a, "large genuine token")
    assert_401(call(stack.gateway, flip_signature(tokens.sign(padded))), "large token, bad signature")


@pytest.mark.parametrize(
    "values",
    [
        ("same", "same"),
        ("valid", "garbage"),
        ("garbage", "valid"),
    ],
    ids=["same token twice", "valid then garbage", "garbage then valid"],
)
def test_two_authorization_headers_get_400(stack: GatewayStack, tokens: Tokens, values: tuple[str, str]) -> None:
    genuine = tokens.issue(tokens.a)
    pick = {"same": genuine, "valid": genuine, "garbage": "not-a-token"}
    names = ("Authorization", "authorization")
    headers = [("Host", "127.0.0.1"), ("Connection", "close")] + [
        (name, f"Bearer {pick[v]}") for name, v in zip(names, values, strict=True)
    ]
    response = raw_request(stack.gateway.port, http_bytes("GET", "/x", headers))
    assert response.status == 400, response
    assert (response.header("content-type") or "").startswith("application/problem+json")
    body = response.json()
    assert body["code"] == "duplicate_header"
    assert body["status"] == 400
    # One Authorization header with the same token is fine over the same kind of connection.
    single = [("Host", "127.0.0.1"), ("Connection", "close"), ("Authorization", f"Bearer {genuine}")]
    assert raw_request(stack.gateway.port, http_bytes("GET", "/x", single)).status == 200


@pytest.mark.parametrize("name", ["X-API-Key", "Authorization"])
def test_token_endpoint_with_two_credential_headers_gets_400(stack: GatewayStack, tokens: Tokens, name: str) -> None:
    """Two keys of two tenants in one request to ``/_gateway/token``: ambiguous, so refused, never a token for
    whichever header a parser happens to keep."""
    value = (lambda key: key) if name == "X-API-Key" else (lambda key: f"Bearer {key}")
    headers = [
        ("Host", "127.0.0.1"),
        ("Connection", "close"),
        ("Content-Length", "0"),
        (name, value(tokens.a.key)),
        (name, value(tokens.b.key)),
    ]
    response = raw_request(stack.gateway.port, http_bytes("POST", "/_gateway/token", headers))
    assert response.status == 400, response
    assert (response.header("content-type") or "").startswith("application/problem+json")
    assert response.json()["code"] == "duplicate_header"
    assert b"access_token" not in response.body


# --- tenant lifecycle -----------------------------------------------------------------------------------


def test_token_for_a_suspended_deleted_or_purged_tenant(stack: GatewayStack, tokens: Tokens) -> None:
    tenant = stack.tenant("jwt-life")
    genuine = tokens.issue(tenant)
    crafted = tokens.sign(claims_for(tenant))
    for token in (genuine, crafted):
        assert_ok(call(stack.gateway, token), tenant)

    def settles(token: str, status: int, timeout: float = 5.0) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while True:
            response = call(stack.gateway, token)
            if response.status_code == status or time.monotonic() > deadline:
                return response
            time.sleep(0.05)

    assert stack.admin.post(f"/admin/tenants/{tenant.id}/suspend").status_code == 200
    for token in (genuine, crafted):
        assert_problem(settles(token, 403), 403, "tenant_suspended")
    refused = httpx.post(stack.gateway.url + "/_gateway/token", headers={"X-API-Key": tenant.key}, timeout=10)
    assert_problem(refused, 403, "tenant_suspended")
    assert stack.admin.post(f"/admin/tenants/{tenant.id}/resume").status_code == 200
    assert_ok(settles(genuine, 200), tenant)
    assert stack.admin.delete(f"/admin/tenants/{tenant.id}").status_code == 200
    for token in (genuine, crafted):
        assert_problem(settles(token, 404), 404, "tenant_not_found")
    purged = stack.admin.delete(f"/admin/tenants/{tenant.id}", params={"purge": "true"})
    assert purged.status_code == 200, purged.text
    # Purged: the key behind the token no longer exists anywhere, so the credential itself is unknown.
    for token in (genuine, crafted):
        assert_401(settles(token, 401), "purged")


# --- key rotation ---------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:EdDSA is deprecated")  # joserfc prefers RFC 9864 names; EdDSA is contract
def test_signing_key_rotation_across_replicas_without_downtime(stack: GatewayStack, tokens: Tokens) -> None:
    """Contract §4: keys rotate without downtime; an old kid stays published until its tokens expired; replicas
    sharing the ring accept each other's tokens.

    The gateway reads its ring once at start (there is no reload), so a rotation is a rolling restart through
    three rings: ``k1`` → ``k1,k2`` (k2 accepted and published, k1 still signs) → ``k2,k1`` (k2 signs) → ``k2``.
    Each phase runs here as its own gateway replica next to the previous one, as during a rolling update.
    """
    k1 = stack.signing_keys
    k2 = "k2:" + generate_signing_key()
    with ThreadPoolExecutor(max_workers=3) as pool:
        starting = {
            phase: pool.submit(stack.start_gateway, f"gw-rotate-{phase}", JWT_SIGNING_KEYS=ring)
            for phase, ring in {"add": f"{k1},{k2}", "switch": f"{k2},{k1}", "retire": k2}.items()
        }
        add, switch, retire = (starting[p].result(timeout=60) for p in ("add", "switch", "retire"))
    for gateway in (add, switch, retire):
        wait_known(gateway, tokens.a.key)

    old_token = tokens.issue(tokens.a)  # by the k1-only replica
    add_token = tokens.issue(tokens.a, add)
    new_token = tokens.issue(tokens.a, switch)
    assert pyjwt.get_unverified_header(old_token)["kid"] == "k1"
    assert pyjwt.get_unverified_header(add_token)["kid"] == "k1", "adding a key must not change who signs"
    assert pyjwt.get_unverified_header(new_token)["kid"] == "k2"

    # Phase "add": every replica still signs with k1; the replicas that know k2 accept k2 tokens already.
    for gateway in (stack.gateway, add, switch):
        assert_ok(call(gateway, old_token), tokens.a, ("k1 token", gateway.url))
        assert_ok(call(gateway, add_token), tokens.a, ("k1 token of the add replica", gateway.url))
    for gateway in (add, switch, retire):
        assert_ok(call(gateway, new_token), tokens.a, ("k2 token", gateway.url))
    # A replica that never learned k2 refuses k2 tokens: k2 must be on every replica before any signs with it.
    assert_401(call(stack.gateway, new_token), "k2 token on a k1-only replica")
    # Phase "retire": k1 gone, so are its tokens (they would have expired by then).
    assert_401(call(retire, old_token), "k1 token on the k2-only replica")

    # The JWKS publishes the old kid as long as it is in the ring, and a third-party JOSE library verifies both.
    published = {
        name: [k["kid"] for k in httpx.get(g.url + "/_gateway/jwks.json", timeout=10).json()["keys"]]
        for name, g in {"old": stack.gateway, "add": add, "switch": switch, "retire": retire}.items()
    }
    assert published == {"old": ["k1"], "add": ["k1", "k2"], "switch": ["k2", "k1"], "retire": ["k2"]}
    jwks = KeySet.import_key_set(httpx.get(switch.url + "/_gateway/jwks.json", timeout=10).json())
    for token in (old_token, new_token):
        decoded = jose_jwt.decode(token, jwks, algorithms=["EdDSA"])
        assert decoded.claims["tid"] == tokens.a.id
    for gateway in (add, switch, retire):
        assert_never_a_500(gateway)


def test_concurrent_hostile_tokens_leave_the_gateway_healthy(stack: GatewayStack, tokens: Tokens) -> None:
    """A burst mixing genuine and hostile tokens: each answer is the right one, and the gateway stays ready."""
    genuine = tokens.issue(tokens.a)
    hostile = [
        jws({"alg": "none", "kid": "k1"}, claims_for(tokens.a), None),
        genuine[:-3],
        tokens.sign(claims_for(tokens.a), kid="k9"),
        "x" * 3000,
    ]
    results: list[tuple[bool, int]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        good = i % 5 == 0
        response = call(stack.gateway, genuine if good else hostile[i % len(hostile)])
        with lock:
            results.append((good, response.status_code))

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(one, range(100)))
    assert {status for good, status in results if good} == {200}
    assert {status for good, status in results if not good} == {401}
    assert httpx.get(stack.gateway.url + "/_gateway/readyz", timeout=10).status_code == 200
