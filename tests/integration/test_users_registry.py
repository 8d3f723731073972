"""Tenant users in the tenant-service (contract §12): the admin API, and the internal API gateways sign users in
with (``/internal/v1/auth/*``), against the real registry and Redis. The gateway's side is in
tests/e2e/test_tenant_users.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from support.assertions import assert_problem, create_tenant, uniq
from support.platform import Installation, registry
from tenant_service import failpoints
from tenant_service.app import create_app
from tenant_service.context import AppContext
from tenant_service.users.passwords import password_problem

PASSWORD = "correct horse battery"


@pytest.fixture
async def internal(ctx: AppContext, installation: Installation) -> AsyncIterator[httpx.AsyncClient]:
    """The internal API as a gateway calls it (its own service token)."""
    app = create_app(ctx, run_background=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://testserver.local",
        headers={"Authorization": f"Bearer {installation.gateway_token}"},
    ) as client:
        yield client


async def invite(api: httpx.AsyncClient, ref: str, email: str, role: str = "user") -> dict[str, Any]:
    response = await api.post(f"/admin/tenants/{ref}/users", json={"email": email, "role": role})
    assert response.status_code == 201, response.text
    return response.json()


async def accepted(
    internal: httpx.AsyncClient, created: dict[str, Any] | str, password: str = PASSWORD
) -> dict[str, Any]:
    """Accept an invitation (``created``: the create's answer, or the token)."""
    token = created if isinstance(created, str) else created["invitation"]["token"]
    response = await internal.post(
        "/internal/v1/auth/accept-invitation",
        json={"token": token, "password": password, "client_address": "192.0.2.1"},
    )
    assert response.status_code == 200, response.text
    return response.json()


async def login(
    internal: httpx.AsyncClient, tenant_id: str, email: str, password: str = PASSWORD, address: str = "192.0.2.1"
) -> httpx.Response:
    return await internal.post(
        "/internal/v1/auth/login",
        json={"tenant_id": tenant_id, "email": email, "password": password, "client_address": address},
    )


async def test_a_user_is_invited_accepts_and_signs_in(api: httpx.AsyncClient, internal: httpx.AsyncClient) -> None:
    tenant = await create_tenant(api, uniq("users"))
    created = await invite(api, tenant["slug"], "Ada@Example.com", role="admin")
    user = created["user"]
    assert user["status"] == "invited"
    assert user["role"] == "admin"
    assert user["email"] == "Ada@Example.com"
    assert created["invitation"]["token"].startswith("inv_")
    grant = await accepted(internal, created["invitation"]["token"])
    assert grant["user"] == {
        "id": user["id"], "email": "Ada@Example.com", "name": None, "role": "admin", "tenant_id": tenant["id"]
    }  # fmt: skip
    assert grant["refresh_token"].startswith("rt_")
    # The invitation is single-use.
    again = await internal.post(
        "/internal/v1/auth/accept-invitation",
        json={"token": created["invitation"]["token"], "password": PASSWORD, "client_address": "192.0.2.1"},
    )
    assert_problem(again, 401, "invalid_invitation")
    # Case-insensitive email, the right tenant only.
    signed_in = await login(internal, tenant["id"], "ada@EXAMPLE.com")
    assert signed_in.status_code == 200, signed_in.text
    listed = (await api.get(f"/admin/tenants/{tenant['slug']}/users")).json()
    assert [u["status"] for u in listed["items"]] == ["active"]
    assert "password" not in str(listed)
    assert "hash" not in str(listed)
    assert "rt_" not in str(listed)
    duplicate = await api.post(f"/admin/tenants/{tenant['slug']}/users", json={"email": "ADA@example.com"})
    assert_problem(duplicate, 409, "user_exists")


async def test_a_weak_password_is_refused_and_the_invitation_kept(
    api: httpx.AsyncClient, internal: httpx.AsyncClient
) -> None:
    tenant = await create_tenant(api, uniq("weak"))
    created = await invite(api, tenant["slug"], "bob@example.com")
    for weak in ("short", "password123", "Password2024!", "qwertyuiop", "aaaaaaaaaaaa", "bob@example.com"):
        response = await internal.post(
            "/internal/v1/auth/accept-invitation",
            json={"token": created["invitation"]["token"], "password": weak, "client_address": "192.0.2.1"},
        )
        assert_problem(response, 422, "weak_password")
    await accepted(internal, created["invitation"]["token"])
    assert password_problem("a long enough passphrase") is None


async def test_refresh_rotates_and_a_replayed_token_revokes_the_family(
    api: httpx.AsyncClient, internal: httpx.AsyncClient, installation: Installation
) -> None:
    tenant = await create_tenant(api, uniq("refresh"))
    first = await accepted(internal, (await invite(api, tenant["slug"], "carol@example.com"))["invitation"]["token"])
    refreshed = await internal.post("/internal/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    second = refreshed.json()
    assert second["session_id"] == first["session_id"]
    assert second["refresh_token"] != first["refresh_token"]
    replay = await internal.post("/internal/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert_problem(replay, 401, "invalid_refresh_token")
    # The whole family is revoked: the new token too.
    after = await internal.post("/internal/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert_problem(after, 401, "invalid_refresh_token")
    page = (await internal.get("/internal/v1/directory/")).json()
    entry = next(t for t in page["tenants"] if t["id"] == tenant["id"])
    assert first["session_id"] in entry["revoked_sessions"]
    rows = await registry(installation, "SELECT token_hash FROM refresh_tokens rt JOIN user_sessions s "
                          "ON s.id = rt.session_id WHERE s.tenant_id = $1", uuid.UUID(tenant["id"]))  # fmt: skip
    assert rows
    assert all(len(r["token_hash"]) == 32 for r in rows)


async def test_the_same_email_in_two_tenants_signs_in_to_its_own_only(
    api: httpx.AsyncClient, internal: httpx.AsyncClient
) -> None:
    acme, globex = await create_tenant(api, uniq("acme")), await create_tenant(api, uniq("globex"))
    await accepted(internal, await invite(api, acme["slug"], "same@example.com"), "acme pass 123")
    await accepted(internal, await invite(api, globex["slug"], "same@example.com"), "globex pass 9")
    assert (await login(internal, acme["id"], "same@example.com", "acme pass 123")).status_code == 200
    assert (await login(internal, globex["id"], "same@example.com", "globex pass 9")).status_code == 200
    assert_problem(await login(internal, acme["id"], "same@example.com", "globex pass 9"), 401, "invalid_credentials")
    grant = (await login(internal, acme["id"], "same@example.com", "acme pass 123")).json()
    mismatch = await internal.post(
        "/internal/v1/auth/refresh", json={"refresh_token": grant["refresh_token"], "tenant_id": globex["id"]}
    )
    assert_problem(mismatch, 403, "tenant_mismatch")


async def test_unknown_email_and_wrong_password_answer_alike_and_the_sixth_failure_is_429(
    api: httpx.AsyncClient, internal: httpx.AsyncClient
) -> None:
    tenant = await create_tenant(api, uniq("brute"))
    await accepted(internal, (await invite(api, tenant["slug"], "dan@example.com"))["invitation"]["token"])
    wrong = await login(internal, tenant["id"], "dan@example.com", "not the password", address="198.51.100.7")
    unknown = await login(internal, tenant["id"], "nobody@example.com", "not the password", address="198.51.100.7")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    for _ in range(4):
        assert_problem(await login(internal, tenant["id"], "dan@example.com", "nope nope nope"), 401)
    locked = await login(internal, tenant["id"], "dan@example.com", PASSWORD)
    assert_problem(locked, 429, "too_many_attempts")
    assert 0 < int(locked.headers["retry-after"]) <= 900
    audit = (await api.get(f"/admin/audit?tenant={tenant['id']}")).json()
    assert "user.login_account_locked" in str(audit)


async def test_disabled_and_deleted_users(api: httpx.AsyncClient, internal: httpx.AsyncClient) -> None:
    tenant = await create_tenant(api, uniq("disable"))
    created = await invite(api, tenant["slug"], "eve@example.com")
    grant = await accepted(internal, created["invitation"]["token"])
    user_id = created["user"]["id"]
    patched = await api.patch(f"/admin/tenants/{tenant['slug']}/users/{user_id}", json={"disabled": True})
    assert patched.status_code == 200
    assert patched.json()["status"] == "disabled"
    assert_problem(await login(internal, tenant["id"], "eve@example.com"), 403, "user_disabled")
    assert_problem(
        await login(internal, tenant["id"], "eve@example.com", "wrong password!"), 401, "invalid_credentials"
    )
    refresh = await internal.post("/internal/v1/auth/refresh", json={"refresh_token": grant["refresh_token"]})
    assert_problem(refresh, 403, "user_disabled")
    await api.patch(f"/admin/tenants/{tenant['slug']}/users/{user_id}", json={"disabled": False})
    # Enabled again: the sessions the disable ended stay ended.
    stale = await internal.post("/internal/v1/auth/refresh", json={"refresh_token": grant["refresh_token"]})
    assert_problem(stale, 401, "invalid_refresh_token")
    again = (await login(internal, tenant["id"], "eve@example.com")).json()
    assert (await api.delete(f"/admin/tenants/{tenant['slug']}/users/{user_id}")).status_code == 204
    page = (await internal.get("/internal/v1/directory/")).json()
    entry = next(t for t in page["tenants"] if t["id"] == tenant["id"])
    assert again["session_id"] in entry["revoked_sessions"]
    assert_problem(await login(internal, tenant["id"], "eve@example.com"), 401, "invalid_credentials")


async def test_tenant_admins_manage_users_on_behalf(api: httpx.AsyncClient, internal: httpx.AsyncClient) -> None:
    tenant = await create_tenant(api, uniq("behalf"))
    admin = await accepted(internal, await invite(api, tenant["slug"], "root@example.com", "admin"))
    plain = await accepted(internal, (await invite(api, tenant["slug"], "joe@example.com"))["invitation"]["token"])
    base = f"/internal/v1/tenants/{tenant['id']}/users"
    as_admin = {"x-on-behalf-of": f"user:{admin['user']['id']}"}
    created = await internal.post(base, json={"email": "new@example.com", "role": "viewer"}, headers=as_admin)
    assert created.status_code == 201, created.text
    as_user = {"x-on-behalf-of": f"user:{plain['user']['id']}"}
    assert_problem(await internal.get(base, headers=as_user), 403, "forbidden")
    assert_problem(await internal.get(base), 403, "forbidden")
    self_demote = await internal.patch(f"{base}/{admin['user']['id']}", json={"role": "user"}, headers=as_admin)
    assert_problem(self_demote, 409, "self_change")
    other = await create_tenant(api, uniq("other"))
    cross = await internal.get(f"/internal/v1/tenants/{other['id']}/users", headers=as_admin)
    assert_problem(cross, 403, "forbidden")
    info = await internal.get(f"/internal/v1/tenants/{tenant['id']}/info")
    assert info.status_code == 200, info.text
    assert set(info.json()["usage"]) == {"requests_today", "requests_this_minute", "database_bytes"}


async def test_password_change_ends_the_other_sessions(api: httpx.AsyncClient, internal: httpx.AsyncClient) -> None:
    tenant = await create_tenant(api, uniq("passwd"))
    one = await accepted(internal, (await invite(api, tenant["slug"], "fay@example.com"))["invitation"]["token"])
    two = (await login(internal, tenant["id"], "fay@example.com")).json()
    change = {
        "tenant_id": tenant["id"], "user_id": one["user"]["id"], "session_id": one["session_id"],
        "current_password": PASSWORD, "new_password": "a brand new passphrase", "client_address": "192.0.2.1",
    }  # fmt: skip
    response = await internal.post("/internal/v1/auth/password", json=change)
    assert response.status_code == 204, response.text
    assert (
        await internal.post("/internal/v1/auth/refresh", json={"refresh_token": one["refresh_token"]})
    ).status_code == 200
    assert (
        await internal.post("/internal/v1/auth/refresh", json={"refresh_token": two["refresh_token"]})
    ).status_code == 401
    assert (await login(internal, tenant["id"], "fay@example.com", "a brand new passphrase")).status_code == 200


async def test_signup_is_404_unless_enabled(internal: httpx.AsyncClient) -> None:
    body = {"slug": uniq("signup"), "name": "S", "email": "a@example.com", "password": PASSWORD, "client_address": "x"}
    assert_problem(await internal.post("/internal/v1/auth/signup", json=body), 404)


async def test_a_tenant_app_token_cannot_sign_users_in(ctx: AppContext, installation: Installation) -> None:
    app = create_app(ctx, run_background=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://testserver.local",
        headers={"Authorization": f"Bearer {installation.service_token}"},
    ) as client:
        response = await client.post(
            "/internal/v1/auth/login",
            json={"tenant_id": str(uuid.uuid4()), "email": "a@b.c", "password": "x", "client_address": "x"},
        )
    assert_problem(response, 403, "insufficient_scope")


@pytest.fixture
async def signup_api(installation: Installation) -> AsyncIterator[httpx.AsyncClient]:
    """The internal API of a tenant-service with SIGNUP_ENABLED (its own context, same registry)."""
    signup_ctx = AppContext.build(installation.settings(SIGNUP_ENABLED="true", SIGNUP_PER_HOUR="100"))
    app = create_app(signup_ctx, run_background=False)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver.local",
            headers={"Authorization": f"Bearer {installation.gateway_token}"},
        ) as client:
            yield client
    finally:
        await signup_ctx.close()


async def test_a_signup_whose_provisioning_fails_leaves_no_tenant_and_no_user(
    signup_api: httpx.AsyncClient, installation: Installation
) -> None:
    slug = uniq("signupfail")
    body = {"slug": slug, "name": "Fail", "email": "owner@example.com", "password": PASSWORD, "client_address": "x"}
    failpoints.configure("provision.after_database=error")
    try:
        response = await signup_api.post("/internal/v1/auth/signup", json=body)
    finally:
        failpoints.configure("")
    assert response.status_code == 503, response.text
    assert not await registry(installation, "SELECT id FROM tenants WHERE slug = $1", slug)
    users = await registry(installation, "SELECT u.id FROM tenant_users u JOIN tenants t ON t.id = u.tenant_id "
                           "WHERE t.slug = $1", slug)  # fmt: skip
    assert not users
    # The slug is free again, and a sign-up creates the tenant with its admin signed in.
    created = await signup_api.post("/internal/v1/auth/signup", json=body)
    assert created.status_code == 201, created.text
    result = created.json()
    assert result["tenant"]["status"] == "active"
    assert result["grant"]["user"]["role"] == "admin"
    taken = await signup_api.post("/internal/v1/auth/signup", json=body)
    assert_problem(taken, 409, "slug_taken")
    for bad in ("admin", "A!", "x"):
        assert_problem(await signup_api.post("/internal/v1/auth/signup", json={**body, "slug": bad}), 422)
    weak = await signup_api.post(
        "/internal/v1/auth/signup", json={**body, "slug": uniq("weak"), "password": "password1"}
    )
    assert_problem(weak, 422, "weak_password")
