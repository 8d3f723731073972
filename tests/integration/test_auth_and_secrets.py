"""Black-box tests of authentication, credential vending, secrecy and health (contract §3, §7 and §8)."""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest
import structlog

from support.assertions import KEYLIKE, assert_problem, uniq
from support.assertions import create_tenant as create
from support.platform import Installation, TenantServiceProcess, wait_for
from tenant_service.app import create_app
from tenant_service.context import AppContext


def assert_unauthorized(response) -> None:
    assert_problem(response, 401, "unauthorized")
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer"), response.headers


def fake_jwt(tenant_id: str) -> str:
    """A token shaped like a tenant JWT (unsigned): it must get nowhere."""

    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'tid': tenant_id, 'sub': 'x', 'scope': '*'})}.sig"


def service_headers(installation: Installation) -> dict[str, str]:
    return {"Authorization": f"Bearer {installation.service_token}"}


def internal_paths(tenant_id: str) -> list[str]:
    """Every endpoint of the internal API."""
    return [
        f"/internal/v1/tenants/{tenant_id}/database",
        "/internal/v1/directory/",
        f"/internal/v1/directory/tenants/{tenant_id}",
    ]


# --- admin authentication -------------------------------------------------------------------------------------


_SOME_ID = "5b0a3c1e-8f7d-4c1a-9a4e-2f6b7d8c9e01"


def admin_calls(ref: str, key_id: str) -> list[tuple[str, str, dict | None]]:
    return [
        ("GET", "/admin/tenants", None),
        ("POST", "/admin/tenants", {"slug": uniq("intruder"), "name": "Intruder"}),
        ("GET", f"/admin/tenants/{ref}", None),
        ("PATCH", f"/admin/tenants/{ref}", {"name": "Owned"}),
        ("POST", f"/admin/tenants/{ref}/suspend", None),
        ("POST", f"/admin/tenants/{ref}/resume", None),
        ("DELETE", f"/admin/tenants/{ref}", None),
        ("DELETE", f"/admin/tenants/{ref}?purge=true", None),
        ("POST", f"/admin/tenants/{ref}/restore", None),
        ("GET", f"/admin/tenants/{ref}/usage", None),
        ("GET", f"/admin/tenants/{ref}/api-keys", None),
        ("POST", f"/admin/tenants/{ref}/api-keys", {"name": "stolen"}),
        ("DELETE", f"/admin/tenants/{ref}/api-keys/{key_id}", None),
        ("POST", f"/admin/tenants/{ref}/api-keys/{key_id}/rotate", {}),
        ("POST", f"/admin/tenants/{ref}/domains", {"domain": "intruder.example.com"}),
        ("DELETE", f"/admin/tenants/{ref}/domains/intruder.example.com", None),
        ("GET", "/admin/plans", None),
        ("PUT", "/admin/plans/free", {"limits": {"requests_per_minute": 1, "requests_per_day": 1}}),
        ("GET", "/admin/audit", None),
        ("POST", "/admin/webhooks", {"url": "http://127.0.0.1:9/intruder", "events": ["tenant.created"]}),
        ("GET", "/admin/webhooks", None),
        ("GET", f"/admin/webhooks/{_SOME_ID}", None),
        ("DELETE", f"/admin/webhooks/{_SOME_ID}", None),
        ("GET", f"/admin/webhooks/{_SOME_ID}/deliveries", None),
        ("POST", f"/admin/webhooks/{_SOME_ID}/deliveries/{_SOME_ID}/redeliver", None),
    ]


def bad_credentials(installation: Installation, api_key: str) -> dict[str, dict[str, str] | None]:
    return {
        "no token": None,
        "wrong token": {"Authorization": "Bearer " + "adm-" + secrets.token_urlsafe(24)},
        "admin token with a suffix": {"Authorization": f"Bearer {installation.admin_token}x"},
        "admin token prefix": {"Authorization": f"Bearer {installation.admin_token[:-1]}"},
        "service token": {"Authorization": f"Bearer {installation.service_token}"},
        "tenant api key": {"Authorization": f"Bearer {api_key}"},
        "tenant api key header": {"X-API-Key": api_key},
        "basic scheme": {"Authorization": f"Basic {installation.admin_token}"},
        "empty bearer": {"Authorization": "Bearer "},
        "token without scheme": {"Authorization": installation.admin_token},
    }


@pytest.mark.parametrize(
    "credential",
    [
        "no token",
        "wrong token",
        "admin token with a suffix",
        "admin token prefix",
        "service token",
        "tenant api key",
        "tenant api key header",
        "basic scheme",
        "empty bearer",
        "token without scheme",
    ],
)
async def test_admin_api_without_a_valid_admin_token_gets_401_with_www_authenticate(
    api, installation: Installation, credential: str
) -> None:
    tenant = await create(api, uniq("authz"))
    headers = bad_credentials(installation, tenant["api_key"]["key"])[credential]
    admin = api.headers.pop("Authorization")
    try:
        for method, path, body in admin_calls(tenant["id"], tenant["api_key"]["id"]):
            response = await api.request(method, path, json=body, headers=headers or {})
            assert_unauthorized(response)
            assert tenant["api_key"]["key"] not in response.text
            assert installation.admin_token not in response.text
            assert installation.service_token not in response.text
    finally:
        api.headers["Authorization"] = admin
    # Nothing changed.
    got = (await api.get(f"/admin/tenants/{tenant['id']}")).json()
    assert got["status"] == "active"
    assert got["name"] == tenant["name"]
    keys = (await api.get(f"/admin/tenants/{tenant['id']}/api-keys")).json()["items"]
    assert [(k["id"], k["status"]) for k in keys] == [(tenant["api_key"]["id"], "active")]


async def test_admin_bearer_scheme_is_case_insensitive(api, installation: Installation) -> None:
    response = await api.get("/admin/plans", headers={"Authorization": f"bearer {installation.admin_token}"})
    assert response.status_code == 200, response.text


# --- internal API: credential vending -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "credential", ["no token", "wrong token", "admin token", "tenant api key", "tenant jwt", "basic scheme"]
)
async def test_internal_api_refuses_anything_but_a_service_token(
    api, installation: Installation, credential: str
) -> None:
    tenant = await create(api, uniq("intauth"))
    headers = {
        "no token": None,
        "wrong token": {"Authorization": "Bearer svc-" + secrets.token_urlsafe(24)},
        "admin token": {"Authorization": f"Bearer {installation.admin_token}"},
        "tenant api key": {"Authorization": f"Bearer {tenant['api_key']['key']}"},
        "tenant jwt": {"Authorization": f"Bearer {fake_jwt(tenant['id'])}"},
        "basic scheme": {"Authorization": f"Basic {installation.service_token}"},
    }[credential]
    admin = api.headers.pop("Authorization")
    try:
        for path in internal_paths(tenant["id"]):
            response = await api.get(path, headers=headers or {})
            assert_unauthorized(response)
            assert "password" not in response.json()
            assert "tenants" not in response.json()
    finally:
        api.headers["Authorization"] = admin


async def test_internal_api_vends_the_tenants_own_credentials(api, installation: Installation, pg_url: str) -> None:
    tenant = await create(api, uniq("vend"))
    other = await create(api, uniq("vendother"))
    response = await api.get(f"/internal/v1/tenants/{tenant['id']}/database", headers=service_headers(installation))
    assert response.status_code == 200, response.text
    creds = response.json()
    assert set(creds) >= {"host", "port", "database", "user", "password"}
    assert creds["database"] == tenant["database"]["name"]
    assert creds["user"] == tenant["database"]["name"]
    assert creds["user"] != other["database"]["name"]
    assert creds["host"] == tenant["database"]["host"]
    assert creds["port"] == tenant["database"]["port"]
    assert len(creds["password"]) >= 20
    conn = await asyncpg.connect(
        host=creds["host"],
        port=creds["port"],
        user=creds["user"],
        password=creds["password"],
        database=creds["database"],
    )
    try:
        assert await conn.fetchval("SELECT current_user") == creds["user"]
        assert await conn.fetchval("SELECT current_database()") == tenant["database"]["name"]
        assert await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False
    finally:
        await conn.close()
    other_creds = (
        await api.get(f"/internal/v1/tenants/{other['id']}/database", headers=service_headers(installation))
    ).json()
    assert other_creds["user"] == other["database"]["name"]
    assert other_creds["password"] != creds["password"]


async def test_vends_are_audited(api, installation: Installation) -> None:
    tenant = await create(api, uniq("vendaudit"))
    for _ in range(2):
        response = await api.get(f"/internal/v1/tenants/{tenant['id']}/database", headers=service_headers(installation))
        assert response.status_code == 200
    password = response.json()["password"]
    audit = await api.get("/admin/audit", params={"tenant": tenant["id"]})
    assert audit.status_code == 200
    vends = [e for e in audit.json()["items"] if e["action"] == "credentials.vend"]
    assert len(vends) == 2
    for entry in vends:
        assert entry["actor"] == "service:app"
        assert entry["tenant_id"] == tenant["id"]
        assert entry["target"] == tenant["slug"]
    assert password not in audit.text


async def test_vend_for_a_suspended_tenant_gets_403_tenant_suspended(api, installation: Installation) -> None:
    tenant = await create(api, uniq("vendsusp"))
    assert (await api.post(f"/admin/tenants/{tenant['id']}/suspend")).status_code == 200
    response = await api.get(f"/internal/v1/tenants/{tenant['id']}/database", headers=service_headers(installation))
    assert_problem(response, 403, "tenant_suspended")
    assert "password" not in response.json()
    assert (await api.post(f"/admin/tenants/{tenant['id']}/resume")).status_code == 200
    again = await api.get(f"/internal/v1/tenants/{tenant['id']}/database", headers=service_headers(installation))
    assert again.status_code == 200


@pytest.mark.parametrize("ref", ["00000000-0000-4000-8000-000000000000", "sec-never-was", "x' OR '1'='1", "ab%00cd"])
async def test_vend_for_an_unknown_tenant_gets_404(api, installation: Installation, ref: str) -> None:
    response = await api.get(f"/internal/v1/tenants/{ref}/database", headers=service_headers(installation))
    assert_problem(response, 404, "tenant_not_found")


async def test_vend_for_a_deleted_or_purged_tenant_gets_404(api, installation: Installation) -> None:
    tenant = await create(api, uniq("venddel"))
    assert (await api.delete(f"/admin/tenants/{tenant['id']}")).status_code == 200
    url = f"/internal/v1/tenants/{tenant['id']}/database"
    assert_problem(await api.get(url, headers=service_headers(installation)), 404, "tenant_not_found")
    assert (await api.delete(f"/admin/tenants/{tenant['id']}", params={"purge": "true"})).status_code == 200
    assert_problem(await api.get(url, headers=service_headers(installation)), 404, "tenant_not_found")


async def test_service_token_cannot_reach_the_admin_api_nor_admin_token_the_internal_api(
    api, installation: Installation
) -> None:
    tenant = await create(api, uniq("crossed"))
    assert_unauthorized(await api.get("/admin/tenants", headers=service_headers(installation)))
    response = await api.get(f"/internal/v1/tenants/{tenant['id']}/database")  # the client's admin token
    assert_unauthorized(response)


# --- service token scopes -------------------------------------------------------------------------------------


def assert_insufficient_scope(response: httpx.Response, scope: str) -> None:
    body = assert_problem(response, 403, "insufficient_scope")
    challenge = response.headers["www-authenticate"]
    assert challenge.lower().startswith("bearer"), challenge
    assert 'error="insufficient_scope"' in challenge
    assert f'scope="{scope}"' in challenge
    assert scope in body["detail"]
    assert set(body) <= {"type", "title", "status", "detail", "code", "instance"}


async def test_a_tenant_app_token_cannot_read_the_directory(api, installation: Installation) -> None:
    tenant = await create(api, uniq("scopeapp"))
    for path in ("/internal/v1/directory/", f"/internal/v1/directory/tenants/{tenant['id']}"):
        response = await api.get(path, headers=service_headers(installation))
        assert_insufficient_scope(response, "directory:read")
        assert "tenants" not in response.json()
        assert tenant["slug"] not in response.text
    # ... while it still has credentials vended.
    vended = await api.get(f"/internal/v1/tenants/{tenant['id']}/database", headers=service_headers(installation))
    assert vended.status_code == 200, vended.text


async def test_a_gateway_token_cannot_have_credentials_vended(api, installation: Installation) -> None:
    tenant = await create(api, uniq("scopegw"))
    gateway = {"Authorization": f"Bearer {installation.gateway_token}"}
    response = await api.get(f"/internal/v1/tenants/{tenant['id']}/database", headers=gateway)
    assert_insufficient_scope(response, "credentials:vend")
    assert "password" not in response.text
    audit = (await api.get("/admin/audit", params={"tenant": tenant["id"]})).json()["items"]
    assert [e for e in audit if e["action"] == "credentials.vend"] == []
    # ... while it still reads the directory.
    page = await api.get(f"/internal/v1/directory/tenants/{tenant['id']}", headers=gateway)
    assert page.status_code == 200, page.text
    assert [t["id"] for t in page.json()["tenants"]] == [tenant["id"]]


async def test_an_unknown_token_is_401_not_403_on_every_internal_endpoint(api, installation: Installation) -> None:
    tenant = await create(api, uniq("scopeunk"))
    for token in (
        "svc-" + secrets.token_urlsafe(24),
        installation.gateway_token + "x",
        installation.service_token[:-1],
    ):
        for path in internal_paths(tenant["id"]):
            assert_unauthorized(await api.get(path, headers={"Authorization": f"Bearer {token}"}))


def test_every_internal_endpoint_names_a_known_scope(api) -> None:
    from tenant_service.internal.scopes import SCOPE_OPT, SERVICE_SCOPES

    app = api._transport.app
    internal = [route for route in app.routes if route.path.startswith("/internal")]
    assert len(internal) == 13
    for route in internal:
        for handler in route.route_handlers:
            if handler.http_methods != {"OPTIONS"}:  # Litestar's own OPTIONS answer carries no data
                assert handler.opt.get(SCOPE_OPT) in SERVICE_SCOPES, (route.path, handler.http_methods)


async def test_the_openapi_document_names_each_internal_endpoints_scope(api) -> None:
    paths = (await api.get("/schema/openapi.json")).json()["paths"]
    assert paths["/internal/v1/tenants/{tenant_id}/database"]["get"]["security"] == [
        {"serviceToken": ["credentials:vend"]}
    ]
    for path in ("/internal/v1/directory", "/internal/v1/directory/tenants/{tenant_id}"):
        operation = paths[path]["get"]
        assert operation["security"] == [{"serviceToken": ["directory:read"]}]
        assert "403" in operation["responses"]


@contextlib.asynccontextmanager
async def app_with(installation: Installation, **env: str) -> AsyncIterator[httpx.AsyncClient]:
    """The tenant-service in-process with other token settings, on the session installation's databases."""
    ctx = AppContext.build(installation.settings(**env))
    try:
        app = create_app(ctx, run_background=False)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver.local",
            headers={"Authorization": f"Bearer {installation.admin_token}"},
        ) as client:
            yield client
    finally:
        await ctx.close()


async def test_legacy_unscoped_tokens_keep_every_scope_for_one_release_with_a_warning(
    installation: Installation,
) -> None:
    legacy = "svc-legacy-" + secrets.token_urlsafe(24)
    unscoped = {"SERVICE_TOKEN": "", "GATEWAY_SERVICE_TOKEN": "", "SERVICE_TOKEN_SCOPES": ""}
    with structlog.testing.capture_logs() as logs:
        async with app_with(installation, SERVICE_TOKENS=f"shared:{legacy}", **unscoped) as client:
            tenant = await create(client, uniq("legacy"))
            for path in internal_paths(tenant["id"]):
                response = await client.get(path, headers={"Authorization": f"Bearer {legacy}"})
                assert response.status_code == 200, (path, response.text)
            audit = (await client.get("/admin/audit", params={"tenant": tenant["id"]})).json()["items"]
    assert [e["actor"] for e in audit if e["action"] == "credentials.vend"] == ["service:shared"]
    warnings = [e for e in logs if e["event"] == "service_token_unscoped"]
    assert [(e["service"], e["log_level"]) for e in warnings] == [("shared", "warning")]
    assert "SERVICE_TOKEN_SCOPES=shared=" in warnings[0]["detail"]
    assert legacy not in str(logs)


async def test_named_tokens_get_the_scopes_service_token_scopes_gives_them(installation: Installation) -> None:
    notes, ops, crawler = (f"svc-{name}-" + secrets.token_urlsafe(24) for name in ("notes", "ops", "crawler"))
    async with app_with(
        installation,
        SERVICE_TOKEN="",
        GATEWAY_SERVICE_TOKEN="",
        SERVICE_TOKENS=f"notes:{notes},ops:{ops},crawler:{crawler}",
        SERVICE_TOKEN_SCOPES="notes=credentials:vend, ops=directory:read+credentials:vend,crawler=directory:read",
    ) as client:
        tenant = await create(client, uniq("named"))
        vend, directory, one = internal_paths(tenant["id"])
        allowed = {notes: {vend}, ops: {vend, directory, one}, crawler: {directory, one}}
        for token, paths in allowed.items():
            for path in (vend, directory, one):
                response = await client.get(path, headers={"Authorization": f"Bearer {token}"})
                if path in paths:
                    assert response.status_code == 200, (path, response.text)
                else:
                    assert_problem(response, 403, "insufficient_scope")
        audit = (await client.get("/admin/audit", params={"tenant": tenant["id"]})).json()["items"]
        vends = [e["actor"] for e in audit if e["action"] == "credentials.vend"]
        assert sorted(vends) == ["service:notes", "service:ops"]  # the audit entry names the app


# --- no secret ever -------------------------------------------------------------------------------------------


class Recorder:
    """Every response of a workflow, with the secrets each one is allowed to carry."""

    def __init__(self) -> None:
        self.responses: list[tuple[str, httpx.Response, set[str]]] = []

    def add(
        self, label: str, response: httpx.Response, allowed: Iterator[str] | set[str] = frozenset()
    ) -> httpx.Response:
        self.responses.append((label, response, set(allowed)))
        return response

    def assert_clean(self, secret_values: set[str]) -> None:
        assert secret_values
        for label, response, allowed in self.responses:
            text = response.text + "\n" + "\n".join(f"{k}: {v}" for k, v in response.headers.items())
            for secret in secret_values - allowed:
                assert secret not in text, f"{label} leaks a secret"
            keylike = set(KEYLIKE.findall(text))
            assert keylike <= allowed, f"{label} contains something like an API key"


async def test_no_response_of_a_full_workflow_contains_a_password_or_an_api_key(
    api, installation: Installation
) -> None:
    rec = Recorder()
    slug = uniq("workflow")
    created = rec.add("create", await api.post("/admin/tenants", json={"slug": slug, "name": "Workflow"}))
    assert created.status_code == 201
    tenant = created.json()
    tid = tenant["id"]
    first_key = tenant["api_key"]["key"]
    rec.responses[-1][2].add(first_key)

    async_created = await api.post(
        "/admin/tenants", json={"slug": uniq("workflow-async"), "name": "Async"}, headers={"Prefer": "respond-async"}
    )
    assert async_created.status_code == 202
    async_key = async_created.json()["api_key"]["key"]
    rec.add("create async", async_created, {async_key})

    made = await api.post(f"/admin/tenants/{tid}/api-keys", json={"name": "second", "scopes": ["notes:read"]})
    assert made.status_code == 201
    second_key = made.json()["key"]
    rec.add("create key", made, {second_key})

    rotated = await api.post(
        f"/admin/tenants/{tid}/api-keys/{tenant['api_key']['id']}/rotate", json={"grace_seconds": 60}
    )
    assert rotated.status_code == 201
    rotated_key = rotated.json()["key"]
    rec.add("rotate key", rotated, {rotated_key})

    vend = await api.get(f"/internal/v1/tenants/{tid}/database", headers=service_headers(installation))
    assert vend.status_code == 200
    password = vend.json()["password"]
    rec.add("vend", vend, {password})

    async def settled() -> bool:
        got = await api.get(f"/admin/tenants/{async_created.json()['id']}")
        return got.json()["status"] == "active"

    await wait_for(settled, timeout=30, interval=0.1)
    async_vend = await api.get(
        f"/internal/v1/tenants/{async_created.json()['id']}/database", headers=service_headers(installation)
    )
    assert async_vend.status_code == 200
    async_password = async_vend.json()["password"]
    rec.add("vend async", async_vend, {async_password})

    domain = f"wf-{secrets.token_hex(4)}.example.com"
    rec.add("patch", await api.patch(f"/admin/tenants/{tid}", json={"name": "Workflow 2", "settings": {"a": 1}}))
    rec.add("domain", await api.post(f"/admin/tenants/{tid}/domains", json={"domain": domain}))
    rec.add("suspend", await api.post(f"/admin/tenants/{tid}/suspend"))
    rec.add(
        "vend suspended", await api.get(f"/internal/v1/tenants/{tid}/database", headers=service_headers(installation))
    )
    rec.add("resume", await api.post(f"/admin/tenants/{tid}/resume"))
    rec.add("list", await api.get("/admin/tenants", params={"limit": 200}))
    rec.add("list deep", await api.get("/admin/tenants", params={"q": "workflow"}))
    rec.add("get", await api.get(f"/admin/tenants/{tid}"))
    rec.add("get slug", await api.get(f"/admin/tenants/{slug}"))
    rec.add("keys", await api.get(f"/admin/tenants/{tid}/api-keys"))
    rec.add("usage", await api.get(f"/admin/tenants/{tid}/usage"))
    rec.add("plans", await api.get("/admin/plans"))
    rec.add("audit", await api.get("/admin/audit", params={"limit": 200}))
    rec.add("audit tenant", await api.get("/admin/audit", params={"tenant": tid, "limit": 200}))
    rec.add("openapi", await api.get("/schema/openapi.json"))
    rec.add("metrics", await api.get("/metrics"))
    rec.add("readyz", await api.get("/readyz"))
    # Errors, including ones provoked with a secret in the request.
    rec.add("401 with key", await api.get("/admin/tenants", headers={"Authorization": f"Bearer {second_key}"}))
    rec.add("401 internal", await api.get(f"/internal/v1/tenants/{tid}/database"))
    rec.add("404", await api.get("/admin/tenants/sec-nobody-here"))
    rec.add("422", await api.patch(f"/admin/tenants/{tid}", json={"password": password}))
    rec.add("422 plan", await api.patch(f"/admin/tenants/{tid}", json={"plan": "nope"}))
    rec.add("409", await api.post(f"/admin/tenants/{tid}/restore"))
    rec.add("409 slug", await api.post("/admin/tenants", json={"slug": slug, "name": "Again"}))
    rec.add("delete", await api.delete(f"/admin/tenants/{tid}"))
    rec.add("get deleted", await api.get(f"/admin/tenants/{tid}"))
    rec.add("restore", await api.post(f"/admin/tenants/{tid}/restore"))
    rec.add("purge", await api.delete(f"/admin/tenants/{async_created.json()['id']}", params={"purge": "true"}))
    rec.add("audit after purge", await api.get("/admin/audit", params={"limit": 200}))
    for label, response, _ in rec.responses:
        assert response.status_code < 500, f"{label}: {response.text}"
    rec.assert_clean(
        {
            first_key,
            async_key,
            second_key,
            rotated_key,
            password,
            async_password,
            installation.admin_token,
            installation.service_token,
            installation.api_key_hash_secret,
        }
    )


@pytest.fixture
def service_client(service: TenantServiceProcess) -> Iterator[httpx.Client]:
    with service.client() as client:
        yield client


def test_service_log_contains_no_password_and_no_api_key(
    service: TenantServiceProcess, service_client: httpx.Client, installation: Installation
) -> None:
    admin = service_client
    internal = {"Authorization": f"Bearer {installation.service_token}"}
    created = admin.post("/admin/tenants", json={"slug": uniq("logs"), "name": "Logs"})
    assert created.status_code == 201, created.text
    tenant = created.json()
    tid = tenant["id"]
    keys = [tenant["api_key"]["key"]]
    async_created = admin.post(
        "/admin/tenants", json={"slug": uniq("logs-async"), "name": "Logs Async"}, headers={"Prefer": "respond-async"}
    )
    assert async_created.status_code == 202, async_created.text
    keys.append(async_created.json()["api_key"]["key"])
    made = admin.post(f"/admin/tenants/{tid}/api-keys", json={"name": "log-test"})
    assert made.status_code == 201
    keys.append(made.json()["key"])
    rotated = admin.post(f"/admin/tenants/{tid}/api-keys/{made.json()['id']}/rotate", json={"grace_seconds": 60})
    assert rotated.status_code == 201
    keys.append(rotated.json()["key"])
    vend = admin.get(f"/internal/v1/tenants/{tid}/database", headers=internal)
    assert vend.status_code == 200, vend.text
    passwords = [vend.json()["password"]]
    # Provoke errors and log lines with secrets in the request.
    assert admin.get("/admin/tenants", headers={"Authorization": f"Bearer {keys[2]}"}).status_code == 401
    assert admin.get("/admin/tenants", headers={"X-API-Key": keys[1], "Authorization": ""}).status_code == 401
    assert admin.get("/admin/tenants", params={"q": keys[0]}).status_code == 200
    assert admin.get(f"/admin/tenants/{keys[3]}").status_code == 404
    assert admin.get("/admin/plans", headers={"X-Request-ID": keys[0]}).status_code == 200
    assert admin.patch(f"/admin/tenants/{tid}", json={"password": passwords[0]}).status_code == 422
    assert admin.patch(f"/admin/tenants/{tid}", json={"name": passwords[0]}).status_code == 200
    assert admin.post(f"/admin/tenants/{tid}/suspend").status_code == 200
    assert admin.get(f"/internal/v1/tenants/{tid}/database", headers=internal).status_code == 403
    assert admin.post(f"/admin/tenants/{tid}/resume").status_code == 200
    assert admin.get(f"/admin/tenants/{tid}/usage").status_code == 200
    assert admin.get("/admin/audit").status_code == 200
    assert admin.delete(f"/admin/tenants/{tid}/api-keys/{rotated.json()['id']}").status_code == 204

    deadline = time.monotonic() + 30
    while admin.get(f"/admin/tenants/{async_created.json()['id']}").json()["status"] != "active":
        assert time.monotonic() < deadline, "async provisioning did not finish"
        time.sleep(0.1)
    vend_async = admin.get(f"/internal/v1/tenants/{async_created.json()['id']}/database", headers=internal)
    assert vend_async.status_code == 200
    passwords.append(vend_async.json()["password"])
    assert admin.delete(f"/admin/tenants/{tid}").status_code == 200
    assert admin.delete(f"/admin/tenants/{tid}", params={"purge": "true"}).status_code == 200
    service.stop()
    log = service.log()
    assert '"request"' in log or "request" in log
    assert "tenant_registered" in log
    for secret in [*keys, *passwords, installation.admin_token, installation.service_token]:
        assert secret not in log, "the service log leaks a secret"
    assert not KEYLIKE.search(log), KEYLIKE.search(log)


# --- health, metrics, OpenAPI ---------------------------------------------------------------------------------


async def test_openapi_schema_is_served_as_json(api) -> None:
    response = await api.get("/schema/openapi.json")
    assert response.status_code == 200, response.text
    assert "json" in response.headers["content-type"]  # application/vnd.oai.openapi+json
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert "/admin/tenants" in schema["paths"]
    assert "/internal/v1/tenants/{tenant_id}/database" in schema["paths"]


async def test_healthz_is_200_without_a_token(api) -> None:
    api.headers.pop("Authorization")
    response = await api.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_readyz_is_200_with_checks(api) -> None:
    api.headers.pop("Authorization")
    response = await api.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"] == {"database": "ok", "tenant_cluster": "ok", "redis": "ok"}


async def test_metrics_is_200_prometheus_text(api) -> None:
    await api.get("/admin/plans")
    api.headers.pop("Authorization")
    response = await api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "tenantry" in response.text
    assert "# TYPE" in response.text


def test_real_process_serves_health_metrics_and_openapi(service: TenantServiceProcess) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/schema/openapi.json"):
        response = httpx.get(service.url + path, timeout=10)
        assert response.status_code == 200, (path, response.text)
    unauth = httpx.get(service.url + "/admin/tenants", timeout=10)
    assert_unauthorized(unauth)
