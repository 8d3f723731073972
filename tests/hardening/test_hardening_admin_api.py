"""Attacks on the admin API over real HTTP: the tenant-service (and, for its tokens, a gateway) as real processes.

What an attacker controls here: the bearer token, every body field, the path and query parameters, the body's
size and content type. Each test sends hostile values through one of those and checks the answer (a 4xx
problem+json with a code, never a 5xx) and that nothing changed behind it. The in-process suites
(tests/integration/test_admin_*.py, test_auth_and_secrets.py) cover the ordinary validation cases; these cover
what they do not: the whole reserved list, homoglyphs, strict JSON types, content types, unknown query parameters,
oversized and chunked bodies on the wire, and tokens a gateway issues.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from support.assertions import KEYLIKE, assert_problem, uniq
from support.gateway_support import EchoUpstream, GatewayProcess
from support.platform import Installation, TenantServiceProcess, cluster_objects
from tenantry_common.jwt_keys import generate_signing_key
from tenantry_common.slugs import RESERVED_SLUGS

TWO_MB = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def svc(installation: Installation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TenantServiceProcess]:
    proc = TenantServiceProcess(installation, Path(tmp_path_factory.mktemp("admin-api")) / "tenant-service.log").start()
    yield proc
    proc.stop()


@pytest.fixture
def admin(svc: TenantServiceProcess) -> Iterator[httpx.Client]:
    with svc.client() as client:
        yield client


def create(admin: httpx.Client, stem: str, **extra: object) -> dict:
    response = admin.post("/admin/tenants", json={"slug": uniq(stem), "name": stem.title(), **extra})
    assert response.status_code == 201, response.text
    return response.json()


def assert_unchanged(admin: httpx.Client, tenant: dict) -> None:
    """The tenant is as it was created: active, same name, plan, limits, database and domains."""
    now = admin.get(f"/admin/tenants/{tenant['id']}").json()
    for field in ("status", "slug", "name", "plan", "limits", "database", "domains", "settings", "upstream_url"):
        assert now[field] == tenant[field], field


# --- slugs -----------------------------------------------------------------------------------------------------

HOSTILE_SLUGS = [
    "a'; DROP TABLE tenants;--",
    "x' OR '1'='1",
    'acme"; SELECT pg_sleep(10);--',
    "acme$$; DROP DATABASE postgres; $$",
    "a" * 33,  # one over the limit
    "a" * 64,
    "a" * 65,
    "a" * 1000,
    "\u0430\u0441me",  # Cyrillic "ac" + Latin "me": looks like "acme"
    "\u0430\u0441\u043c\u0435",  # all Cyrillic
    "\uff41\uff43\uff4d\uff45",  # fullwidth "acme"
    "\u212aite",  # Kelvin sign: lowercases to ASCII "kite"
    "acme\u200b",  # zero-width space
    "acme\u0301",  # combining acute accent
    "adm\u0131n",  # dotless i: "admin"
    "\u202eemca",  # right-to-left override
    "acm\u00e9",
    "_gateway",
    "t",
    "ab",
    "-acme",
    "acme-",
    "-",
    "ac--me",
    "ADMIN",
    "Www",
    "acme.",
    "acme/..",
    "%61cme",
    "acme\n",
    " acme",
]
#: The reserved names the contract lists, and every name the code reserves.
RESERVED = sorted(
    {"www", "api", "admin", "app", "gateway", "internal", "template", "postgres", "public", "root"} | RESERVED_SLUGS
)


async def test_hostile_and_reserved_slugs_get_422_and_create_no_database_or_role(
    admin: httpx.Client, installation: Installation, pg_url: str
) -> None:
    before = await cluster_objects(pg_url, installation.prefix)
    for slug in HOSTILE_SLUGS + RESERVED:
        response = admin.post("/admin/tenants", json={"slug": slug, "name": "Hostile"})
        body = assert_problem(response, 422, "validation_error", field="slug")
        assert "SELECT" not in body["detail"], slug
    assert await cluster_objects(pg_url, installation.prefix) == before
    conn = await asyncpg.connect(installation.database_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('tenants') IS NOT NULL")
        slugs = {r["slug"] for r in await conn.fetch("SELECT slug FROM tenants")}
    finally:
        await conn.close()
    assert not slugs & set(HOSTILE_SLUGS + RESERVED)
    assert admin.get("/admin/tenants", params={"limit": 1}).status_code == 200


def test_a_homoglyph_or_non_ascii_ref_never_finds_or_changes_a_tenant(
    admin: httpx.Client, svc: TenantServiceProcess
) -> None:
    tenant = create(admin, "kite")
    slug = tenant["slug"]  # "t-kite-xxxxxx"
    arabic_digits = tenant["id"].translate(
        str.maketrans("0123456789", "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669")
    )
    lookalikes = [
        slug.replace("k", "\u212a"),  # Kelvin sign, which str.lower() turns into "k"
        slug.replace("i", "\u0130"),  # dotted capital I
        slug.replace("i", "\u0131"),  # dotless i
        slug.replace("k", "\uff4b"),  # fullwidth k
        slug + "\u200b",
        arabic_digits,  # the tenant's id in Arabic-Indic digits, which uuid.UUID() reads
    ]
    assert admin.get(f"/admin/tenants/{slug.upper()}").status_code == 200  # ASCII case does not matter
    service = {"Authorization": f"Bearer {svc.installation.service_token}"}
    for ref in lookalikes:
        assert_problem(admin.get(f"/admin/tenants/{ref}"), 404, "tenant_not_found")
        assert_problem(admin.post(f"/admin/tenants/{ref}/suspend"), 404, "tenant_not_found")
        assert_problem(admin.delete(f"/admin/tenants/{ref}", params={"purge": "true"}), 404, "tenant_not_found")
        assert_problem(admin.get(f"/internal/v1/tenants/{ref}/database", headers=service), 404, "tenant_not_found")
        assert_problem(admin.get("/admin/audit", params={"tenant": ref}), 404, "tenant_not_found")
    assert_unchanged(admin, tenant)


@pytest.mark.parametrize(
    "ref",
    [
        "..",
        "..%2F..%2Fplans",
        "%2e%2e",
        "%2e%2e%2fplans",
        "acme%2F..%2F..",
        "%F0%9F%92%A9",
        "%C0%AE%C0%AE",
        "%ff",
        "a" * 64,
    ],
)
def test_path_tricks_in_a_ref_are_404_never_another_resource(admin: httpx.Client, ref: str) -> None:
    response = admin.get(f"/admin/tenants/{ref}")
    assert response.status_code in (400, 404, 422), response.text
    assert_problem(response, response.status_code)
    assert "items" not in response.json()


# --- body fields -----------------------------------------------------------------------------------------------


def test_unknown_and_privileged_fields_on_every_body_get_422_naming_them_and_change_nothing(
    admin: httpx.Client,
) -> None:
    tenant = create(admin, "fields")
    other = create(admin, "fields-other")
    tid, key_id = tenant["id"], tenant["api_key"]["id"]
    keys_before = admin.get(f"/admin/tenants/{tid}/api-keys").json()["items"]
    plan = "hz-" + secrets.token_hex(3)
    limits = {"requests_per_minute": 5, "requests_per_day": 50}
    issuer = {"issuer": "https://hz.example.com/", "audience": "hz", "jwks_url": "https://hz.example.com/jwks"}
    cases = [
        ("POST", f"/admin/tenants/{tid}/api-keys", {"name": "k", "key": "tk_" + "A" * 38}, "key"),
        ("POST", f"/admin/tenants/{tid}/api-keys", {"name": "k", "key_hash": "00" * 32}, "key_hash"),
        ("POST", f"/admin/tenants/{tid}/api-keys", {"name": "k", "tenant_id": other["id"]}, "tenant_id"),
        ("POST", f"/admin/tenants/{tid}/api-keys", {"name": "k", "id": key_id}, "id"),
        ("POST", f"/admin/tenants/{tid}/api-keys", {"name": "k", "prefix": "tk_AAAAAAAA"}, "prefix"),
        ("POST", f"/admin/tenants/{tid}/api-keys", {"name": "k", "status": "active"}, "status"),
        ("POST", f"/admin/tenants/{tid}/api-keys", {"name": "k", "revoked_at": None}, "revoked_at"),
        ("POST", f"/admin/tenants/{tid}/api-keys/{key_id}/rotate", {"key": "tk_" + "B" * 38}, "key"),
        (
            "POST",
            f"/admin/tenants/{tid}/api-keys/{key_id}/rotate",
            {"expires_at": "2099-01-01T00:00:00Z"},
            "expires_at",
        ),
        ("POST", f"/admin/tenants/{tid}/api-keys/{key_id}/rotate", {"grace_seconds": 1, "revoke": False}, "revoke"),
        (
            "POST",
            f"/admin/tenants/{tid}/domains",
            {"domain": "hz-a.example.com", "tenant_id": other["id"]},
            "tenant_id",
        ),
        ("POST", f"/admin/tenants/{tid}/domains", {"domain": "hz-b.example.com", "verified": True}, "verified"),
        ("POST", f"/admin/tenants/{tid}/jwt-issuers", {**issuer, "tenant_id": other["id"]}, "tenant_id"),
        ("POST", f"/admin/tenants/{tid}/jwt-issuers", {**issuer, "id": key_id}, "id"),
        ("POST", f"/admin/tenants/{tid}/jwt-issuers", {**issuer, "secret": "shared"}, "secret"),
        ("PUT", f"/admin/plans/{plan}", {"limits": limits, "name": "free"}, "name"),
        ("PUT", f"/admin/plans/{plan}", {"limits": limits, "created_at": "2020-01-01T00:00:00Z"}, "created_at"),
        ("PUT", f"/admin/plans/{plan}", {"limits": {**limits, "max_databases": 9}}, "limits.max_databases"),
        ("PATCH", f"/admin/tenants/{tid}", {"limits": {"requests_per_minute": 1, "role": "superuser"}}, "limits.role"),
        ("PATCH", f"/admin/tenants/{tid}", {"db_name": "postgres"}, "db_name"),
        ("PATCH", f"/admin/tenants/{tid}", {"db_password": "x"}, "db_password"),
        ("PATCH", f"/admin/tenants/{tid}", {"revision": 1}, "revision"),
    ]
    for method, path, body, field in cases:
        assert_problem(admin.request(method, path, json=body), 422, "validation_error", field=field)
    assert admin.get(f"/admin/tenants/{tid}/api-keys").json()["items"] == keys_before
    assert admin.get(f"/admin/tenants/{tid}/jwt-issuers").json()["items"] == []
    assert plan not in {p["name"] for p in admin.get("/admin/plans").json()["items"]}
    assert_unchanged(admin, tenant)
    assert_unchanged(admin, other)


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/admin/tenants", {"limits": {"requests_per_minute": "10"}}, "limits.requests_per_minute"),
        ("POST", "/admin/tenants", {"limits": {"max_connections": 5.0}}, "limits.max_connections"),
        ("POST", "/admin/tenants", {"limits": {"requests_per_day": True}}, "limits.requests_per_day"),
        ("PATCH", "/admin/tenants/{ref}", {"limits": {"max_connections": "5"}}, "limits.max_connections"),
        ("PATCH", "/admin/tenants/{ref}", {"limits": {"requests_per_day": 1e3}}, "limits.requests_per_day"),
        ("PATCH", "/admin/tenants/{ref}", {"upstream_url": ["http://127.0.0.1:9"]}, "upstream_url"),
        ("POST", "/admin/tenants/{ref}/api-keys/{key_id}/rotate", {"grace_seconds": "60"}, "grace_seconds"),
        ("POST", "/admin/tenants/{ref}/api-keys/{key_id}/rotate", {"grace_seconds": 60.5}, "grace_seconds"),
        ("POST", "/admin/tenants/{ref}/api-keys", {"name": "k", "expires_at": 4102444800}, "expires_at"),
        ("POST", "/admin/tenants/{ref}/api-keys", {"name": 7}, "name"),
        (
            "PUT",
            "/admin/plans/{plan}",
            {"limits": {"requests_per_minute": "600", "requests_per_day": 10}},
            "limits.requests_per_minute",
        ),
        (
            "PUT",
            "/admin/plans/{plan}",
            {"limits": {"requests_per_minute": 1, "requests_per_day": "1e9"}},
            "limits.requests_per_day",
        ),
    ],
)
def test_json_values_of_the_wrong_type_are_not_coerced_but_get_422(
    admin: httpx.Client, method: str, path: str, body: dict, field: str
) -> None:
    tenant = create(admin, "strict")
    plan = "hz-" + secrets.token_hex(3)
    url = path.format(ref=tenant["id"], key_id=tenant["api_key"]["id"], plan=plan)
    if url == "/admin/tenants":
        body = {"slug": uniq("strict-new"), "name": "Strict", **body}
    assert_problem(admin.request(method, url, json=body), 422, "validation_error", field=field)
    if url == "/admin/tenants":
        assert_problem(admin.get(f"/admin/tenants/{body['slug']}"), 404, "tenant_not_found")
    keys = admin.get(f"/admin/tenants/{tenant['id']}/api-keys").json()["items"]
    assert [(k["id"], k["status"], k["rotated_to"]) for k in keys] == [(tenant["api_key"]["id"], "active", None)]
    assert plan not in {p["name"] for p in admin.get("/admin/plans").json()["items"]}
    assert_unchanged(admin, tenant)


def test_the_same_values_with_the_right_json_types_are_accepted(admin: httpx.Client) -> None:
    """The control for the test above: it is the type, not the value, that was refused."""
    tenant = create(admin, "typed", limits={"requests_per_minute": 10, "max_connections": 5})
    assert tenant["limits"]["requests_per_minute"] == 10
    patched = admin.patch(f"/admin/tenants/{tenant['id']}", json={"limits": {"requests_per_day": 1000}})
    assert patched.status_code == 200, patched.text
    rotated = admin.post(
        f"/admin/tenants/{tenant['id']}/api-keys/{tenant['api_key']['id']}/rotate", json={"grace_seconds": 60}
    )
    assert rotated.status_code == 201, rotated.text
    made = admin.post(
        f"/admin/tenants/{tenant['id']}/api-keys", json={"name": "k", "expires_at": "2099-01-01T00:00:00Z"}
    )
    assert made.status_code == 201, made.text
    plan = "hz-" + secrets.token_hex(3)
    put = admin.put(f"/admin/plans/{plan}", json={"limits": {"requests_per_minute": 600, "requests_per_day": 10}})
    assert put.status_code == 200, put.text
    assert admin.get("/admin/tenants", params={"limit": "10"}).status_code == 200  # query strings are strings


# --- content type, malformed and oversized bodies ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "encode"),
    [
        ("text/plain", json.dumps),
        ("application/x-www-form-urlencoded", lambda b: "&".join(f"{k}={v}" for k, v in b.items())),
        (
            "multipart/form-data; boundary=x",
            lambda b: f'--x\r\nContent-Disposition: form-data; name="slug"\r\n\r\n{b["slug"]}\r\n--x--\r\n',
        ),
        ("application/xml", lambda b: f"<tenant><slug>{b['slug']}</slug></tenant>"),
        ("application/json-seq", json.dumps),
        ("application/jsonx", json.dumps),
        ("text/json", json.dumps),
        (None, json.dumps),
    ],
)
def test_a_body_not_declared_as_json_gets_415_and_creates_nothing(
    admin: httpx.Client, content_type: str | None, encode
) -> None:
    body = {"slug": uniq("ctype"), "name": "Ctype"}
    headers = {"Content-Type": content_type} if content_type else {}
    request = admin.build_request("POST", "/admin/tenants", content=encode(body).encode(), headers=headers)
    if content_type is None:
        request.headers.pop("Content-Type", None)
    assert_problem(admin.send(request), 415, "unsupported_media_type")
    assert_problem(admin.get(f"/admin/tenants/{body['slug']}"), 404, "tenant_not_found")
    tenant = create(admin, "ctype-patch")
    patch = admin.patch(f"/admin/tenants/{tenant['id']}", content=json.dumps({"name": "X"}).encode(), headers=headers)
    assert_problem(patch, 415, "unsupported_media_type")
    assert_unchanged(admin, tenant)


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/merge-patch+json"]
)
def test_json_media_types_with_parameters_or_a_json_suffix_are_accepted(admin: httpx.Client, content_type: str) -> None:
    slug = uniq("ctok")
    response = admin.post(
        "/admin/tenants", content=json.dumps({"slug": slug, "name": "Ok"}), headers={"Content-Type": content_type}
    )
    assert response.status_code == 201, response.text
    patched = admin.patch(
        f"/admin/tenants/{slug}", content=json.dumps({"name": "Ok 2"}), headers={"Content-Type": content_type}
    )
    assert patched.status_code == 200, patched.text


@pytest.mark.parametrize(
    "raw",
    [
        b'{"slug": "hz-trunc", "name": ',
        b'{"slug": "hz-trail", "name": "x"} {}',
        b'{"slug": "hz-nan", "name": NaN}',
        b"{'slug': 'hz-quote', 'name': 'x'}",
        b'{"slug": "hz-utf", "name": "\xff\xfe"}',
        b'\xef\xbb\xbf{"slug": "hz-bom", "name": "x"}',
        b'{"slug": "hz-comment", /* x */ "name": "x"}',
        b'{"slug": "hz-ctl", "name": "a\x01b"}',
        rb'{"slug": "hz-surrogate", "name": "a\ud800b"}',  # a lone UTF-16 surrogate
        rb'{"slug": "hz-low", "name": "a\udc00"}',
    ],
)
def test_malformed_json_gets_400_malformed_body_on_every_body_endpoint(admin: httpx.Client, raw: bytes) -> None:
    tenant = create(admin, "malformed")
    ref, key_id = tenant["id"], tenant["api_key"]["id"]
    json_type = {"Content-Type": "application/json"}
    for method, path in [
        ("POST", "/admin/tenants"),
        ("PATCH", f"/admin/tenants/{ref}"),
        ("POST", f"/admin/tenants/{ref}/api-keys"),
        ("POST", f"/admin/tenants/{ref}/api-keys/{key_id}/rotate"),
        ("POST", f"/admin/tenants/{ref}/domains"),
        ("POST", f"/admin/tenants/{ref}/jwt-issuers"),
        ("PUT", "/admin/plans/hz-malformed"),
    ]:
        response = admin.request(method, path, content=raw, headers=json_type)
        assert_problem(response, 400, "malformed_body")
        assert raw.decode(errors="replace")[:20] not in response.json()["detail"]
    assert_unchanged(admin, tenant)
    assert len(admin.get(f"/admin/tenants/{ref}/api-keys").json()["items"]) == 1


def _big_body() -> bytes:
    return json.dumps({"slug": uniq("big"), "name": "Big", "settings": {"blob": "x" * TWO_MB}}).encode()


def test_a_two_megabyte_body_gets_413_on_every_body_endpoint_and_the_service_keeps_answering(
    admin: httpx.Client, svc: TenantServiceProcess
) -> None:
    tenant = create(admin, "big")
    ref, key_id = tenant["id"], tenant["api_key"]["id"]
    json_type = {"Content-Type": "application/json"}
    for method, path in [
        ("POST", "/admin/tenants"),
        ("PATCH", f"/admin/tenants/{ref}"),
        ("POST", f"/admin/tenants/{ref}/api-keys"),
        ("POST", f"/admin/tenants/{ref}/api-keys/{key_id}/rotate"),
        ("POST", f"/admin/tenants/{ref}/domains"),
        ("POST", f"/admin/tenants/{ref}/jwt-issuers"),
        ("PUT", "/admin/plans/hz-big"),
    ]:
        assert_problem(admin.request(method, path, content=_big_body(), headers=json_type), 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while reading
        body = _big_body()
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    chunked = admin.post("/admin/tenants", content=chunks(), headers=json_type)
    assert "content-length" not in chunked.request.headers
    assert_problem(chunked, 413, "payload_too_large")
    assert httpx.get(svc.url + "/healthz", timeout=10).status_code == 200
    assert_unchanged(admin, tenant)
    assert len(admin.get(f"/admin/tenants/{ref}/api-keys").json()["items"]) == 1


# --- query parameters -----------------------------------------------------------------------------------------


def test_unknown_query_parameters_get_422_naming_them_and_do_nothing(
    admin: httpx.Client, svc: TenantServiceProcess
) -> None:
    tenant = create(admin, "query")
    ref = tenant["id"]
    # A typo must not turn a purge into a soft delete, or a filtered list into the whole registry.
    assert_problem(admin.delete(f"/admin/tenants/{ref}", params={"pruge": "true"}), 422, field="pruge")
    assert_problem(admin.get("/admin/tenants", params={"stauts": "active"}), 422, field="stauts")
    assert_problem(admin.post(f"/admin/tenants/{ref}/suspend", params={"force": "1"}), 422, field="force")
    assert_problem(admin.get("/admin/plans", params={"x": "1"}), 422, field="x")
    assert_problem(admin.get("/admin/audit", params={"tenant_id": ref}), 422, field="tenant_id")
    assert_problem(
        admin.post("/admin/tenants", params={"dry_run": "1"}, json={"slug": uniq("q"), "name": "Q"}),
        422,
        field="dry_run",
    )
    gateway = {"Authorization": f"Bearer {svc.installation.gateway_token}"}
    assert_problem(admin.get("/internal/v1/directory", params={"sinc": "0"}, headers=gateway), 422, field="sinc")
    # A repeated parameter is refused, not resolved to its last value as a proxy in front may not do.
    assert_problem(admin.get("/admin/tenants?limit=1&limit=2"), 422, field="limit")
    assert_problem(admin.delete(f"/admin/tenants/{ref}?purge=false&purge=true"), 422, field="purge")
    assert_unchanged(admin, tenant)
    assert admin.get("/admin/tenants", params={"status": "active", "limit": 5}).status_code == 200
    assert httpx.get(svc.url + "/healthz", params={"probe": "1"}, timeout=10).status_code == 200


# --- credentials ----------------------------------------------------------------------------------------------


@dataclass
class Tokens:
    api_key: str
    access_token: str
    tenant_token: str


@pytest.fixture(scope="module")
def gateway_tokens(
    svc: TenantServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict, Tokens]]:
    """A tenant, and the tokens a real gateway derives from its API key: an access token and an X-Tenant-Token."""
    folder = Path(tmp_path_factory.mktemp("admin-api-gateway"))
    echo = EchoUpstream(folder / "echo.log").start()
    gateway = GatewayProcess(
        svc.installation, svc.url, echo.url, folder / "gateway.log", "k1:" + generate_signing_key()
    )
    gateway.start()
    try:
        with svc.client() as admin:
            tenant = create(admin, "tokens")
        key = tenant["api_key"]["key"]
        deadline = time.monotonic() + 15  # until the gateway's directory has the new tenant
        while (
            issued := httpx.post(gateway.url + "/_gateway/token", headers={"X-API-Key": key}, timeout=10)
        ).status_code != 200:
            assert time.monotonic() < deadline, issued.text
            time.sleep(0.1)
        token = issued.json()["access_token"]
        echoed = httpx.get(gateway.url + "/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert echoed.status_code == 200, echoed.text
        tenant_token = next(v for k, v in echoed.json()["headers"] if k.lower() == "x-tenant-token")
        yield tenant, Tokens(api_key=key, access_token=token, tenant_token=tenant_token)
    finally:
        gateway.stop()
        echo.stop()


def test_tenant_and_gateway_credentials_get_401_on_the_admin_and_internal_apis(
    svc: TenantServiceProcess, admin: httpx.Client, gateway_tokens: tuple[dict, Tokens]
) -> None:
    tenant, tokens = gateway_tokens
    inst = svc.installation
    tid, key_id = tenant["id"], tenant["api_key"]["id"]
    plans_before = admin.get("/admin/plans").json()["items"]
    bearer = {
        "tenant api key": tokens.api_key,
        "gateway access token": tokens.access_token,
        "gateway X-Tenant-Token": tokens.tenant_token,
        "service token": inst.service_token,
        "gateway service token": inst.gateway_token,
        "8 KB token": "a" * 8192,
        "admin token twice": f"{inst.admin_token} {inst.admin_token}",
        "admin token, other case": inst.admin_token.swapcase(),
    }
    on_admin = [{"Authorization": f"Bearer {v}"} for v in bearer.values()] + [
        {"X-API-Key": tokens.api_key},
        {"Authorization": f"Bearer {tokens.access_token}", "X-API-Key": tokens.api_key},
        {"Authorization": b"Bearer \xff\xfe" + inst.admin_token.encode()},
        {"Authorization": f"Token {inst.admin_token}"},
        {"Cookie": f"token={inst.admin_token}"},
    ]
    admin_calls = [
        ("GET", "/admin/tenants", None),
        ("GET", f"/admin/tenants/{tid}", None),
        ("PATCH", f"/admin/tenants/{tid}", {"name": "Owned"}),
        ("POST", f"/admin/tenants/{tid}/suspend", None),
        ("GET", f"/admin/tenants/{tid}/api-keys", None),
        ("POST", f"/admin/tenants/{tid}/api-keys", {"name": "stolen"}),
        ("POST", f"/admin/tenants/{tid}/api-keys/{key_id}/rotate", {}),
        ("GET", f"/admin/tenants/{tid}/jwt-issuers", None),
        (
            "POST",
            f"/admin/tenants/{tid}/jwt-issuers",
            {"issuer": "https://evil.example.com/", "audience": "x", "jwks_url": "https://evil.example.com/jwks"},
        ),
        ("DELETE", f"/admin/tenants/{tid}/jwt-issuers/{key_id}", None),
        ("DELETE", f"/admin/tenants/{tid}", None),
        ("PUT", "/admin/plans/free", {"limits": {"requests_per_minute": 1, "requests_per_day": 1}}),
        ("GET", "/admin/audit", None),
    ]
    with httpx.Client(base_url=svc.url, timeout=30) as anonymous:
        for headers in on_admin:
            for method, path, body in admin_calls:
                response = anonymous.request(method, path, json=body, headers=headers)
                assert_problem(response, 401, "unauthorized")
                assert response.headers["www-authenticate"].lower().startswith("bearer")
        on_internal = [tokens.api_key, tokens.access_token, tokens.tenant_token, inst.admin_token]
        for token in on_internal:
            for path in (
                f"/internal/v1/tenants/{tid}/database",
                "/internal/v1/directory",
                f"/internal/v1/directory/tenants/{tid}",
            ):
                response = anonymous.get(path, headers={"Authorization": f"Bearer {token}"})
                assert_problem(response, 401, "unauthorized")
                assert "password" not in response.text
                assert "hash" not in response.text
        # Service tokens hold only their app's scope: the notes app cannot map the tenants, the gateway cannot vend.
        out_of_scope = {
            inst.service_token: ("/internal/v1/directory", f"/internal/v1/directory/tenants/{tid}"),
            inst.gateway_token: (f"/internal/v1/tenants/{tid}/database",),
        }
        for token, paths in out_of_scope.items():
            for path in paths:
                response = anonymous.get(path, headers={"Authorization": f"Bearer {token}"})
                assert_problem(response, 403, "insufficient_scope")
                assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
                assert "password" not in response.text
                assert "hash" not in response.text
                assert "tenants" not in response.json()
    after = admin.get(f"/admin/tenants/{tid}").json()
    assert (after["status"], after["name"]) == ("active", tenant["name"])
    keys = admin.get(f"/admin/tenants/{tid}/api-keys").json()["items"]
    assert [(k["id"], k["status"]) for k in keys] == [(key_id, "active")]
    assert admin.get(f"/admin/tenants/{tid}/jwt-issuers").json()["items"] == []
    assert admin.get("/admin/plans").json()["items"] == plans_before


# --- secrets --------------------------------------------------------------------------------------------------


def test_no_secret_in_any_list_get_error_response_or_log_line(service: TenantServiceProcess) -> None:
    """Every secret the platform holds, sent and read every way the API allows, shows up only where it must."""
    inst = service.installation
    internal = {"Authorization": f"Bearer {inst.service_token}"}
    directory = {"Authorization": f"Bearer {inst.gateway_token}"}
    with service.client() as admin:
        tenant = create(admin, "secrets")
        tid, first = tenant["id"], tenant["api_key"]
        second = admin.post(f"/admin/tenants/{tid}/api-keys", json={"name": "second"}).json()
        rotated = admin.post(f"/admin/tenants/{tid}/api-keys/{first['id']}/rotate", json={"grace_seconds": 5}).json()
        password = admin.get(f"/internal/v1/tenants/{tid}/database", headers=internal).json()["password"]
        keys = [first["key"], second["key"], rotated["key"]]
        secrets_held = {
            *keys,
            password,
            inst.admin_token,
            inst.service_token,
            inst.gateway_token,
            inst.api_key_hash_secret,
            inst.encryption_keys.partition(":")[2],
        }
        reads = [
            admin.get("/admin/tenants", params={"limit": 200}),
            admin.get("/admin/tenants", params={"q": "secrets"}),
            admin.get(f"/admin/tenants/{tid}"),
            admin.get(f"/admin/tenants/{tenant['slug']}"),
            admin.get(f"/admin/tenants/{tid}/api-keys"),
            admin.get(f"/admin/tenants/{tid}/usage"),
            admin.get("/admin/audit", params={"tenant": tid, "limit": 200}),
            admin.get("/admin/audit", params={"limit": 200}),
            admin.get("/admin/plans"),
            admin.get("/internal/v1/directory", headers=directory),
            admin.get(f"/internal/v1/directory/tenants/{tid}", headers=directory),
            admin.get("/schema/openapi.json"),
        ]
        errors = [
            admin.get("/admin/tenants", params={"token": password}),
            admin.get(f"/admin/tenants/{tid}", params={"key": keys[0]}),
            admin.patch(f"/admin/tenants/{tid}", json={"password": password}),
            admin.patch(f"/admin/tenants/{tid}", json={"name": {"nested": password}}),
            admin.patch(f"/admin/tenants/{tid}", json={"limits": {"requests_per_minute": keys[1]}}),
            admin.post(f"/admin/tenants/{tid}/api-keys", json={"name": "x", "key": keys[2]}),
            admin.post(
                "/admin/tenants",
                content=f'{{"slug": "{keys[0]}", "name": '.encode(),
                headers={"Content-Type": "application/json"},
            ),
            admin.post(
                "/admin/tenants",
                content=f"slug={password}".encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ),
            admin.get(f"/admin/tenants/{keys[0]}"),
            httpx.get(service.url + "/admin/tenants", headers={"Authorization": f"Bearer {password}"}, timeout=30),
            httpx.get(service.url + "/admin/tenants", headers={"X-API-Key": keys[0]}, timeout=30),
        ]
    for response in reads:
        assert response.status_code == 200, (response.request.url, response.text)
    for response in errors:
        assert 400 <= response.status_code < 500, (response.request.url, response.text)
    for response in reads + errors:
        label = f"{response.request.method} {response.request.url.path}"
        if response.request.url.path.endswith(keys[0]):
            continue  # a 404 names the path it was asked for, here a key the client itself put there
        text = response.text + "\n" + "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        for secret in secrets_held:
            assert secret not in text, f"{label} leaks a secret"
        assert not KEYLIKE.search(text), label
    service.stop()
    log = service.log()
    assert '"request"' in log
    for secret in secrets_held:
        assert secret not in log, "the service log leaks a secret"
    assert not KEYLIKE.search(log), KEYLIKE.search(log)
