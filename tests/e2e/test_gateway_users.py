"""Tenant users at the gateway (contract §12), the parts that need no user store: ``/_gateway/me`` for API keys,
the location and body rules of ``/_gateway/auth/*``, who may use ``/_gateway/users``, and users' access tokens on
proxied requests. tenant-service, gateway and the echo upstream run as processes; users' access tokens are signed
with the stack's keys, as the gateway signs them after a login.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import jwt as pyjwt

from support.platform import Tenant, wait_until
from support.stacks import GatewayStack, echo_hits, seen_headers
from tenantry_common.jwt_keys import KeyRing


def _tenant(stack: GatewayStack, stem: str) -> Tenant:
    return stack.tenant(stem)


def _call(stack: GatewayStack, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, stack.gateway.url + path, timeout=10, **kwargs)


def _user_token(stack: GatewayStack, tenant: Tenant, role: str, *, session: str | None = None) -> str:
    """An access token of a tenant user, as the gateway signs one at login."""
    ring = KeyRing.from_config(stack.signing_keys, "EdDSA")
    now = int(time.time())
    return ring.sign(
        {
            "iss": "tenantry-gateway",
            "aud": "tenantry",
            "sub": "user-" + role,
            "tid": tenant.id,
            "role": role,
            "sid": session or uuid.uuid4().hex,
            "scope": "",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
        }
    )


def _problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


def test_me_answers_an_api_key_and_its_access_token_with_the_key_and_its_scopes(stack: GatewayStack) -> None:
    tenant = _tenant(stack, "me-key")
    by_key = _call(stack, "GET", "/_gateway/me", headers={"X-API-Key": tenant.key})
    assert by_key.status_code == 200, by_key.text
    assert by_key.headers["cache-control"] == "no-store"
    me = by_key.json()
    assert me["type"] == "api_key"
    assert me["tenant_id"] == tenant.id
    assert isinstance(me["scopes"], list)
    token = _call(stack, "POST", "/_gateway/token", headers={"X-API-Key": tenant.key}).json()["access_token"]
    by_token = _call(stack, "GET", "/_gateway/me", headers={"Authorization": f"Bearer {token}"})
    assert by_token.json() == me
    # The same through each location source of the key's own tenant, including the path form.
    for path, headers in (
        ("/_gateway/me", {"Host": f"{tenant.slug}.localhost"}),
        ("/_gateway/me", {"X-Tenant-ID": tenant.id}),
        (f"/t/{tenant.slug}/_gateway/me", {}),
    ):
        assert _call(stack, "GET", path, headers={"X-API-Key": tenant.key, **headers}).json() == me
    assert echo_hits(stack, "/_gateway/me") == 0  # never proxied


def test_me_needs_a_credential_of_the_located_tenant(stack: GatewayStack) -> None:
    tenant, other = _tenant(stack, "me-a"), _tenant(stack, "me-b")
    refused = _call(stack, "GET", "/_gateway/me", headers={"Host": f"{tenant.slug}.localhost"})
    _problem(refused, 401, "unauthorized")
    assert "www-authenticate" in refused.headers
    mismatch = _call(stack, "GET", "/_gateway/me", headers={"X-API-Key": tenant.key, "X-Tenant-ID": other.id})
    _problem(mismatch, 403, "tenant_mismatch")
    _problem(_call(stack, "POST", "/_gateway/me", headers={"X-API-Key": tenant.key}), 405, "method_not_allowed")


def test_login_needs_a_location_naming_a_served_tenant(stack: GatewayStack) -> None:
    body = {"email": "someone@example.com", "password": "correct horse battery"}
    _problem(_call(stack, "POST", "/_gateway/auth/login", json=body), 400, "tenant_required")
    unknown = _call(stack, "POST", "/_gateway/auth/login", json=body, headers={"X-Tenant-ID": "no-such-tenant"})
    _problem(unknown, 404, "tenant_not_found")
    tenant = _tenant(stack, "login-suspended")
    assert stack.admin.post(f"/admin/tenants/{tenant.id}/suspend").status_code == 200
    host = {"Host": f"{tenant.slug}.localhost"}
    wait_until(lambda: _call(stack, "POST", "/_gateway/auth/login", json=body, headers=host).status_code == 403)
    _problem(_call(stack, "POST", "/_gateway/auth/login", json=body, headers=host), 403, "tenant_suspended")
    conflict = _call(stack, "POST", "/_gateway/auth/login", json=body, headers={**host, "X-Tenant-ID": "other"})
    _problem(conflict, 400, "tenant_conflict")
    allow = _call(stack, "GET", "/_gateway/auth/login", headers=host)
    _problem(allow, 405, "method_not_allowed")
    assert allow.headers["allow"] == "POST"


def test_bad_bodies_are_refused_by_the_gateway_never_with_a_500(stack: GatewayStack) -> None:
    tenant = _tenant(stack, "login-bodies")
    path = f"/t/{tenant.slug}/_gateway/auth/login"
    _problem(_call(stack, "POST", path, content=b"{not json", headers={"content-type": "application/json"}), 400,
             "malformed_body")  # fmt: skip
    missing = _call(stack, "POST", path, json={"email": "a@example.com"})
    _problem(missing, 422, "validation_error")
    assert missing.json()["errors"][0]["field"] == "password"
    wrong = _call(stack, "POST", path, json={"email": 7, "password": "x"})
    assert wrong.json()["errors"][0]["field"] == "email"
    _problem(_call(stack, "POST", path, json=[1, 2]), 422, "validation_error")
    big = {"email": "a@example.com", "password": "p" * 20_000}
    _problem(_call(stack, "POST", path, json=big), 413, "payload_too_large")
    form = _call(stack, "POST", path, content=b"email=a", headers={"content-type": "application/x-www-form-urlencoded"})
    _problem(form, 415, "unsupported_media_type")
    _problem(_call(stack, "POST", "/_gateway/auth/refresh", json={"refresh_token": 1}), 422, "validation_error")
    assert echo_hits(stack, "/_gateway/auth/login") == 0


def test_only_a_signed_in_user_changes_a_password_and_only_admins_manage_users(stack: GatewayStack) -> None:
    tenant = _tenant(stack, "users-roles")
    change = {"current_password": "old password 1", "new_password": "new password 22"}
    _problem(_call(stack, "POST", "/_gateway/auth/password", json=change), 401, "unauthorized")
    by_key = _call(stack, "POST", "/_gateway/auth/password", json=change, headers={"X-API-Key": tenant.key})
    _problem(by_key, 403, "forbidden")
    for role in ("user", "viewer"):
        token = {"Authorization": f"Bearer {_user_token(stack, tenant, role)}"}
        _problem(_call(stack, "GET", "/_gateway/users", headers=token), 403, "forbidden")
        _problem(_call(stack, "POST", "/_gateway/users", json={"email": "x@example.com"}, headers=token), 403,
                 "forbidden")  # fmt: skip
    _problem(_call(stack, "GET", "/_gateway/users", headers={"X-API-Key": tenant.key}), 403, "forbidden")
    admin = {"Authorization": f"Bearer {_user_token(stack, tenant, 'admin')}"}
    _problem(_call(stack, "PUT", "/_gateway/users", headers=admin), 405, "method_not_allowed")
    _problem(_call(stack, "GET", "/_gateway/users/some-user", headers=admin), 405, "method_not_allowed")
    _problem(_call(stack, "DELETE", "/_gateway/users/bad%20id", headers=admin), 404, "not_found")


def test_a_users_access_token_reaches_the_upstream_with_uid_and_role_and_stays_in_its_tenant(
    stack: GatewayStack,
) -> None:
    tenant, other = _tenant(stack, "user-token"), _tenant(stack, "user-token-b")
    token = _user_token(stack, tenant, "viewer")
    response = _call(stack, "GET", "/hello", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    identity = pyjwt.decode(seen_headers(response.json())["x-tenant-token"][0], options={"verify_signature": False})
    assert (identity["tid"], identity["sub"], identity["uid"], identity["role"]) == (
        tenant.id, "user-viewer", "user-viewer", "viewer"
    )  # fmt: skip
    elsewhere = _call(stack, "GET", "/hello", headers={"Authorization": f"Bearer {token}", "X-Tenant-ID": other.id})
    _problem(elsewhere, 403, "tenant_mismatch")
    api_key = _call(stack, "GET", "/hello", headers={"X-API-Key": tenant.key})
    key_identity = pyjwt.decode(seen_headers(api_key.json())["x-tenant-token"][0], options={"verify_signature": False})
    assert "role" not in key_identity
    assert "uid" not in key_identity
    # A token naming a role the platform does not know is no credential at all.
    forged = _user_token(stack, tenant, "owner")
    _problem(_call(stack, "GET", "/hello", headers={"Authorization": f"Bearer {forged}"}), 401, "unauthorized")
