"""The whole path: admin creates tenants → clients call the gateway → the notes app writes each tenant's own DB."""

from __future__ import annotations

import concurrent.futures
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from support.platform import Installation, Tenant, wait_until
from support.stacks import gw, make_tenant, running_platform
from tenantry_common.jwt_keys import KeyRing
from tenantry_common.users_api import ROLES
from tenantry_devtools.platform import Platform

BUDGET = 5


@pytest.fixture(scope="module")
def platform(installation: Installation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with running_platform(installation, tmp_path_factory.mktemp("apps"), APP_CONNECTION_BUDGET=str(BUDGET)) as started:
        yield started


def test_two_tenants_write_notes_by_every_source_and_see_only_their_own(platform: Platform) -> None:
    acme = make_tenant(platform, "app-acme", domains=["notes-acme.example.com"])
    globex = make_tenant(platform, "app-globex", domains=["notes-globex.example.com"])
    for tenant in (acme, globex):
        token = httpx.post(platform.gateway.url + "/_gateway/token", headers={"X-API-Key": tenant.key}).json()[
            "access_token"
        ]
        sources = {
            "subdomain": ("/notes", {"X-API-Key": tenant.key, "Host": f"{tenant.slug}.localhost"}),
            "custom domain": ("/notes", {"X-API-Key": tenant.key, "Host": f"notes-{tenant.slug[4:]}.example.com"}),
            "path": (f"/t/{tenant.slug}/notes", {"X-API-Key": tenant.key}),
            "header": ("/notes", {"X-API-Key": tenant.key, "X-Tenant-ID": tenant.id}),
            "api key": ("/notes", {"Authorization": f"Bearer {tenant.key}"}),
            "jwt": ("/notes", {"Authorization": f"Bearer {token}"}),
        }
        for source, (path, headers) in sources.items():
            response = httpx.post(
                platform.gateway.url + path, headers=headers, json={"body": f"{tenant.slug} via {source}"}
            )
            assert response.status_code == 201, (tenant.slug, source, response.text)
    for tenant, other in ((acme, globex), (globex, acme)):
        bodies = [n["body"] for n in gw(platform, "GET", "/notes", tenant).json()["items"]]
        assert len(bodies) == 6
        assert all(b.startswith(tenant.slug + " via") for b in bodies)
        assert not any(other.slug in b for b in bodies)


def test_notes_page_newest_first_with_a_cursor(platform: Platform) -> None:
    tenant = make_tenant(platform, "app-pages")
    for i in range(5):
        assert gw(platform, "POST", "/notes", tenant, json={"body": f"note {i}"}).status_code == 201
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = gw(platform, "GET", "/notes", tenant, params=params).json()
        seen += [n["body"] for n in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"note {i}" for i in reversed(range(5))]
    for bad in ({"limit": "0"}, {"limit": "201"}, {"cursor": "abc"}, {"cursor": "-1"}):
        response = gw(platform, "GET", "/notes", tenant, params=bad)
        assert response.status_code == 422, (bad, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")


def test_whoami_reports_the_tenants_own_database(platform: Platform) -> None:
    a = make_tenant(platform, "app-who-a")
    b = make_tenant(platform, "app-who-b")
    for tenant in (a, b):
        body = gw(platform, "GET", "/whoami", tenant).json()
        assert body == {"tenant_id": tenant.id, "slug": tenant.slug, "database": tenant.database}
        admin_view = platform.admin.get(f"/admin/tenants/{tenant.id}").json()
        assert body["database"] == admin_view["database"]["name"]


def _user_token(installation: Installation, tenant: Tenant, role: str) -> str:
    """A tenant user's access token, as the gateway signs one at login (contract §12)."""
    now = int(time.time())
    claims = {"iss": "tenantry-gateway", "aud": "tenantry", "sub": f"user-{role}", "tid": tenant.id, "role": role,
              "sid": uuid.uuid4().hex, "scope": "", "iat": now, "exp": now + 300}  # fmt: skip
    return KeyRing.from_config(installation.jwt_signing_keys, "EdDSA").sign(claims)


def test_viewers_read_notes_but_get_403_writing_them_while_users_and_api_keys_write(
    platform: Platform, installation: Installation
) -> None:
    tenant = make_tenant(platform, "app-roles")
    as_role = {role: {"Authorization": f"Bearer {_user_token(installation, tenant, role)}"} for role in ROLES}
    for role in ("admin", "user"):
        created = httpx.post(platform.gateway.url + "/notes", headers=as_role[role], json={"body": f"by {role}"})
        assert created.status_code == 201, (role, created.text)
    assert gw(platform, "POST", "/notes", tenant, json={"body": "by key"}).status_code == 201
    refused = httpx.post(platform.gateway.url + "/notes", headers=as_role["viewer"], json={"body": "by viewer"})
    assert refused.status_code == 403, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["code"] == "forbidden"
    listed = httpx.get(platform.gateway.url + "/notes", headers=as_role["viewer"])
    assert listed.status_code == 200
    assert sorted(n["body"] for n in listed.json()["items"]) == ["by admin", "by key", "by user"]


def test_the_app_cannot_be_reached_around_the_gateway(platform: Platform) -> None:
    a = make_tenant(platform, "app-direct")
    forged_claims = {"tid": a.id, "slug": a.slug, "sub": "x", "iat": int(time.time()), "exp": int(time.time()) + 60}
    import jwt

    forged = jwt.encode(
        {**forged_claims, "iss": "tenantry-gateway", "aud": "tenantry-upstream"},
        "not-the-key" * 4,
        algorithm="HS256",
        headers={"kid": "k1"},
    )
    for headers in ({}, {"X-Tenant-ID": a.id}, {"X-Tenant-Token": "garbage"}, {"X-Tenant-Token": forged}):
        response = httpx.get(platform.notes.url + "/notes", headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["code"] == "unauthorized"


def test_connections_stay_within_the_budget_with_200_tenants_active_in_turn(platform: Platform, pg_url: str) -> None:
    def create(i: int) -> Tenant:
        response = platform.admin.post("/admin/tenants", json={"slug": f"app-many-{i:03d}", "name": f"Many {i}"})
        assert response.status_code == 201, response.text
        return Tenant.from_created(response.json())

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        tenants = list(pool.map(create, range(200)))
    # Every tenant known to the gateway first (token exchanges touch no database): the contract allows 2 s.
    wait_until(
        lambda: all(
            httpx.post(platform.gateway.url + "/_gateway/token", headers={"X-API-Key": t.key}).status_code == 200
            for t in tenants
        ),
        timeout=15,
    )

    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        import asyncio

        async def run() -> None:
            nonlocal peak
            conn = await asyncpg.connect(pg_url)
            try:
                while not stop.is_set():
                    n = await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", platform.notes.app_name
                    )
                    peak = max(peak, int(n))
                    await asyncio.sleep(0.02)
            finally:
                await conn.close()

        asyncio.run(run())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
            statuses = list(pool.map(lambda t: gw(platform, "GET", "/notes", t).status_code, tenants))
    finally:
        stop.set()
        sampler.join()
    assert statuses.count(200) == 200, [s for s in statuses if s != 200]
    assert 0 < peak <= BUDGET
    assert platform.notes.engines() <= BUDGET


def test_suspended_tenant_is_refused_at_the_gateway_and_the_app_never_sees_it(platform: Platform) -> None:
    a = make_tenant(platform, "app-susp")
    platform.admin.post(f"/admin/tenants/{a.id}/suspend")
    wait_until(lambda: gw(platform, "GET", "/notes", a).status_code == 403)
    response = gw(platform, "POST", "/notes", a, json={"body": "while suspended"})
    assert response.status_code == 403
    assert response.json()["code"] == "tenant_suspended"
    platform.admin.post(f"/admin/tenants/{a.id}/resume")
    wait_until(lambda: gw(platform, "GET", "/notes", a).status_code == 200)
    assert gw(platform, "GET", "/notes", a).json()["items"] == []


def test_a_purged_tenants_engine_is_disposed(installation: Installation, tmp_path: Path) -> None:
    with running_platform(installation, tmp_path, APP_CONNECTION_BUDGET="3") as own:
        a = make_tenant(own, "app-purge-a")
        b = make_tenant(own, "app-purge-b")
        assert gw(own, "GET", "/whoami", a).status_code == 200
        assert gw(own, "GET", "/whoami", b).status_code == 200
        assert own.notes.engines() == 2
        assert own.admin.delete(f"/admin/tenants/{a.id}", params={"purge": "true"}).status_code == 200
        wait_until(lambda: own.notes.engines() == 1, timeout=5)
        assert gw(own, "GET", "/whoami", b).status_code == 200
