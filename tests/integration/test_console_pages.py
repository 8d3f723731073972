"""The admin console's pages over HTTP against the app and a real registry (docs/console.md): sessions, CSRF,
security headers, escaping, audited actions."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import asyncpg
import httpx
import pytest

from tenant_service.app import create_app
from tenant_service.console.web import CSP
from tenant_service.context import AppContext

BASE = "http://testserver.local"


class PageAudit(HTMLParser):
    """Collects what the CSP forbids or what a page must carry: inline scripts, style/on* attributes, forms."""

    def __init__(self) -> None:
        super().__init__()
        self.inline_scripts = 0
        self.style_attrs: list[str] = []
        self.handlers: list[str] = []
        self.style_tags = 0
        self.post_forms = 0
        self.forms_without_csrf = 0
        self._in_post_form = False
        self._form_has_csrf = False
        self._in_script = False
        self._script_has_src = False
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for name, _ in attrs:
            if name == "style":
                self.style_attrs.append(tag)
            if name.startswith("on"):
                self.handlers.append(f"{tag}[{name}]")
        for name in ("src", "href", "action"):
            value = a.get(name) or ""
            if value.startswith(("http:", "https:", "//")) and tag != "svg":
                self.external.append(value)
        if tag == "script":
            self._in_script, self._script_has_src = True, bool(a.get("src"))
        if tag == "style":
            self.style_tags += 1
        if tag == "form" and (a.get("method") or "get").lower() == "post":
            self.post_forms += 1
            self._in_post_form, self._form_has_csrf = True, False
        if tag == "input" and self._in_post_form and a.get("name") == "csrf_token" and a.get("value"):
            self._form_has_csrf = True

    def handle_data(self, data: str) -> None:
        if self._in_script and not self._script_has_src and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            if not self._script_has_src:
                self.inline_scripts += 1
            self._in_script = False
        if tag == "form" and self._in_post_form:
            self._in_post_form = False
            if not self._form_has_csrf:
                self.forms_without_csrf += 1


def assert_clean_page(response: httpx.Response, *, signed_in: bool = True) -> PageAudit:
    """Security headers, no inline script or style, no handler attributes, CSRF on every POST form."""
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"].startswith("text/html")
    audit = PageAudit()
    audit.feed(response.text)
    assert audit.inline_scripts == 0
    assert audit.style_attrs == []
    assert audit.handlers == []
    assert audit.style_tags == 0
    assert audit.external == []
    if signed_in:
        assert audit.forms_without_csrf == 0
    return audit


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


@pytest.fixture
async def app_client(ctx: AppContext) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(ctx, run_background=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:
        yield client


def admin_token(ctx: AppContext) -> tuple[str, str]:
    name, token = next(iter(ctx.settings.security.admin_tokens.items()))
    return name, token


async def sign_in(client: httpx.AsyncClient, ctx: AppContext) -> str:
    """Sign in; returns a CSRF token of the session."""
    response = await client.post("/console/sign-in", data={"token": admin_token(ctx)[1], "next": "/console/tenants"})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/console/tenants"
    page = await client.get("/console/tenants")
    assert page.status_code == 200
    return csrf_of(page.text)


async def registry(ctx: AppContext) -> asyncpg.Connection:
    url = ctx.settings.database.url.replace("postgresql+asyncpg://", "postgresql://")
    return await asyncpg.connect(url)


async def new_tenant(api: httpx.AsyncClient, name: str | None = None) -> dict:
    slug = f"con-{secrets.token_hex(4)}"
    response = await api.post("/admin/tenants", json={"slug": slug, "name": name or f"Console {slug}"})
    assert response.status_code == 201, response.text
    return response.json()


async def audit_actions(api: httpx.AsyncClient, tenant_id: str) -> list[tuple[str, str]]:
    response = await api.get("/admin/audit", params={"tenant": tenant_id, "limit": 200})
    assert response.status_code == 200, response.text
    return [(e["actor"], e["action"]) for e in response.json()["items"]]


# --- signing in ---------------------------------------------------------------------------------------------------


async def test_without_a_session_every_page_redirects_to_sign_in_with_a_local_next(app_client) -> None:
    for path in ("/console/tenants", "/console/servers", "/console/plans", "/console/audit", "/console/tenants/x"):
        response = await app_client.get(path, params={"q": "a b"} if path.endswith("tenants") else None)
        assert response.status_code == 303, path
        location = response.headers["location"]
        assert location.startswith("/console/sign-in?next=/console/")
        assert response.headers["content-security-policy"] == CSP
    action = await app_client.post("/console/tenants/x/lifecycle/suspend", data={"csrf_token": "0" * 64})
    assert action.status_code == 303
    assert action.headers["location"] == "/console/sign-in?next=/console"
    searched = await app_client.get("/console/sign-in", params={"next": "/console/tenants?q=a b&status=active"})
    assert 'name="next" value="/console/tenants?q=a%20b&amp;status=active"' in searched.text
    sign_in_page = await app_client.get("/console/sign-in", params={"next": "/console/servers"})
    assert sign_in_page.status_code == 200
    assert 'name="next" value="/console/servers"' in sign_in_page.text
    assert_clean_page(sign_in_page, signed_in=False)


@pytest.mark.parametrize(
    "raw", ["https://evil.example/console", "//evil.example/console", "/admin/tenants", "/console/sign-in", "\\\\x"]
)
async def test_next_must_be_a_local_console_path(app_client, raw) -> None:
    page = await app_client.get("/console/sign-in", params={"next": raw})
    assert 'name="next" value="/console/tenants"' in page.text


async def test_sign_in_sets_a_strict_httponly_cookie_and_stores_only_a_hash(app_client, ctx) -> None:
    name, token = admin_token(ctx)
    response = await app_client.post("/console/sign-in", data={"token": token, "next": "/console/plans"})
    assert response.status_code == 303
    assert response.headers["location"] == "/console/plans"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie or "samesite=strict" in cookie.lower()
    assert "Path=/console" in cookie
    assert "Secure" not in cookie  # plain http, CONSOLE_SECURE_COOKIES unset
    session_id = app_client.cookies["tenantry_console"]
    assert len(session_id) >= 43  # 256 bits, url-safe base64
    conn = await registry(ctx)
    try:
        rows = await conn.fetch("SELECT id_hash, actor, csrf_secret FROM console_sessions")
        mine = [r for r in rows if bytes(r["id_hash"]) == hashlib.sha256(session_id.encode()).digest()]
        assert len(mine) == 1
        assert mine[0]["actor"] == f"admin:{name}"
        dump = repr([dict(r) for r in rows])
        assert token not in dump
        assert session_id not in dump
    finally:
        await conn.close()


async def test_a_wrong_token_is_refused_without_detail_and_audited(app_client, api) -> None:
    response = await app_client.post("/console/sign-in", data={"token": "not-a-token-" + "x" * 20})
    assert response.status_code == 401
    assert "That token is not valid." in response.text
    assert "tenantry_console" not in response.headers.get("set-cookie", "")
    entries = (await api.get("/admin/audit", params={"limit": 50})).json()["items"]
    assert any(e["action"] == "console.sign_in_failed" for e in entries)


async def test_sign_out_deletes_the_session_and_the_old_cookie_is_refused(app_client, ctx) -> None:
    csrf = await sign_in(app_client, ctx)
    old = app_client.cookies["tenantry_console"]
    response = await app_client.post("/console/sign-out", data={"csrf_token": csrf})
    assert response.status_code == 303
    assert response.headers["location"].startswith("/console/sign-in")
    app_client.cookies.set("tenantry_console", old, domain="testserver.local", path="/console")
    again = await app_client.get("/console/tenants")
    assert again.status_code == 303
    assert again.headers["location"].startswith("/console/sign-in")


@pytest.mark.parametrize("column", ["last_seen_at", "created_at"])
async def test_sessions_expire_when_idle_and_at_their_absolute_limit(app_client, ctx, column) -> None:
    await sign_in(app_client, ctx)
    assert (await app_client.get("/console/plans")).status_code == 200
    digest = hashlib.sha256(app_client.cookies["tenantry_console"].encode()).digest()
    seconds = (
        ctx.settings.console.session_idle_seconds + 5
        if column == "last_seen_at"
        else ctx.settings.console.session_max_seconds + 5
    )
    conn = await registry(ctx)
    try:
        # An idle session: last seen long ago. An old one: signed in long ago, but seen just now.
        await conn.execute(
            f"UPDATE console_sessions SET {column} = now() - make_interval(secs => $2) WHERE id_hash = $1",
            digest,
            seconds,
        )
        response = await app_client.get("/console/plans")
        assert response.status_code == 303
        assert await conn.fetchval("SELECT count(*) FROM console_sessions WHERE id_hash = $1", digest) == 0
    finally:
        await conn.close()


# --- CSRF ---------------------------------------------------------------------------------------------------------


async def test_a_form_without_or_with_a_wrong_csrf_token_is_refused_and_changes_nothing(app_client, api, ctx) -> None:
    tenant = await new_tenant(api)
    csrf = await sign_in(app_client, ctx)
    for data in ({}, {"csrf_token": "0" * 64}, {"csrf_token": csrf[:-1]}):
        response = await app_client.post(f"/console/tenants/{tenant['slug']}/lifecycle/suspend", data=data)
        assert response.status_code == 403
        assert_clean_page(response)
    assert (await api.get(f"/admin/tenants/{tenant['id']}")).json()["status"] == "active"
    # Another session's token does not fit this one.
    other = httpx.AsyncClient(transport=app_client._transport, base_url=BASE)
    async with other:
        other_csrf = await sign_in(other, ctx)
    assert other_csrf != csrf
    response = await app_client.post(
        f"/console/tenants/{tenant['slug']}/lifecycle/suspend", data={"csrf_token": other_csrf}
    )
    assert response.status_code == 403
    assert (await api.get(f"/admin/tenants/{tenant['id']}")).json()["status"] == "active"


# --- pages and actions --------------------------------------------------------------------------------------------


async def test_every_page_has_the_security_headers_and_no_inline_script_or_style(app_client, api, ctx) -> None:
    tenant = await new_tenant(api)
    await sign_in(app_client, ctx)
    for path in (
        "/console/tenants",
        "/console/tenants?q=con&status=active",
        "/console/tenants/new",
        f"/console/tenants/{tenant['slug']}",
        f"/console/tenants/{tenant['slug']}/operations",
        "/console/servers",
        "/console/plans",
        "/console/webhooks",
        "/console/audit",
        "/console/tenants/no-such-tenant",
        f"/console/webhooks/{uuid.uuid4()}",
    ):
        response = await app_client.get(path)
        assert response.status_code in (200, 404), path
        assert_clean_page(response)
    static = await app_client.get("/console/static/htmx.min.js")
    assert static.status_code == 200
    assert static.headers["x-content-type-options"] == "nosniff"
    assert static.text.startswith("/*! htmx")


async def test_tenant_controlled_strings_are_escaped(app_client, api, ctx) -> None:
    evil = "<script>alert(1)</script>"
    tenant = await new_tenant(api, name=evil)
    await sign_in(app_client, ctx)
    for path in (f"/console/tenants/{tenant['slug']}", f"/console/tenants?q={tenant['slug']}"):
        response = await app_client.get(path)
        assert response.status_code == 200
        assert evil not in response.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text
        assert_clean_page(response)


async def test_search_filters_and_paging(app_client, api, ctx) -> None:
    stem = f"pg{secrets.token_hex(3)}"
    slugs = []
    for i in range(3):
        response = await api.post("/admin/tenants", json={"slug": f"{stem}-{i}", "name": f"Paging {i}"})
        assert response.status_code == 201
        slugs.append(response.json()["slug"])
    await sign_in(app_client, ctx)
    page = await app_client.get("/console/tenants", params={"q": stem})
    assert all(s in page.text for s in slugs)
    suspended = await app_client.get("/console/tenants", params={"q": stem, "status": "suspended"})
    assert not any(f">{s}<" in suspended.text for s in slugs)
    on_default = await app_client.get("/console/tenants", params={"q": stem, "server": "default"})
    assert all(s in on_default.text for s in slugs)


async def test_actions_go_through_the_services_and_are_audited_with_the_admin_as_actor(app_client, api, ctx) -> None:
    name, _ = admin_token(ctx)
    tenant = await new_tenant(api)
    slug, tid = tenant["slug"], tenant["id"]
    csrf = await sign_in(app_client, ctx)

    async def post(path: str, **data: str) -> httpx.Response:
        return await app_client.post(path, data={"csrf_token": csrf, **data})

    assert (await post(f"/console/tenants/{slug}/lifecycle/suspend")).status_code == 303
    assert (await api.get(f"/admin/tenants/{tid}")).json()["status"] == "suspended"
    assert (await post(f"/console/tenants/{slug}/lifecycle/resume")).status_code == 303
    assert (await post(f"/console/tenants/{slug}/domains", domain=f"{slug}.example.com")).status_code == 303
    assert f"{slug}.example.com" in (await api.get(f"/admin/tenants/{tid}")).json()["domains"]
    assert (await post(f"/console/tenants/{slug}/domains/remove", domain=f"{slug}.example.com")).status_code == 303

    created = await post(f"/console/tenants/{slug}/api-keys", name="console key")
    assert created.status_code == 201
    assert_clean_page(created)
    secret = re.search(r'id="new-key-value">([^<]+)<', created.text).group(1)
    assert secret.startswith("tk_")
    later = await app_client.get(f"/console/tenants/{slug}")
    assert secret not in later.text  # shown once
    keys = (await api.get(f"/admin/tenants/{tid}/api-keys")).json()["items"]
    key_id = next(k["id"] for k in keys if k["name"] == "console key")
    rotated = await post(f"/console/tenants/{slug}/api-keys/{key_id}/rotate")
    assert rotated.status_code == 201
    assert "tk_" in re.search(r'id="new-key-value">([^<]+)<', rotated.text).group(1)
    assert (await post(f"/console/tenants/{slug}/api-keys/{key_id}/revoke")).status_code == 303
    assert (await post(f"/console/tenants/{slug}/lifecycle/delete")).status_code == 303
    assert (await post(f"/console/tenants/{slug}/lifecycle/restore")).status_code == 303

    actions = await audit_actions(api, tid)
    mine = {action for actor, action in actions if actor == f"admin:{name}"}
    assert {"tenant.suspend", "tenant.resume", "tenant.delete", "tenant.restore"} <= mine, actions
    assert any("domain" in a for a in mine), actions
    assert any("api_key" in a or "apikey" in a or "key" in a for a in mine), actions
    assert all(actor == f"admin:{name}" for actor, _ in actions if actor.startswith("admin:"))


async def test_purge_needs_the_typed_slug(app_client, api, ctx) -> None:
    tenant = await new_tenant(api)
    slug, tid = tenant["slug"], tenant["id"]
    csrf = await sign_in(app_client, ctx)
    for typed in ("", slug.upper(), slug + " ", "other"):
        response = await app_client.post(
            f"/console/tenants/{slug}/purge", data={"csrf_token": csrf, "confirm_slug": typed}
        )
        assert response.status_code == 422, typed
        assert_clean_page(response)
        assert (await api.get(f"/admin/tenants/{tid}")).status_code == 200
    response = await app_client.post(f"/console/tenants/{slug}/purge", data={"csrf_token": csrf, "confirm_slug": slug})
    assert response.status_code == 303
    assert (await api.get(f"/admin/tenants/{tid}")).status_code == 404
    actions = await audit_actions(api, tid)
    assert (f"admin:{admin_token(ctx)[0]}", "tenant.purged") in actions, actions


async def test_create_tenant_shows_its_first_key_once(app_client, api, ctx) -> None:
    csrf = await sign_in(app_client, ctx)
    slug = f"new-{secrets.token_hex(4)}"
    response = await app_client.post(
        "/console/tenants", data={"csrf_token": csrf, "slug": slug, "name": "Made in the console"}
    )
    assert response.status_code == 201, response.text
    assert re.search(r'id="new-key-value">tk_', response.text)
    assert (await api.get(f"/admin/tenants/{slug}")).json()["name"] == "Made in the console"
    bad = await app_client.post("/console/tenants", data={"csrf_token": csrf, "slug": "A!", "name": "x"})
    assert bad.status_code == 422
    assert_clean_page(bad)


async def test_plans_edit_keeps_placement_labels(app_client, api, ctx) -> None:
    name = f"cplan-{secrets.token_hex(3)}"
    put = await api.put(
        f"/admin/plans/{name}",
        json={"limits": {"requests_per_minute": 5, "requests_per_day": 50}, "placement_labels": {"tier": "a"}},
    )
    assert put.status_code == 200
    csrf = await sign_in(app_client, ctx)
    response = await app_client.post(
        f"/console/plans/{name}",
        data={"csrf_token": csrf, "requests_per_minute": "7", "requests_per_day": "70", "max_connections": "3"},
    )
    assert response.status_code == 303
    plan = next(p for p in (await api.get("/admin/plans")).json()["items"] if p["name"] == name)
    assert plan["limits"] == {"requests_per_minute": 7, "requests_per_day": 70, "max_connections": 3}
    assert plan["placement_labels"] == {"tier": "a"}
    bad = await app_client.post(f"/console/plans/{name}", data={"csrf_token": csrf, "requests_per_minute": "x"})
    assert bad.status_code == 422


async def test_plans_edit_shows_and_sets_alert_thresholds_and_keeps_them_when_the_form_has_none(
    app_client, api, ctx
) -> None:
    name = f"cplan-{secrets.token_hex(3)}"
    limits = {"requests_per_minute": 5, "requests_per_day": 50}
    put = await api.put(f"/admin/plans/{name}", json={"limits": limits, "alert_thresholds": [0.5, 0.9]})
    assert put.status_code == 200, put.text
    csrf = await sign_in(app_client, ctx)

    async def thresholds() -> list[float]:
        plans = (await api.get("/admin/plans")).json()["items"]
        return next(p["alert_thresholds"] for p in plans if p["name"] == name)  # type: ignore[no-any-return]

    listing = await app_client.get("/console/plans")
    assert re.search(rf'id="{name}-alert_thresholds" name="alert_thresholds" value="50, 90"', listing.text)
    form = {"csrf_token": csrf, "requests_per_minute": "5", "requests_per_day": "50"}
    # A form without the field (an older page) keeps them: saving limits never resets a plan's alerts.
    assert (await app_client.post(f"/console/plans/{name}", data=form)).status_code == 303
    assert await thresholds() == [0.5, 0.9]
    saved = await app_client.post(f"/console/plans/{name}", data={**form, "alert_thresholds": "100, 12.5%, 80"})
    assert saved.status_code == 303
    assert await thresholds() == [0.125, 0.8, 1.0]
    for bad in ("eighty", "0", "-5", "2000", "80, 80", "nan"):
        refused = await app_client.post(f"/console/plans/{name}", data={**form, "alert_thresholds": bad})
        assert refused.status_code == 422, bad
        assert_clean_page(refused)
    assert await thresholds() == [0.125, 0.8, 1.0]
    assert (await app_client.post(f"/console/plans/{name}", data={**form, "alert_thresholds": ""})).status_code == 303
    assert await thresholds() == []


async def test_the_tenant_page_shows_its_usage_now(app_client, api, ctx) -> None:
    tenant = await new_tenant(api)
    await sign_in(app_client, ctx)
    response = await app_client.get(f"/console/tenants/{tenant['slug']}")
    assert response.status_code == 200
    usage = response.text.split('id="usage"', 1)[1].split("</section>", 1)[0]
    assert "0 of 50,000 requests" in usage  # the free plan's daily limit, nothing used yet
    assert "Database size" in usage
    assert "unknown" not in usage


async def test_the_tenant_page_charts_its_last_30_days_of_requests_from_the_usage_history(app_client, api, ctx) -> None:
    tenant = await new_tenant(api)
    other = await new_tenant(api)
    today = datetime.now(UTC).date()
    conn = await registry(ctx)
    try:
        await conn.executemany(
            "INSERT INTO usage_daily (tenant_id, day, requests, rejected) VALUES ($1, $2, $3, $4)",
            [
                (uuid.UUID(tenant["id"]), today, 1200, 34),
                (uuid.UUID(tenant["id"]), today - timedelta(days=29), 7, 0),
                (uuid.UUID(tenant["id"]), today - timedelta(days=30), 999_999, 0),  # outside the 30 days
                (uuid.UUID(other["id"]), today, 555_555, 0),  # another tenant's
            ],
        )
    finally:
        await conn.close()
    await sign_in(app_client, ctx)
    response = await app_client.get(f"/console/tenants/{tenant['slug']}")
    assert response.status_code == 200
    assert_clean_page(response)
    panel = response.text.split('id="usage-history"', 1)[1].split("</section>", 1)[0]
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="chart"' in panel
    assert panel.count('class="chart-bar"') == 30
    assert f"{today.isoformat()}: 1234 requests, 34 rejected" in panel
    assert f"{(today - timedelta(days=29)).isoformat()}: 7 requests, 0 rejected" in panel
    assert "999999" not in panel
    assert "555555" not in panel


async def test_servers_page_shows_capacity_bars_as_svg(app_client, ctx) -> None:
    await sign_in(app_client, ctx)
    response = await app_client.get("/console/servers")
    assert response.status_code == 200
    assert '<svg class="capacity"' in response.text
    assert "default" in response.text


async def test_audit_page_pages_with_its_cursor(app_client, api, ctx) -> None:
    await sign_in(app_client, ctx)
    first = await app_client.get("/console/audit")
    assert first.status_code == 200
    found = re.search(r'cursor=(\d+)"', first.text)
    if found:
        older = await app_client.get("/console/audit", params={"cursor": found.group(1)})
        assert older.status_code == 200
    bad = await app_client.get("/console/audit", params={"cursor": "x"})
    assert bad.status_code == 422


def client_at(ctx: AppContext, address: str) -> httpx.AsyncClient:
    """A console client whose requests come from ``address`` (the throttle counts per address)."""
    transport = httpx.ASGITransport(app=create_app(ctx, run_background=False), client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url=BASE)


async def test_sign_in_failures_from_one_address_are_throttled_on_every_replica(ctx) -> None:
    from tenant_service.console import pages

    address = f"198.51.100.{secrets.randbelow(250) + 1}"
    wrong = {"token": "wrong-token-" + "y" * 20}
    async with client_at(ctx, address) as client, client_at(ctx, "203.0.113.9") as elsewhere:
        # A successful sign-in starts the count again: 9 failures, a success, 9 failures are all answered.
        for _ in range(2):
            for _ in range(9):
                assert (await client.post("/console/sign-in", data=wrong)).status_code == 401
            right = await client.post("/console/sign-in", data={"token": admin_token(ctx)[1]})
            assert right.status_code == 303
        for _ in range(10):
            assert (await client.post("/console/sign-in", data=wrong)).status_code == 401
        blocked = await client.post("/console/sign-in", data={"token": admin_token(ctx)[1]})
        assert blocked.status_code == 429
        assert "tenantry_console" not in blocked.headers.get("set-cookie", "")
        # Another replica (or this one restarted) knows nothing in memory: the audit log's count still refuses.
        pages._throttle._failures.pop(address, None)
        assert (await client.post("/console/sign-in", data={"token": admin_token(ctx)[1]})).status_code == 429
        # Another address is not affected.
        assert (await elsewhere.post("/console/sign-in", data={"token": admin_token(ctx)[1]})).status_code == 303


async def test_the_operations_panel_polls_only_while_something_runs(app_client, api, ctx) -> None:
    tenant = await new_tenant(api)
    csrf = await sign_in(app_client, ctx)
    idle = await app_client.get(f"/console/tenants/{tenant['slug']}/operations")
    assert idle.status_code == 200
    assert 'id="operations"' in idle.text
    assert "hx-trigger" not in idle.text
    started = await app_client.post(f"/console/tenants/{tenant['slug']}/backups", data={"csrf_token": csrf})
    assert started.status_code == 303
    running = await app_client.get(f"/console/tenants/{tenant['slug']}/operations")
    assert 'hx-trigger="every 1s"' in running.text  # nobody runs operations in this in-process app: still pending
    assert "backup" in running.text
    actions = await audit_actions(api, tenant["id"])
    assert (f"admin:{admin_token(ctx)[0]}", "backup.requested") in actions, actions


async def test_a_disabled_console_is_not_there(ctx) -> None:

    from tenant_service.config import ConsoleSettings

    off = dataclasses.replace(ctx, settings=dataclasses.replace(ctx.settings, console=ConsoleSettings(enabled=False)))
    app = create_app(off, run_background=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:
        for path in ("/console", "/console/sign-in", "/console/static/htmx.min.js"):
            assert (await client.get(path)).status_code == 404


async def test_invite_shows_the_token_once_and_disable_enable_are_audited(app_client, api, ctx) -> None:
    tenant = await new_tenant(api)
    slug = tenant["slug"]
    csrf = await sign_in(app_client, ctx)
    invited = await app_client.post(
        f"/console/tenants/{slug}/users", data={"csrf_token": csrf, "email": "Ann@Example.com", "role": "admin"}
    )
    assert invited.status_code == 201, invited.text
    assert_clean_page(invited)
    token = re.search(r'id="new-invitation-value">([^<]+)<', invited.text).group(1)
    later = await app_client.get(f"/console/tenants/{slug}")
    assert token not in later.text
    users = (await api.get(f"/admin/tenants/{slug}/users")).json()["items"]
    user_id = users[0]["id"]
    assert (
        await app_client.post(f"/console/tenants/{slug}/users/{user_id}/disable", data={"csrf_token": csrf})
    ).status_code == 303
    assert (await api.get(f"/admin/tenants/{slug}/users")).json()["items"][0]["status"] == "disabled"
    assert (
        await app_client.post(f"/console/tenants/{slug}/users/{user_id}/enable", data={"csrf_token": csrf})
    ).status_code == 303
    actions = await audit_actions(api, tenant["id"])
    who = f"admin:{admin_token(ctx)[0]}"
    assert (who, "user.create") in actions
    assert (who, "user.update") in actions


async def test_a_session_ends_when_its_admin_token_is_revoked(app_client, ctx) -> None:

    await sign_in(app_client, ctx)
    name, _ = admin_token(ctx)
    changed = {**ctx.settings.security.admin_tokens, name: "a-new-token-for-the-same-name-0123456789"}
    rotated = dataclasses.replace(
        ctx,
        settings=dataclasses.replace(
            ctx.settings, security=dataclasses.replace(ctx.settings.security, admin_tokens=changed)
        ),
    )
    app = create_app(rotated, run_background=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:
        client.cookies.set(
            "tenantry_console", app_client.cookies["tenantry_console"], domain="testserver.local", path="/console"
        )
        response = await client.get("/console/tenants")
        assert response.status_code == 303
        assert response.headers["location"].startswith("/console/sign-in")
    assert (await app_client.get("/console/tenants")).status_code == 303  # the row is gone for every replica


@pytest.mark.parametrize(("base", "setting", "secure"), [("https://testserver.local", False, True), (BASE, True, True)])
async def test_the_cookie_is_secure_over_https_or_when_configured(ctx, base, setting, secure) -> None:

    from tenant_service.config import ConsoleSettings

    settings = dataclasses.replace(ctx.settings, console=ConsoleSettings(secure_cookies=setting))
    app = create_app(dataclasses.replace(ctx, settings=settings), run_background=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base) as client:
        response = await client.post("/console/sign-in", data={"token": admin_token(ctx)[1]})
        assert response.status_code == 303
        assert ("Secure" in response.headers["set-cookie"]) is secure


async def test_restore_and_move_refusals_show_an_error_and_change_nothing(app_client, api, ctx) -> None:
    tenant = await new_tenant(api)
    slug = tenant["slug"]
    csrf = await sign_in(app_client, ctx)
    restore = await app_client.post(
        f"/console/tenants/{slug}/restore-backup", data={"csrf_token": csrf, "backup_id": str(uuid.uuid4())}
    )
    assert restore.status_code == 404
    assert_clean_page(restore)
    move = await app_client.post(f"/console/tenants/{slug}/move", data={"csrf_token": csrf, "server": "nowhere"})
    assert move.status_code in (404, 409, 422)
    assert_clean_page(move)
    ops = (await api.get("/admin/operations", params={"tenant": slug})).json()["items"]
    assert ops == []


async def test_the_console_is_not_in_the_openapi_document(api) -> None:
    paths = (await api.get("/schema/openapi.json")).json()["paths"]
    assert not [p for p in paths if p.startswith("/console")]


# --- webhooks -------------------------------------------------------------------------------------------------------


async def test_webhooks_secret_once_edit_rotate_redeliver_delete_all_audited_with_the_admin_as_actor(
    app_client, api, ctx
) -> None:
    from tenant_service.webhooks.dispatcher import Dispatcher

    name, _ = admin_token(ctx)
    csrf = await sign_in(app_client, ctx)
    url = f"http://127.0.0.1:9/console-{secrets.token_hex(4)}"

    async def post(path: str, **data: str | list[str]) -> httpx.Response:
        return await app_client.post(path, data={"csrf_token": csrf, **data})

    created = await post("/console/webhooks", url=url, events=["tenant.created", "tenant.purged"])
    assert created.status_code == 201, created.text
    assert_clean_page(created)
    secret = re.search(r'id="new-secret-value">(whsec_[A-Za-z0-9+/=]+)<', created.text).group(1)
    webhook_id = re.search(r'action="/console/webhooks/([0-9a-f-]{36})/rotate-secret"', created.text).group(1)
    hook = (await api.get(f"/admin/webhooks/{webhook_id}")).json()
    assert (hook["url"], hook["events"]) == (url, ["tenant.created", "tenant.purged"])
    for path in (f"/console/webhooks/{webhook_id}", "/console/webhooks"):
        later = await app_client.get(path)
        assert later.status_code == 200
        assert_clean_page(later)
        assert url in later.text
        assert secret[6:] not in later.text  # shown once

    # Refusals: the service's rules, nothing created.
    for data, code in (
        ({"url": url}, "validation_error"),
        ({"url": url, "events": ["tenant.nope"]}, "unknown_event"),
        ({"url": "http://169.254.169.254/latest", "events": ["tenant.created"]}, "upstream_not_allowed"),
    ):
        refused = await post("/console/webhooks", **data)
        assert refused.status_code == 422, data
        assert f'<code id="error-code">{code}</code>' in refused.text, refused.text
        assert_clean_page(refused)

    saved = await post(f"/console/webhooks/{webhook_id}", url=url + "/v2", events=["tenant.created"])
    assert saved.status_code == 303
    assert saved.headers["location"] == f"/console/webhooks/{webhook_id}?done=webhook-saved"
    hook = (await api.get(f"/admin/webhooks/{webhook_id}")).json()
    assert (hook["url"], hook["events"]) == (url + "/v2", ["tenant.created"])

    assert (await post(f"/console/webhooks/{webhook_id}/rotate-secret", grace_hours="999")).status_code == 422
    rotated = await post(f"/console/webhooks/{webhook_id}/rotate-secret", grace_hours="2")
    assert rotated.status_code == 201
    assert_clean_page(rotated)
    new_secret = re.search(r'id="new-secret-value">(whsec_[A-Za-z0-9+/=]+)<', rotated.text).group(1)
    assert new_secret != secret
    assert (await api.get(f"/admin/webhooks/{webhook_id}")).json()["rotation_ends_at"] is not None

    # Disable and enable it again.
    off = await post(f"/console/webhooks/{webhook_id}/disable")
    assert off.headers["location"] == f"/console/webhooks/{webhook_id}?done=webhook-disabled"
    page = await app_client.get(off.headers["location"])
    assert_clean_page(page)
    assert "disabled by admin:" in page.text
    assert f'action="/console/webhooks/{webhook_id}/enable"' in page.text
    assert (await api.get(f"/admin/webhooks/{webhook_id}")).json()["enabled"] is False
    assert (await post(f"/console/webhooks/{webhook_id}/enable")).status_code == 303
    assert (await api.get(f"/admin/webhooks/{webhook_id}")).json()["enabled"] is True

    # A delivery to redeliver: an event it subscribes to, fanned out.
    await new_tenant(api)
    await Dispatcher(ctx).fan_out()
    detail = await app_client.get(f"/console/webhooks/{webhook_id}", params={"status": "pending"})
    assert_clean_page(detail)
    delivery_id = re.search(
        rf'action="/console/webhooks/{webhook_id}/deliveries/([0-9a-f-]{{36}})/redeliver"', detail.text
    )
    assert delivery_id, detail.text
    assert "tenant.created" in detail.text
    again = await post(f"/console/webhooks/{webhook_id}/deliveries/{delivery_id.group(1)}/redeliver")
    assert again.status_code == 303, again.text
    assert again.headers["location"].endswith("?done=redelivery-queued")

    for path in ("/console/webhooks?cursor=garbage", f"/console/webhooks/{webhook_id}?status=nope",
                 f"/console/webhooks/{webhook_id}?cursor=garbage", "/console/webhooks/not-a-uuid"):  # fmt: skip
        bad = await app_client.get(path)
        assert 400 <= bad.status_code < 500, (path, bad.status_code)
        assert_clean_page(bad)
    deleted = await post(f"/console/webhooks/{webhook_id}/delete")
    assert deleted.status_code == 303
    assert (await api.get(f"/admin/webhooks/{webhook_id}")).status_code == 404
    assert (await app_client.get(f"/console/webhooks/{webhook_id}")).status_code == 404

    conn = await registry(ctx)
    try:
        rows = await conn.fetch(
            "SELECT actor, action FROM audit_log WHERE target = ANY($1::text[]) ORDER BY id",
            [webhook_id, delivery_id.group(1)],
        )
    finally:
        await conn.close()
    assert [(r["actor"], r["action"]) for r in rows] == [
        (f"admin:{name}", action)
        for action in (
            "webhook.create",
            "webhook.update",
            "webhook.rotate_secret",
            "webhook.update",
            "webhook.update",
            "webhook.redeliver",
            "webhook.delete",
        )
    ]
