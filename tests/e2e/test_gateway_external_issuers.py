"""Tenants' own identity providers: tokens signed by a tenant's external issuer, through the real gateway.

tenant-service, gateway and the echo upstream run as processes; the identity provider is a small HTTP server in
this process that publishes a JWKS and counts how often it is fetched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from support.platform import wait_until
from support.stacks import GatewayStack

pytestmark = pytest.mark.stack(gateway_env={"JWKS_MIN_REFETCH_SECONDS": "2", "JWKS_TIMEOUT": "1"})

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _public_jwk(kid: str, key: PrivateKey, alg: str | None) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = json.loads(RSAAlgorithm.to_jwk(public))
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = json.loads(ECAlgorithm.to_jwk(public))
    else:
        jwk = json.loads(OKPAlgorithm.to_jwk(public))
    jwk["kid"] = kid
    if alg is not None:
        jwk["alg"] = alg
    return jwk


@dataclass
class IdentityProvider:
    """Publishes ``/jwks.json``; ``fetches`` counts the gateway's requests; ``fail`` makes it answer 500."""

    keys: dict[str, tuple[PrivateKey, str | None]] = field(default_factory=dict)
    fetches: int = 0
    fail: bool = False
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def jwks_url(self) -> str:
        return self.url + "/jwks.json"

    @property
    def issuer(self) -> str:
        return self.url + "/"

    def add(self, kid: str, key: PrivateKey | None = None, alg: str | None = "RS256") -> PrivateKey:
        key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.keys[kid] = (key, alg)
        return key

    def body(self) -> bytes:
        return json.dumps({"keys": [_public_jwk(kid, key, alg) for kid, (key, alg) in self.keys.items()]}).encode()

    def start(self) -> IdentityProvider:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                if provider.fail or self.path != "/jwks.json":
                    self.send_response(500 if provider.fail else 404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                body = provider.body()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    """The identity provider the module's tenants trust, with an RSA key and one below PyJWT's minimum size."""
    provider = IdentityProvider().start()
    provider.add("k1")
    provider.add("weak", rsa.generate_private_key(public_exponent=65537, key_size=1024))  # below PyJWT's minimum
    try:
        yield provider
    finally:
        provider.stop()


def _tenant(stack: GatewayStack, slug: str) -> dict[str, Any]:
    response = stack.admin.post("/admin/tenants", json={"slug": slug, "name": slug})
    assert response.status_code == 201, response.text
    tenant: dict[str, Any] = response.json()
    return tenant


def _trust(
    stack: GatewayStack, idp: IdentityProvider, tenant: dict[str, Any], audience: str, **extra: Any
) -> dict[str, Any]:
    body = {"issuer": idp.issuer, "audience": audience, "jwks_url": idp.jwks_url, **extra}
    response = stack.admin.post(f"/admin/tenants/{tenant['id']}/jwt-issuers", json=body)
    assert response.status_code == 201, response.text
    issuer: dict[str, Any] = response.json()
    return issuer


def _token(
    idp: IdentityProvider, audience: str | list[str], *, kid: str = "k1", alg: str = "RS256", **claims: Any
) -> str:
    key, _ = idp.keys[kid]
    now = int(time.time())
    payload = {"iss": idp.issuer, "aud": audience, "sub": "user-1", "iat": now, "exp": now + 300, **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    return pyjwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


def _get(stack: GatewayStack, token: str, **headers: str) -> httpx.Response:
    return httpx.get(stack.gateway.url + "/hello", headers={"Authorization": f"Bearer {token}", **headers}, timeout=10)


def _seen(response: httpx.Response) -> dict[str, str]:
    return dict(response.json()["headers"])


def _accepted(stack: GatewayStack, token: str) -> None:
    """Wait until the gateway has synced the issuer and accepts the token."""
    wait_until(lambda: _get(stack, token).status_code == 200, timeout=10)


def _unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "unauthorized"
    assert "www-authenticate" in response.headers


def test_a_tenants_idp_token_reaches_that_tenant_with_its_subject_and_quota(
    stack: GatewayStack, idp: IdentityProvider
) -> None:
    tenant = _tenant(stack, "ext-basic")
    trusted = _trust(stack, idp, tenant, "ext-basic-api")
    token = _token(idp, "ext-basic-api", sub="alice@ext-basic", scope="notes:read notes:write")
    _accepted(stack, token)
    fetches = idp.fetches
    response = _get(stack, token)
    assert response.status_code == 200
    seen = _seen(response)
    assert seen["x-tenant-id"] == tenant["id"]
    assert seen["x-tenant-slug"] == "ext-basic"
    assert "authorization" not in seen  # the credential stays at the gateway
    assert int(response.headers["ratelimit-remaining"]) < int(response.headers["ratelimit-limit"])
    identity = pyjwt.decode(seen["x-tenant-token"], options={"verify_signature": False})
    assert identity["tid"] == tenant["id"]
    assert identity["sub"] == "alice@ext-basic"
    assert identity["scope"] == "notes:read notes:write"
    assert identity["idp"] == trusted["id"]  # sub is the IdP's subject, not an API key id
    # Verified once: repeated requests neither verify nor fetch again.
    for _ in range(5):
        assert _get(stack, token).status_code == 200
    assert idp.fetches == fetches


def test_tokens_the_configuration_does_not_match_get_401_without_a_fetch(
    stack: GatewayStack, idp: IdentityProvider
) -> None:
    tenant = _tenant(stack, "ext-nomatch")
    _trust(stack, idp, tenant, "ext-nomatch-api")
    _accepted(stack, _token(idp, "ext-nomatch-api"))
    fetches = idp.fetches
    other_issuer = pyjwt.encode(
        {"iss": "https://evil.example/", "aud": "ext-nomatch-api", "sub": "x", "exp": int(time.time()) + 60},
        idp.keys["k1"][0],
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    _unauthorized(_get(stack, other_issuer))
    _unauthorized(_get(stack, _token(idp, "someone-elses-api")))
    _unauthorized(_get(stack, _token(idp, "ext-nomatch-api", exp=int(time.time()) - 120)))
    _unauthorized(_get(stack, _token(idp, "ext-nomatch-api", exp=None)))
    _unauthorized(_get(stack, _token(idp, "ext-nomatch-api", sub=None)))
    assert idp.fetches == fetches


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the test signs with a weak key
def test_forged_and_confused_tokens_get_401(stack: GatewayStack, idp: IdentityProvider) -> None:
    tenant = _tenant(stack, "ext-forged")
    _trust(stack, idp, tenant, "ext-forged-api")
    good = _token(idp, "ext-forged-api")
    _accepted(stack, good)
    now = int(time.time())
    claims = {"iss": idp.issuer, "aud": "ext-forged-api", "sub": "mallory", "exp": now + 60}
    # Signed by another key under the known kid.
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _unauthorized(_get(stack, pyjwt.encode(claims, impostor, algorithm="RS256", headers={"kid": "k1"})))
    # HS256 with the published public key as the secret (algorithm confusion).
    public_pem = (
        idp.keys["k1"][0]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": "k1"}
    segments = [base64.urlsafe_b64encode(json.dumps(p).encode()).rstrip(b"=") for p in (header, claims)]
    signature = hmac.new(public_pem, b".".join(segments), hashlib.sha256).digest()
    confused = b".".join([*segments, base64.urlsafe_b64encode(signature).rstrip(b"=")]).decode()
    _unauthorized(_get(stack, confused))
    # alg "none".
    none_header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": "k1"}).encode()).rstrip(b"=")
    _unauthorized(_get(stack, (none_header + b"." + segments[1] + b".").decode()))
    # A correctly signed token whose payload was altered afterwards.
    head, _, rest = good.partition(".")
    body, _, sig = rest.partition(".")
    altered = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    altered["sub"] = "admin"
    new_body = base64.urlsafe_b64encode(json.dumps(altered).encode()).rstrip(b"=").decode()
    _unauthorized(_get(stack, f"{head}.{new_body}.{sig}"))
    # An algorithm the tenant did not configure (PS256 over the same RSA key).
    _unauthorized(_get(stack, _token(idp, "ext-forged-api", alg="PS256")))
    # A 1024-bit RSA key published by the IdP: too weak to trust.
    _unauthorized(_get(stack, _token(idp, "ext-forged-api", kid="weak")))
    assert _get(stack, good).status_code == 200


def test_unknown_kid_gets_one_rate_limited_refetch_and_rotation_is_picked_up(
    stack: GatewayStack, idp: IdentityProvider
) -> None:
    tenant = _tenant(stack, "ext-rotate")
    _trust(stack, idp, tenant, "ext-rotate-api")
    _accepted(stack, _token(idp, "ext-rotate-api"))
    time.sleep(2.1)  # past JWKS_MIN_REFETCH_SECONDS (2 s here)
    before = idp.fetches
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    sprayed = [
        pyjwt.encode(
            {"iss": idp.issuer, "aud": "ext-rotate-api", "sub": "x", "exp": now + 60},
            stranger,
            algorithm="RS256",
            headers={"kid": f"random-{i}"},
        )
        for i in range(10)
    ]
    for token in sprayed:
        _unauthorized(_get(stack, token))
    assert idp.fetches - before == 1  # one refetch for ten unknown kids within the interval
    # The IdP rotates: a new key appears; after the interval its tokens are accepted after one refetch.
    idp.add("k2", ec.generate_private_key(ec.SECP256R1()), alg="ES256")
    time.sleep(2.1)
    before = idp.fetches
    stack.admin.post(
        f"/admin/tenants/{tenant['id']}/jwt-issuers",
        json={
            "issuer": idp.issuer,
            "audience": "ext-rotate-es",
            "jwks_url": idp.jwks_url,
            "algorithms": ["ES256"],
        },
    ).raise_for_status()
    es_token = _token(idp, "ext-rotate-es", kid="k2", alg="ES256")
    _accepted(stack, es_token)
    assert idp.fetches - before == 1


def test_isolation_between_tenants_sharing_an_identity_provider(stack: GatewayStack, idp: IdentityProvider) -> None:
    a = _tenant(stack, "ext-iso-a")
    b = _tenant(stack, "ext-iso-b")
    _trust(stack, idp, a, "ext-iso-a-api")
    _trust(stack, idp, b, "ext-iso-b-api")
    token_a = _token(idp, "ext-iso-a-api", sub="user-of-a")
    token_b = _token(idp, "ext-iso-b-api", sub="user-of-b")
    _accepted(stack, token_a)
    _accepted(stack, token_b)
    assert _seen(_get(stack, token_a))["x-tenant-id"] == a["id"]
    assert _seen(_get(stack, token_b))["x-tenant-id"] == b["id"]
    # A's user at B's address: the credential belongs to A.
    for headers in ({"X-Tenant-ID": b["id"]}, {"Host": "ext-iso-b.localhost"}):
        response = _get(stack, token_a, **headers)
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "tenant_mismatch"
    # A token naming both audiences cannot pick its tenant.
    _unauthorized(_get(stack, _token(idp, ["ext-iso-a-api", "ext-iso-b-api"])))
    # The same (issuer, audience) cannot be trusted by a second tenant.
    response = stack.admin.post(
        f"/admin/tenants/{b['id']}/jwt-issuers",
        json={"issuer": idp.issuer, "audience": "ext-iso-a-api", "jwks_url": idp.jwks_url},
    )
    assert response.status_code == 409, response.text
    assert a["id"] not in response.text
    assert 'ext-iso-a"' not in response.text
    # Quotas are per tenant: A's requests do not count against B.
    remaining_b = int(_get(stack, token_b).headers["ratelimit-remaining"])
    for _ in range(5):
        assert _get(stack, token_a).status_code == 200
    # (>=: when the minute rolls over in between, B's counter starts afresh.)
    assert int(_get(stack, token_b).headers["ratelimit-remaining"]) >= remaining_b - 1


def test_removing_the_issuer_or_suspending_the_tenant_stops_its_tokens(
    stack: GatewayStack, idp: IdentityProvider
) -> None:
    tenant = _tenant(stack, "ext-revoke")
    issuer = _trust(stack, idp, tenant, "ext-revoke-api")
    token = _token(idp, "ext-revoke-api")
    _accepted(stack, token)
    assert stack.admin.post(f"/admin/tenants/{tenant['id']}/suspend").status_code == 200
    wait_until(lambda: _get(stack, token).status_code == 403, timeout=5)
    assert _get(stack, token).json()["code"] == "tenant_suspended"
    assert stack.admin.post(f"/admin/tenants/{tenant['id']}/resume").status_code == 200
    _accepted(stack, token)
    response = stack.admin.delete(f"/admin/tenants/{tenant['id']}/jwt-issuers/{issuer['id']}")
    assert response.status_code == 204, response.text
    waited = wait_until(lambda: _get(stack, token).status_code == 401, timeout=5)
    assert waited < 2.5  # the contract's propagation bound, with margin for the poll interval
    _unauthorized(_get(stack, token))


def test_an_unreachable_or_broken_jwks_gives_401_not_an_error(stack: GatewayStack, idp: IdentityProvider) -> None:
    tenant = _tenant(stack, "ext-down")
    broken = IdentityProvider().start()
    broken.add("k1", idp.keys["k1"][0])
    broken.fail = True
    try:
        response = stack.admin.post(
            f"/admin/tenants/{tenant['id']}/jwt-issuers",
            json={"issuer": idp.issuer, "audience": "ext-down-api", "jwks_url": broken.jwks_url},
        )
        assert response.status_code == 201, response.text
        token = _token(idp, "ext-down-api")
        wait_until(lambda: broken.fetches > 0 or _get(stack, token).status_code != 401, timeout=10)
        started = time.monotonic()
        _unauthorized(_get(stack, token))
        assert time.monotonic() - started < 5
        # The IdP recovers: after the refetch interval the same token is accepted.
        broken.fail = False
        time.sleep(2.1)
        _accepted(stack, token)
    finally:
        broken.stop()
    # A JWKS URL that never answers: bounded by JWKS_TIMEOUT, then 401.
    silent = IdentityProvider()
    silent.server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)  # accepts, never answers
    response = stack.admin.post(
        f"/admin/tenants/{tenant['id']}/jwt-issuers",
        json={"issuer": idp.issuer, "audience": "ext-silent-api", "jwks_url": silent.jwks_url},
    )
    assert response.status_code == 201, response.text
    token = _token(idp, "ext-silent-api")
    try:
        wait_until(lambda: _get(stack, token).status_code == 401, timeout=10)
        started = time.monotonic()
        _get(stack, token)
        assert time.monotonic() - started < 5
    finally:
        silent.server.server_close()
    assert "Traceback" not in stack.gateway.log()
    metrics = httpx.get(stack.gateway.url + "/_gateway/metrics", timeout=10).text
    assert re.search(r'tenantry_gateway_jwks_fetches_total\{outcome="error"\} [1-9]', metrics), metrics
    assert re.search(r'tenantry_gateway_jwks_fetches_total\{outcome="ok"\} [1-9]', metrics), metrics


def test_eddsa_keys_and_jwks_without_alg(stack: GatewayStack, idp: IdentityProvider) -> None:
    tenant = _tenant(stack, "ext-eddsa")
    idp.add("ed1", ed25519.Ed25519PrivateKey.generate(), alg=None)
    idp.add("rsa-noalg", alg=None)
    time.sleep(2.1)
    response = stack.admin.post(
        f"/admin/tenants/{tenant['id']}/jwt-issuers",
        json={
            "issuer": idp.issuer,
            "audience": "ext-eddsa-api",
            "jwks_url": idp.jwks_url,
            "algorithms": ["EdDSA", "RS384"],
        },
    )
    assert response.status_code == 201, response.text
    _accepted(stack, _token(idp, "ext-eddsa-api", kid="ed1", alg="EdDSA", jti=uuid.uuid4().hex))
    assert _get(stack, _token(idp, "ext-eddsa-api", kid="rsa-noalg", alg="RS384")).status_code == 200
    # The RSA key is not bound to an algorithm, but RS256 is not configured for this issuer.
    _unauthorized(_get(stack, _token(idp, "ext-eddsa-api", kid="rsa-noalg", alg="RS256")))


def _b64(data: object) -> bytes:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def _rs256(header: dict[str, Any], claims: dict[str, Any], key: PrivateKey) -> str:
    """A token signed with RS256 whatever its content (PyJWT refuses to encode some of these)."""
    assert isinstance(key, rsa.RSAPrivateKey)
    signing_input = _b64(header) + b"." + _b64(claims)
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return (signing_input + b"." + _b64(signature)).decode()


def test_hostile_tokens_naming_a_configured_issuer_get_401_never_an_error(
    stack: GatewayStack, idp: IdentityProvider
) -> None:
    tenant = _tenant(stack, "ext-hostile")
    _trust(stack, idp, tenant, "ext-hostile-api")
    _accepted(stack, _token(idp, "ext-hostile-api"))
    key = idp.keys["k1"][0]
    now = int(time.time())
    base = {"iss": idp.issuer, "aud": "ext-hostile-api", "sub": "x", "exp": now + 60}
    signed_claims: list[dict[str, Any]] = [
        {**base, "iss": [idp.issuer]},
        {**base, "iss": {"a": 1}},
        {**base, "aud": {"ext-hostile-api": 1}},
        {**base, "aud": [["ext-hostile-api"]]},
        {**base, "aud": []},
        {**base, "aud": None},
        {**base, "sub": 42},
        {**base, "sub": ""},
        {**base, "exp": "tomorrow"},
        {**base, "nbf": now + 3600},
        {**base, "scope": {"nested": ["x"]}},
        {**base, "scope": ["a", 1]},
        {**base, "scp": 7},
        {**base, "sub": "u" * 257},
        {**base, "scope": "s" * 1025},
    ]
    hostile = [_rs256({"alg": "RS256", "kid": "k1"}, claims, key) for claims in signed_claims]
    for kid in (42, ["k1"], {"k": 1}, "", "../../etc/passwd", "k1\x00", "x" * 4000):
        hostile.append(_rs256({"alg": "RS256", "kid": kid}, base, key))
    payload = _b64(base)
    hostile += [
        (_b64({"alg": "RS256", "kid": "k1"}) + b"." + payload).decode(),  # two segments
        (_b64(b"not json") + b"." + payload + b".c2ln").decode(),
        (_b64([1, 2]) + b"." + payload + b".c2ln").decode(),
        (_b64({"alg": ["RS256"], "kid": "k1"}) + b"." + payload + b".c2ln").decode(),
        (_b64({"alg": "RS256", "kid": "k1"}) + b"." + _b64(b"[1]") + b".c2ln").decode(),
        (_b64({"alg": "RS256", "kid": "k1", "jku": idp.url + "/evil"}) + b"." + payload + b".c2ln").decode(),
    ]
    fetches = idp.fetches
    for number, token in enumerate(hostile):
        response = _get(stack, token)
        assert response.status_code == 401, (number, response.status_code)
        assert response.json()["code"] == "unauthorized"
    assert idp.fetches - fetches <= 1  # an unknown kid may cause one (rate-limited) refetch, nothing more
    assert "unhandled_error" not in stack.gateway.log()


def test_an_issuers_role_claim_maps_its_tokens_to_roles(stack: GatewayStack, idp: IdentityProvider) -> None:
    """Contract §12: an external issuer may name a ``role_claim`` (a dotted path) and a ``role_map``; the role
    reaches the upstream in ``X-Tenant-Token`` and ``/_gateway/me``; unmapped values give no role."""
    tenant = _tenant(stack, "ext-roles")
    trusted = _trust(stack, idp, tenant, "ext-roles-api", role_claim="realm_access.roles",
                     role_map={"acme-admins": "admin", "acme-readers": "viewer"})  # fmt: skip
    assert trusted["role_claim"] == "realm_access.roles"
    assert trusted["role_map"] == {"acme-admins": "admin", "acme-readers": "viewer"}
    cases = {
        "admin": ["acme-readers", "acme-admins"],  # several: the highest
        "viewer": ["acme-readers", "other"],
        None: ["somebody-else"],
    }
    for expected, roles in cases.items():
        token = _token(idp, "ext-roles-api", sub=f"u-{expected}", realm_access={"roles": roles})
        _accepted(stack, token)
        identity = pyjwt.decode(_seen(_get(stack, token))["x-tenant-token"], options={"verify_signature": False})
        assert identity.get("role") == expected, roles
        me = httpx.get(stack.gateway.url + "/_gateway/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert me.status_code == 200, me.text
        assert me.json()["role"] == expected
    bad = stack.admin.post(
        f"/admin/tenants/{tenant['id']}/jwt-issuers",
        json={"issuer": idp.issuer, "audience": "ext-roles-2", "jwks_url": idp.jwks_url, "role_map": {"x": "root"}},
    )
    assert bad.status_code == 422, bad.text
