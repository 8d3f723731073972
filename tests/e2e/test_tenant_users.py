"""Tenant users end to end (contract §12, issue 18): the tenant-service, a gateway and the notes app as processes.

Invite → accept → sign in on ``{slug}.localhost`` → ``/notes`` with the access token → refresh → replay → logout;
password changes, disabled users, the same email in two tenants, roles in the app, tenant admins managing users,
sign-up, and unknown email vs wrong password: the same answer, in the same time.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from support.assertions import assert_problem, uniq
from support.platform import Installation, registry
from support.stacks import make_tenant, running_platform
from tenantry_devtools.platform import Platform, Tenant
from tenantry_devtools.processes import wait_until

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery"
#: Requests of the tests stay far below the plan's limits.
LIMITS = {"requests_per_minute": 1_000_000, "requests_per_day": 100_000_000}


@pytest.fixture(scope="module")
async def inst(pg_url: str, redis_url: str) -> AsyncIterator[Installation]:
    installation = Installation.isolated(pg_url, redis_url, "users")
    await installation.create()
    try:
        yield installation
    finally:
        await installation.drop()


@pytest.fixture(scope="module")
def platform(inst: Installation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with running_platform(inst, tmp_path_factory.mktemp("users")) as started:
        yield started


def call(platform: Platform, method: str, path: str, host: str | None = None, **kwargs: Any) -> httpx.Response:
    """A request to the gateway, on ``host`` (``{slug}.localhost``) when given."""
    headers = dict(kwargs.pop("headers", {}))
    if host is not None:
        headers["Host"] = host
    return httpx.request(method, platform.gateway.url + path, headers=headers, timeout=30, **kwargs)


def host(tenant: Tenant | str) -> str:
    return f"{tenant if isinstance(tenant, str) else tenant.slug}.localhost"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def invite(platform: Platform, tenant: Tenant, email: str, role: str = "user") -> dict[str, Any]:
    response = platform.admin.post(f"/admin/tenants/{tenant.id}/users", json={"email": email, "role": role})
    assert response.status_code == 201, response.text
    return response.json()


def accept(platform: Platform, tenant: Tenant, created: dict[str, Any], password: str = PASSWORD) -> dict[str, Any]:
    body = {"token": created["invitation"]["token"], "password": password}
    response = call(platform, "POST", "/_gateway/auth/accept-invitation", host(tenant), json=body)
    assert response.status_code == 200, response.text
    return response.json()


def login(platform: Platform, tenant: Tenant | str, email: str, password: str = PASSWORD) -> httpx.Response:
    return call(platform, "POST", "/_gateway/auth/login", host(tenant), json={"email": email, "password": password})


def refresh(platform: Platform, tenant: Tenant, token: str) -> httpx.Response:
    return call(platform, "POST", "/_gateway/auth/refresh", host(tenant), json={"refresh_token": token})


def notes(platform: Platform, tenant: Tenant, access: str) -> httpx.Response:
    return call(platform, "GET", "/notes", host(tenant), headers=bearer(access))


def user_tenant(platform: Platform, stem: str) -> Tenant:
    return make_tenant(platform, uniq(stem), limits=LIMITS)


def test_invite_accept_login_refresh_replay_and_logout(platform: Platform) -> None:
    acme = user_tenant(platform, "acme")
    pair = accept(platform, acme, invite(platform, acme, "ada@example.com"))
    assert pair["token_type"] == "Bearer"
    assert pair["expires_in"] > 0
    signed_in = login(platform, acme, "ADA@example.com")
    assert signed_in.status_code == 200, signed_in.text
    first = signed_in.json()
    assert notes(platform, acme, first["access_token"]).status_code == 200
    written = call(platform, "POST", "/notes", host(acme), headers=bearer(first["access_token"]), json={"body": "hi"})
    assert written.status_code == 201, written.text

    renewed = refresh(platform, acme, first["refresh_token"])
    assert renewed.status_code == 200, renewed.text
    second = renewed.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert notes(platform, acme, second["access_token"]).status_code == 200
    # The spent token replayed: 401, and the family is revoked — the new refresh token and its access token too.
    assert_problem(refresh(platform, acme, first["refresh_token"]), 401)
    assert_problem(refresh(platform, acme, second["refresh_token"]), 401)
    wait_until(lambda: notes(platform, acme, second["access_token"]).status_code == 401, timeout=10,
               what="the revoked session's access token refused")  # fmt: skip
    # The other session (the invitation's) is untouched.
    assert notes(platform, acme, pair["access_token"]).status_code == 200

    # Logout ends the session.
    third = login(platform, acme, "ada@example.com").json()
    out = call(platform, "POST", "/_gateway/auth/logout", host(acme), json={"refresh_token": third["refresh_token"]})
    assert out.status_code == 204, out.text
    assert_problem(refresh(platform, acme, third["refresh_token"]), 401)
    wait_until(lambda: notes(platform, acme, third["access_token"]).status_code == 401, timeout=10,
               what="the logged-out session's access token refused")  # fmt: skip

    # No password, token or hash in any log line of the three processes.
    secrets = [PASSWORD, first["refresh_token"], second["refresh_token"], third["refresh_token"],
               first["access_token"], "$argon2id$"]  # fmt: skip
    for process in (platform.service, platform.gateway, platform.notes):
        log = process.log_path.read_text(errors="replace")
        assert log, process.name
        for secret in secrets:
            assert secret not in log, (process.name, secret[:12])


def test_a_password_change_ends_the_other_sessions(platform: Platform) -> None:
    tenant = user_tenant(platform, "passwd")
    here = accept(platform, tenant, invite(platform, tenant, "bob@example.com"))
    there = login(platform, tenant, "bob@example.com").json()
    change = {"current_password": PASSWORD, "new_password": "a brand new passphrase"}
    wrong = call(platform, "POST", "/_gateway/auth/password", host(tenant), headers=bearer(here["access_token"]),
                 json={**change, "current_password": "not the password"})  # fmt: skip
    assert_problem(wrong, 401, "invalid_credentials")
    changed = call(platform, "POST", "/_gateway/auth/password", host(tenant), headers=bearer(here["access_token"]),
                   json=change)  # fmt: skip
    assert changed.status_code == 204, changed.text
    assert_problem(refresh(platform, tenant, there["refresh_token"]), 401)
    wait_until(lambda: notes(platform, tenant, there["access_token"]).status_code == 401, timeout=10,
               what="the other session's access token refused")  # fmt: skip
    assert notes(platform, tenant, here["access_token"]).status_code == 200
    assert refresh(platform, tenant, here["refresh_token"]).status_code == 200
    assert_problem(login(platform, tenant, "bob@example.com"), 401, "invalid_credentials")
    assert login(platform, tenant, "bob@example.com", "a brand new passphrase").status_code == 200


def test_a_disabled_user_gets_403_on_login_and_refresh(platform: Platform) -> None:
    tenant = user_tenant(platform, "disabled")
    created = invite(platform, tenant, "carol@example.com")
    pair = accept(platform, tenant, created)
    patched = platform.admin.patch(f"/admin/tenants/{tenant.id}/users/{created['user']['id']}", json={"disabled": True})
    assert patched.status_code == 200, patched.text
    assert_problem(login(platform, tenant, "carol@example.com"), 403, "user_disabled")
    assert_problem(refresh(platform, tenant, pair["refresh_token"]), 403, "user_disabled")
    wait_until(lambda: notes(platform, tenant, pair["access_token"]).status_code == 401, timeout=10,
               what="the disabled user's access token refused")  # fmt: skip


def test_the_same_email_in_two_tenants(platform: Platform) -> None:
    acme, globex = user_tenant(platform, "acme"), user_tenant(platform, "globex")
    accept(platform, acme, invite(platform, acme, "same@example.com"), "acme password 1")
    accept(platform, globex, invite(platform, globex, "same@example.com"), "globex password 2")
    acme_pair = login(platform, acme, "same@example.com", "acme password 1")
    assert acme_pair.status_code == 200, acme_pair.text
    assert login(platform, globex, "same@example.com", "globex password 2").status_code == 200
    assert_problem(login(platform, acme, "same@example.com", "globex password 2"), 401, "invalid_credentials")
    assert_problem(login(platform, globex, "same@example.com", "acme password 1"), 401, "invalid_credentials")
    # A token of one tenant sent to the other.
    cross = call(platform, "GET", "/notes", host(globex), headers=bearer(acme_pair.json()["access_token"]))
    assert_problem(cross, 403, "tenant_mismatch")
    cross_refresh = refresh(platform, globex, acme_pair.json()["refresh_token"])
    assert_problem(cross_refresh, 403, "tenant_mismatch")


def test_login_needs_a_tenant_and_answers_problems(platform: Platform) -> None:
    assert_problem(login(platform, "no-such-tenant-here", "a@example.com"), 404, "tenant_not_found")
    plain = call(platform, "POST", "/_gateway/auth/login", json={"email": "a@example.com", "password": PASSWORD})
    assert_problem(plain, 400, "tenant_required")
    tenant = user_tenant(platform, "garbage")
    for body in (b"not json", b"[]", b'{"email": 1}', b"{}"):
        response = call(platform, "POST", "/_gateway/auth/login", host(tenant), content=body,
                        headers={"Content-Type": "application/json"})  # fmt: skip
        assert 400 <= response.status_code < 500, (body, response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")


def test_roles_in_the_app_and_tenant_admins_manage_users(platform: Platform) -> None:
    tenant = user_tenant(platform, "roles")
    admin = accept(platform, tenant, invite(platform, tenant, "root@example.com", "admin"))
    viewer = accept(platform, tenant, invite(platform, tenant, "view@example.com", "viewer"))
    plain = accept(platform, tenant, invite(platform, tenant, "joe@example.com", "user"))
    # The viewer reads, and may not write.
    assert notes(platform, tenant, viewer["access_token"]).status_code == 200
    refused = call(platform, "POST", "/notes", host(tenant), headers=bearer(viewer["access_token"]), json={"body": "x"})
    assert_problem(refused, 403, "forbidden")
    # Admins manage the tenant's users through the gateway; other roles and API keys may not.
    made = call(platform, "POST", "/_gateway/users", host(tenant), headers=bearer(admin["access_token"]),
                json={"email": "new@example.com", "role": "viewer"})  # fmt: skip
    assert made.status_code == 201, made.text
    assert made.json()["invitation"]["token"]
    listed = call(platform, "GET", "/_gateway/users", host(tenant), headers=bearer(admin["access_token"]))
    assert listed.status_code == 200, listed.text
    assert {u["email"] for u in listed.json()["items"]} >= {"root@example.com", "new@example.com"}
    new_id = made.json()["user"]["id"]
    promoted = call(platform, "PATCH", f"/_gateway/users/{new_id}", host(tenant),
                    headers=bearer(admin["access_token"]), json={"role": "user"})  # fmt: skip
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["role"] == "user"
    for token in (plain["access_token"], viewer["access_token"]):
        assert_problem(call(platform, "GET", "/_gateway/users", host(tenant), headers=bearer(token)), 403, "forbidden")
    by_key = call(platform, "GET", "/_gateway/users", host(tenant), headers={"X-API-Key": tenant.key})
    assert_problem(by_key, 403, "forbidden")
    deleted = call(platform, "DELETE", f"/_gateway/users/{new_id}", host(tenant), headers=bearer(admin["access_token"]))
    assert deleted.status_code == 204, deleted.text
    # /me and /tenant.
    me = call(platform, "GET", "/_gateway/me", host(tenant), headers=bearer(admin["access_token"]))
    assert me.status_code == 200, me.text
    assert {k: me.json()[k] for k in ("email", "role", "tenant_id")} == {
        "email": "root@example.com", "role": "admin", "tenant_id": tenant.id
    }  # fmt: skip
    key_me = call(platform, "GET", "/_gateway/me", host(tenant), headers={"X-API-Key": tenant.key})
    assert key_me.status_code == 200, key_me.text
    assert key_me.json()["key_id"] == tenant.key_id
    info = call(platform, "GET", "/_gateway/tenant", host(tenant), headers=bearer(plain["access_token"]))
    assert info.status_code == 200, info.text
    body = info.json()
    assert (body["id"], body["slug"], body["status"]) == (tenant.id, tenant.slug, "active")
    assert body["usage"]["requests_today"] >= 1
    assert body["usage"]["database_bytes"] > 0


def test_signup_is_404_while_disabled(platform: Platform) -> None:
    body = {"slug": uniq("nosignup"), "name": "N", "email": "a@example.com", "password": PASSWORD}
    assert_problem(call(platform, "POST", "/_gateway/signup", json=body), 404)


# --- sign-up, and the brute-force and timing checks: installations with their own settings --------------------


@pytest.fixture(scope="module")
def signup_platform(inst: Installation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    settings = {"SIGNUP_ENABLED": "true", "SIGNUP_PER_HOUR": "2"}
    with running_platform(inst.with_settings(settings), tmp_path_factory.mktemp("signup")) as started:
        yield started


def test_signup_creates_an_active_tenant_whose_admin_signs_in(signup_platform: Platform, inst: Installation) -> None:
    platform = signup_platform
    slug = uniq("signup")
    body = {"slug": slug, "name": "Signed Up", "email": "founder@example.com", "password": PASSWORD}
    created = call(platform, "POST", "/_gateway/signup", json=body)
    assert created.status_code == 201, created.text
    answer = created.json()
    assert answer["tenant"]["slug"] == slug
    assert answer["tenant"]["status"] == "active"
    assert answer["access_token"]
    assert answer["refresh_token"]
    wait_until(lambda: login(platform, slug, "founder@example.com").status_code == 200, timeout=10,
               what="the new tenant's admin signs in")  # fmt: skip
    pair = login(platform, slug, "founder@example.com").json()
    wait_until(lambda: call(platform, "GET", "/notes", host(slug), headers=bearer(pair["access_token"])).status_code
               == 200, timeout=15, what="the app serves the new tenant")  # fmt: skip
    assert_problem(call(platform, "POST", "/_gateway/signup", json=body), 409, "slug_taken")
    for bad in ("admin", "Not A Slug!"):
        assert_problem(call(platform, "POST", "/_gateway/signup", json={**body, "slug": bad}), 422)
    second = call(platform, "POST", "/_gateway/signup", json={**body, "slug": uniq("signup2")})
    assert second.status_code == 201, second.text
    limited = call(platform, "POST", "/_gateway/signup", json={**body, "slug": uniq("signup3")})
    assert_problem(limited, 429, "too_many_attempts")
    assert int(limited.headers["retry-after"]) > 0


@pytest.fixture(scope="module")
def timing_platform(inst: Installation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    settings = {"LOGIN_MAX_FAILURES": "100000", "LOGIN_MAX_ADDRESS_FAILURES": "100000"}
    with running_platform(inst.with_settings(settings), tmp_path_factory.mktemp("timing")) as started:
        yield started


async def test_the_sixth_failure_in_the_window_is_429(platform: Platform, inst: Installation) -> None:
    tenant = user_tenant(platform, "brute")
    accept(platform, tenant, invite(platform, tenant, "dan@example.com"))
    for _ in range(5):
        assert_problem(login(platform, tenant, "dan@example.com", "wrong password!"), 401, "invalid_credentials")
    locked = login(platform, tenant, "dan@example.com")  # the right password, too late
    assert_problem(locked, 429, "too_many_attempts")
    assert 0 < int(locked.headers["retry-after"]) <= 900
    # An unknown email is limited alike (the limit says nothing about which accounts exist).
    for _ in range(5):
        assert_problem(login(platform, tenant, "ghost@example.com", "wrong password!"), 401, "invalid_credentials")
    assert_problem(login(platform, tenant, "ghost@example.com", "wrong password!"), 429, "too_many_attempts")
    # Another tenant's user with the same email is not locked out.
    other = user_tenant(platform, "brute2")
    accept(platform, other, invite(platform, other, "dan@example.com"))
    assert login(platform, other, "dan@example.com").status_code == 200
    audited = await registry(inst, "SELECT target FROM audit_log WHERE action = 'user.login_account_locked' "
                             "AND tenant_id = $1", uuid.UUID(tenant.id))  # fmt: skip
    assert len(audited) == 2  # one entry per burst: dan's, and the unknown account's


def test_unknown_email_and_wrong_password_look_the_same(timing_platform: Platform) -> None:
    """Same status and body, and the same time within noise: 100 tries each, interleaved, medians compared. Without
    the dummy hash an unknown email would answer ~20x faster (no argon2id at all), far outside the band a median of
    100 moves in (this test took a minute of CI's 20 with 200 tries each)."""
    platform = timing_platform
    tenant = user_tenant(platform, "timing")
    accept(platform, tenant, invite(platform, tenant, "erin@example.com"))
    durations: dict[str, list[float]] = {"wrong": [], "unknown": []}
    bodies: dict[str, set[bytes]] = {"wrong": set(), "unknown": set()}
    with httpx.Client(base_url=platform.gateway.url, headers={"Host": host(tenant)}, timeout=30) as client:
        for i in range(100):
            for kind, email in (("wrong", "erin@example.com"), ("unknown", f"nobody{i}@example.com")):
                started = time.perf_counter()
                response = client.post("/_gateway/auth/login", json={"email": email, "password": "wrong password!"})
                durations[kind].append(time.perf_counter() - started)
                assert response.status_code == 401, response.text
                body = response.json()
                body.pop("instance", None)
                bodies[kind].add(repr(sorted(body.items())).encode())
    assert bodies["wrong"] == bodies["unknown"]
    assert len(bodies["wrong"]) == 1
    wrong, unknown = statistics.median(durations["wrong"]), statistics.median(durations["unknown"])
    ratio = unknown / wrong
    print(f"login failure medians: wrong password {wrong * 1000:.1f} ms, unknown email {unknown * 1000:.1f} ms, "
          f"ratio {ratio:.2f}")  # fmt: skip
    assert 0.6 < ratio < 1.6, (wrong, unknown)
