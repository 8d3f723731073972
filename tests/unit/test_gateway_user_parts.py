"""The gateway's pieces for tenant users (contract §12) that need no platform: users' access tokens and revoked
sessions, external issuers' role claims, the X-Tenant-Token's role, the client address behind trusted proxies,
request bodies, and the tenant-service client's answers (against a small HTTP server in this process)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any, cast

import jwt as pyjwt
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from gateway.accounts import LoginBody, decode_body, on_behalf_of
from gateway.auth_client import AuthClient, RelayedProblem
from gateway.authenticate import Authenticator, Principal, claimed_role
from gateway.config import parse_networks
from gateway.directory import Directory
from gateway.errors import GatewayError
from gateway.exchange import Exchange
from gateway.jwks import JwksCache
from gateway.resolve import Resolver
from gateway.tokens import TokenIssuer
from tenantry_app import TenantIdentity, require_role
from tenantry_common.directory import DirectoryIssuer, DirectoryKey, DirectoryPage, DirectoryTenant
from tenantry_common.jwt_keys import KeyRing, generate_signing_key
from tenantry_common.problems import ProblemError

TENANT = "00000000-0000-0000-0000-000000000001"
OTHER = "00000000-0000-0000-0000-000000000002"


def _tenant(tenant_id: str, revision: int, *, revoked: list[str] | None = None) -> DirectoryTenant:
    return DirectoryTenant(
        id=tenant_id,
        slug="acme" if tenant_id == TENANT else "globex",
        status="active",
        plan="free",
        limits={},
        upstream_url=None,
        domains=[],
        keys=[DirectoryKey(id=f"key-{tenant_id[-1]}", hash=tenant_id[-1] * 64, scopes=["notes"], expires_at=None,
                           revoked=False)],
        revision=revision,
        jwt_issuers=[
            DirectoryIssuer(
                id="idp-1",
                issuer="https://idp/",
                audience=f"api-{tenant_id[-1]}",
                jwks_url="https://idp/jwks",
                algorithms=["RS256"],
                role_claim="realm_access.roles",
                role_map={"boss": "admin", "staff": "user"},
            )
        ],
        revoked_sessions=revoked or [],
    )  # fmt: skip


@pytest.fixture
def parts() -> tuple[Directory, Authenticator, TokenIssuer, KeyRing]:
    directory = Directory()
    directory.apply_page(
        DirectoryPage(revision=2, tenants=[_tenant(TENANT, 1), _tenant(OTHER, 2)], removed=[], full=True)
    )
    keys = KeyRing.from_config("k1:" + generate_signing_key("EdDSA"), "EdDSA")
    authenticator = Authenticator(directory, b"secret", keys, issuer="tenantry-gateway", audience="tenantry", leeway=5)
    tokens = TokenIssuer(
        keys,
        issuer="tenantry-gateway",
        audience="tenantry",
        upstream_audience="tenantry-upstream",
        access_ttl=900,
        tenant_ttl=60,
    )
    return directory, authenticator, tokens, keys


def _user(role: str = "viewer", session: str = "session-1", tenant_id: str = TENANT) -> Principal:
    return Principal(tenant_id, "user-1", "", role=role, user_id="user-1", session_id=session)


def _refused(call: Any) -> GatewayError:
    with pytest.raises(GatewayError) as excinfo:
        call()
    return excinfo.value


# users' access tokens -------------------------------------------------------------------------------
def test_a_users_access_token_names_the_user_role_and_session(parts: Any) -> None:
    _, authenticator, tokens, _ = parts
    token = tokens.access_token(_user("admin"))
    claims = pyjwt.decode(token, options={"verify_signature": False})
    assert (claims["sub"], claims["tid"], claims["role"], claims["sid"], claims["scope"]) == (
        "user-1", TENANT, "admin", "session-1", ""
    )  # fmt: skip
    assert {"iat", "nbf", "exp", "jti", "iss", "aud"} <= set(claims)
    assert authenticator.jwt(token) == _user("admin")


def test_a_revoked_session_is_refused_even_after_its_token_was_verified(parts: Any) -> None:
    directory, authenticator, tokens, _ = parts
    token = tokens.access_token(_user())
    assert authenticator.jwt(token) is not None
    directory.apply(_tenant(TENANT, 3, revoked=["session-1"]))
    assert directory.by_id[TENANT].revoked_sessions == frozenset({"session-1"})
    assert _refused(lambda: authenticator.jwt(token)).status == 401
    assert authenticator.jwt(tokens.access_token(_user(session="session-2"))) is not None


def test_user_tokens_of_unknown_tenants_roles_or_without_session_get_401(parts: Any) -> None:
    directory, authenticator, tokens, keys = parts
    now = int(time.time())
    base = {"iss": "tenantry-gateway", "aud": "tenantry", "sub": "user-1", "tid": TENANT, "iat": now, "exp": now + 60}
    for claims in (
        {**base, "role": "owner", "sid": "s"},
        {**base, "role": "admin"},
        {**base, "role": "admin", "sid": "s" * 65},
        {**base, "role": "admin", "sid": "s", "sub": 7},
        {**base, "role": "admin", "sid": "s", "tid": "00000000-0000-0000-0000-000000000009"},
    ):
        refused = _refused(lambda c=claims: authenticator.jwt(keys.sign(c)))  # type: ignore[misc]
        assert (refused.status, refused.code) == (401, "unauthorized")
    token = tokens.access_token(_user())
    directory.remove(TENANT)
    assert _refused(lambda: authenticator.jwt(token)).status == 401


def test_api_key_tokens_work_as_before_and_carry_no_role(parts: Any) -> None:
    _, authenticator, tokens, _ = parts
    principal = Principal(TENANT, "key-1", "notes")
    token = tokens.access_token(principal)
    claims = pyjwt.decode(token, options={"verify_signature": False})
    assert "role" not in claims
    assert "sid" not in claims
    assert authenticator.jwt(token) == principal


def test_a_user_token_of_one_tenant_sent_to_another_gets_tenant_mismatch(parts: Any) -> None:
    directory, authenticator, tokens, _ = parts
    principal = authenticator.jwt(tokens.access_token(_user()))
    location = Resolver(directory, "localhost").resolve("globex.localhost", "/", b"/", None)
    refused = _refused(lambda: authenticator.tenant_of(principal, location))
    assert (refused.status, refused.code) == (403, "tenant_mismatch")


def test_the_tenant_token_carries_uid_and_role_for_users_and_role_for_mapped_external_tokens(parts: Any) -> None:
    directory, _, tokens, _ = parts
    tenant = directory.by_id[TENANT]

    def claims(principal: Principal) -> dict[str, Any]:
        decoded: dict[str, Any] = pyjwt.decode(
            tokens.tenant_token(tenant, principal), options={"verify_signature": False}
        )
        return decoded

    user = claims(_user("viewer"))
    assert (user["sub"], user["uid"], user["role"]) == ("user-1", "user-1", "viewer")
    assert claims(_user("admin"))["role"] == "admin"  # the role is part of the cache key
    external = claims(Principal(TENANT, "alice", "", issuer="idp-1", role="user"))
    assert (external["sub"], external["idp"], external["role"]) == ("alice", "idp-1", "user")
    assert "uid" not in external
    key = claims(Principal(TENANT, "key-1", "notes"))
    assert "role" not in key
    assert "uid" not in key


# external issuers' roles ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("claims", "role_claim", "role_map", "expected"),
    [
        ({"role": "viewer"}, "role", {}, "viewer"),
        ({"role": "owner"}, "role", {}, ""),
        ({"roles": ["viewer", "admin", "user"]}, "roles", {}, "admin"),
        ({"realm_access": {"roles": ["staff", "offline"]}}, "realm_access.roles", {"staff": "user"}, "user"),
        ({"realm_access": {"roles": ["boss", "staff"]}}, "realm_access.roles", {"staff": "user", "boss": "admin"},
         "admin"),
        ({"realm_access": {"roles": ["admin"]}}, "realm_access.roles", {"boss": "admin"}, ""),  # the map decides
        ({"https://example.com/roles": ["viewer"]}, "https://example.com/roles", {}, "viewer"),
        ({"realm_access": ["admin"]}, "realm_access.roles", {}, ""),
        ({"role": 3}, "role", {}, ""),
        ({"role": ["x" * 300, {"admin": 1}, None, "viewer"]}, "role", {}, "viewer"),
        ({"role": ["user"] + ["x"] * 100 + ["admin"]}, "role", {}, "user"),  # only the first values are read
        ({}, "role", {}, ""),
        ({"group": "ops"}, "group", {"ops": "superuser"}, ""),  # a map to no role gives none
    ],
)  # fmt: skip
def test_role_claims_map_to_the_highest_known_role(
    claims: dict[str, Any], role_claim: str, role_map: dict[str, str], expected: str
) -> None:
    assert claimed_role(claims, role_claim, role_map) == expected


def test_the_directory_carries_issuers_role_claims() -> None:
    directory = Directory()
    directory.apply(_tenant(TENANT, 1))
    issuer = directory.issuers["https://idp/"]["api-1"]
    assert (issuer.role_claim, dict(issuer.role_map)) == ("realm_access.roles", {"boss": "admin", "staff": "user"})
    legacy = msgspec.json.decode(
        b'{"id":"i","issuer":"x","audience":"y","jwks_url":"https://j","algorithms":["RS256"]}', type=DirectoryIssuer
    )
    assert (legacy.role_claim, legacy.role_map) == (None, {})


def test_on_behalf_of_names_the_user_or_the_external_subject() -> None:
    assert on_behalf_of(_user("admin")) == "user:user-1"
    assert on_behalf_of(Principal(TENANT, "alice", "", issuer="idp-1", role="admin")) == "idp:idp-1:alice"


# the client's address --------------------------------------------------------------------------------
def _exchange(peer: str, x_for: bytes | None) -> Exchange:
    return cast("Exchange", SimpleNamespace(conn=SimpleNamespace(peer=peer), request=SimpleNamespace(x_for=x_for)))


def test_the_client_address_is_the_peer_unless_it_is_a_trusted_proxy() -> None:
    resolver = Resolver(Directory(), "localhost", parse_networks("TRUSTED_PROXIES", ("10.0.0.0/8",)))
    assert resolver.client_address(_exchange("203.0.113.9", b"198.51.100.1")) == "203.0.113.9"
    assert resolver.client_address(_exchange("10.0.0.2", b"198.51.100.1")) == "198.51.100.1"
    # The client's own entries (left of what the trusted proxies saw) are not believed.
    assert resolver.client_address(_exchange("10.0.0.2", b"1.1.1.1, 198.51.100.1, 10.0.0.7")) == "198.51.100.1"
    assert resolver.client_address(_exchange("10.0.0.2", b"10.0.0.9")) == "10.0.0.9"
    assert resolver.client_address(_exchange("10.0.0.2", None)) == "10.0.0.2"
    assert len(resolver.client_address(_exchange("10.0.0.2", b"x" * 500))) == 64


# request bodies -------------------------------------------------------------------------------------
def test_bodies_that_are_not_json_get_400_and_wrong_shapes_422_naming_the_field() -> None:
    decoder = msgspec.json.Decoder(LoginBody).decode
    assert decode_body(b'{"email": "a@b.c", "password": "pw"}', decoder) == LoginBody("a@b.c", "pw")
    refused = _refused(lambda: decode_body(b"{not json", decoder))
    assert (refused.status, refused.code) == (400, "malformed_body")
    for body, field in (
        (b'{"email": "a@b.c"}', "password"),
        (b'{"email": 3, "password": "pw"}', "email"),
        (b'{"email": "a@b.c", "password": "pw", "role": "admin"}', "role"),
        (b'{"email": "a@b.c", "password": "' + b"p" * 2000 + b'"}', "password"),
        (b"[]", "body"),
    ):
        refused = _refused(lambda b=body: decode_body(b, decoder))  # type: ignore[misc]
        assert (refused.status, refused.code) == (422, "validation_error")
        assert [e.field for e in refused.errors] == [field]
        assert "pw" not in str(refused.detail)  # no value is echoed


# the tenant-service client --------------------------------------------------------------------------
class _TenantService:
    """Answers each path with what the test put there: (status, content type, body, headers, delay)."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, str, bytes, dict[str, str], float]] = {}
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        handler = self._handler()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                service.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                status, content_type, answer, headers, delay = service.answers[self.path.split("?")[0]]
                time.sleep(delay)
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(answer)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def tenant_service() -> Iterator[_TenantService]:
    service = _TenantService()
    try:
        yield service
    finally:
        service.stop()


def _call(url: str, path: str, **kwargs: Any) -> Any:
    async def scenario() -> Any:
        client = AuthClient(url, "service-token", timeout=0.5)
        try:
            return await client.call("POST", path, **kwargs)
        finally:
            await client.close()

    return asyncio.run(scenario())


def _problem(status: int, code: str) -> bytes:
    return json.dumps({"type": "x", "title": "t", "status": status, "detail": "d", "code": code,
                       "instance": "/internal/v1/auth/login"}).encode()  # fmt: skip


def test_refusals_of_the_tenant_service_reach_the_client_as_they_are(tenant_service: _TenantService) -> None:
    problem = "application/problem+json"
    tenant_service.answers["/internal/v1/auth/login"] = (
        429, problem, _problem(429, "too_many_attempts"), {"Retry-After": "60"}, 0
    )  # fmt: skip
    with pytest.raises(RelayedProblem) as excinfo:
        _call(tenant_service.url, "/internal/v1/auth/login", body=LoginBody("a@b.c", "hunter22"))
    relayed = excinfo.value
    assert relayed.status == 429
    assert (b"retry-after", b"60") in relayed.headers
    body = json.loads(relayed.body)
    assert body["code"] == "too_many_attempts"
    assert "instance" not in body
    method, path, headers, sent = tenant_service.seen[-1]
    assert (method, path, headers["authorization"]) == ("POST", "/internal/v1/auth/login", "Bearer service-token")
    assert json.loads(sent) == {"email": "a@b.c", "password": "hunter22"}


@pytest.mark.parametrize(
    "answer",
    [
        (500, "application/problem+json", _problem(500, "internal_error"), {}, 0.0),
        (502, "text/html", b"<html>bad gateway</html>", {}, 0.0),
        (404, "text/plain", b"not found", {}, 0.0),  # not a problem of the client's
        (403, "application/problem+json", _problem(403, "insufficient_scope"), {}, 0.0),  # the gateway's token
        (200, "application/json", b"{}", {}, 2.0),  # slower than the timeout
    ],
)
def test_a_failing_tenant_service_is_503_auth_unavailable(
    tenant_service: _TenantService, answer: tuple[int, str, bytes, dict[str, str], float]
) -> None:
    tenant_service.answers["/internal/v1/auth/refresh"] = answer
    with pytest.raises(GatewayError) as excinfo:
        _call(tenant_service.url, "/internal/v1/auth/refresh", body=b"{}")
    assert (excinfo.value.status, excinfo.value.code) == (503, "auth_unavailable")
    assert excinfo.value.headers["retry-after"]


def test_an_unreachable_tenant_service_is_503_auth_unavailable(tenant_service: _TenantService) -> None:
    url = tenant_service.url
    tenant_service.stop()
    with pytest.raises(GatewayError) as excinfo:
        _call(url, "/internal/v1/auth/login", body=b"{}")
    assert (excinfo.value.status, excinfo.value.code) == (503, "auth_unavailable")


# tenantry-app ---------------------------------------------------------------------------------------
def test_require_role_refuses_other_roles_and_lets_roleless_credentials_through() -> None:
    viewer = TenantIdentity(TENANT, "acme", "user-1", "", "free", role="viewer", user_id="user-1")
    require_role(viewer, "viewer")
    with pytest.raises(ProblemError) as excinfo:
        require_role(viewer, "admin", "user")
    assert (excinfo.value.status, excinfo.value.code) == (403, "forbidden")
    require_role(TenantIdentity(TENANT, "acme", "key-1", "notes", "free"), "admin")  # an API key: no role


# an external issuer's role, end to end through the authenticator ------------------------------------------
def test_an_external_tokens_role_follows_the_issuers_role_map_and_its_changes() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**json.loads(RSAAlgorithm.to_jwk(key.public_key())), "kid": "k1", "alg": "RS256"}
    jwks_body = json.dumps({"keys": [jwk]}).encode()

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(jwks_body)))
            self.end_headers()
            self.wfile.write(jwks_body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    jwks_url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"

    def tenant(revision: int, role_map: dict[str, str]) -> DirectoryTenant:
        issuer = DirectoryIssuer(
            id="idp-1", issuer="https://idp/", audience="api", jwks_url=jwks_url, algorithms=["RS256"],
            role_claim="realm_access.roles", role_map=role_map,
        )  # fmt: skip
        return msgspec.structs.replace(_tenant(TENANT, revision), jwt_issuers=[issuer])

    now = int(time.time())
    claims = {"iss": "https://idp/", "aud": "api", "sub": "alice", "exp": now + 300,
              "realm_access": {"roles": ["offline", "boss"]}}  # fmt: skip
    token = pyjwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})

    async def scenario() -> list[str]:
        directory = Directory()
        directory.apply(tenant(1, {"boss": "admin"}))
        keys = KeyRing.from_config("k1:" + generate_signing_key("EdDSA"), "EdDSA")
        jwks = JwksCache(timeout=2, min_refetch=1, max_age=600)
        authenticator = Authenticator(
            directory, b"s", keys, issuer="tenantry-gateway", audience="tenantry", leeway=5, jwks=jwks
        )
        roles = []
        try:
            assert authenticator.jwt(token) is None  # not verified yet
            roles.append((await authenticator.external(token)).role)
            cached = authenticator.jwt(token)
            assert cached is not None
            roles.append(cached.role)
            directory.apply(tenant(2, {"boss": "viewer"}))
            assert authenticator.jwt(token) is None  # the mapping changed: verified (and mapped) again
            roles.append((await authenticator.external(token)).role)
        finally:
            await jwks.close()
        return roles

    try:
        assert asyncio.run(scenario()) == ["admin", "admin", "viewer"]
    finally:
        server.shutdown()
        server.server_close()
