"""The gateway end to end: tenant-service, gateway and an upstream as real processes, over HTTP."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import jwt as pyjwt
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from support.gateway_support import GatewayProcess
from support.platform import Installation, Tenant, wait_until
from support.stacks import GatewayStack, seen_headers


def make_tenant(stack: GatewayStack, slug: str, **body: object) -> Tenant:
    response = stack.admin.post("/admin/tenants", json={"slug": slug, "name": slug, **body})
    assert response.status_code == 201, response.text
    tenant = Tenant.from_created(response.json())
    wait_until(lambda: get(stack, "/hello", headers={"X-API-Key": tenant.key}).status_code == 200)
    return tenant


def get(stack: GatewayStack, path: str, **kwargs: object) -> httpx.Response:
    return httpx.get(stack.gateway.url + path, timeout=10, **kwargs)  # type: ignore[arg-type]


# --- tenant sources --------------------------------------------------------------------------------------


def test_each_of_the_six_tenant_sources_reaches_the_tenant(stack: GatewayStack) -> None:
    acme = make_tenant(stack, "gw-acme", domains=["gw-acme.example.com"])
    token = stack.gateway.client().post("/_gateway/token", headers={"X-API-Key": acme.key}).json()["access_token"]
    key = {"X-API-Key": acme.key}
    variants = {
        "subdomain": get(stack, "/hello", headers={**key, "Host": "GW-ACME.localhost.:8080"}),
        "custom domain": get(stack, "/hello", headers={**key, "Host": "gw-acme.example.com"}),
        "path": get(stack, "/t/gw-acme/hello", headers=key),
        "header": get(stack, "/hello", headers={**key, "X-Tenant-ID": acme.id}),
        "api key": get(stack, "/hello", headers={"Authorization": f"Bearer {acme.key}"}),
        "jwt": get(stack, "/hello", headers={"Authorization": f"Bearer {token}"}),
    }
    for source, response in variants.items():
        assert response.status_code == 200, (source, response.text)
        seen = seen_headers(response.json())
        assert seen["x-tenant-id"] == [acme.id], source
        assert seen["x-tenant-slug"] == ["gw-acme"], source
        assert response.json()["path"] == "/hello", source
        assert response.headers["ratelimit-limit"], source


def test_path_prefix_is_stripped_and_query_kept(stack: GatewayStack) -> None:
    acme = make_tenant(stack, "gw-path")
    response = get(stack, "/t/gw-path/a/b%2Fc?x=1&y=2", headers={"X-API-Key": acme.key})
    assert response.status_code == 200
    assert response.json()["raw_path"] == "/a/b%2Fc"
    assert response.json()["query"] == "x=1&y=2"


def test_conflicting_locations_get_400(stack: GatewayStack) -> None:
    a = make_tenant(stack, "gw-con-a")
    b = make_tenant(stack, "gw-con-b")
    response = get(stack, "/t/gw-con-a/x", headers={"X-API-Key": a.key, "X-Tenant-ID": b.id})
    assert response.status_code == 400
    assert response.json()["code"] == "tenant_conflict"
    response = get(stack, "/x", headers={"X-API-Key": a.key, "Host": "gw-con-b.localhost", "X-Tenant-ID": "gw-con-a"})
    assert response.json()["code"] == "tenant_conflict"


def test_credential_of_tenant_a_on_tenant_b_gets_403(stack: GatewayStack) -> None:
    a = make_tenant(stack, "gw-mis-a")
    b = make_tenant(stack, "gw-mis-b")
    token = stack.gateway.client().post("/_gateway/token", headers={"X-API-Key": a.key}).json()["access_token"]
    for headers in ({"X-API-Key": a.key}, {"Authorization": f"Bearer {token}"}):
        for extra in ({"X-Tenant-ID": b.id}, {"Host": "gw-mis-b.localhost"}):
            response = get(stack, "/x", headers={**headers, **extra})
            assert response.status_code == 403, response.text
            assert response.json()["code"] == "tenant_mismatch"
        response = get(stack, "/t/gw-mis-b/x", headers=headers)
        assert response.status_code == 403


def test_missing_or_bad_credentials_get_identical_401(stack: GatewayStack) -> None:
    a = make_tenant(stack, "gw-401")
    revoked = stack.admin.post(f"/admin/tenants/{a.id}/api-keys", json={"name": "old"}).json()
    stack.admin.delete(f"/admin/tenants/{a.id}/api-keys/{revoked['id']}")
    wait_until(lambda: get(stack, "/x", headers={"X-API-Key": revoked["key"]}).status_code == 401)
    bodies = []
    for headers in (
        {},
        {"X-API-Key": "tk_short"},
        {"X-API-Key": a.key[:-1] + ("A" if a.key[-1] != "A" else "B")},
        {"X-API-Key": "tk_" + "A" * 38},
        {"X-API-Key": revoked["key"]},
        {"Authorization": "Bearer not-a-jwt"},
        {"Authorization": "Basic Zm9vOmJhcg=="},
    ):
        response = get(stack, "/x", headers={**headers, "X-Tenant-ID": a.id})
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"].startswith("Bearer")
        body = response.json()
        bodies.append((body["code"], body["detail"], body["title"]))
    assert len(set(bodies)) == 1


def test_unknown_suspended_and_deleted_tenants(stack: GatewayStack) -> None:
    a = make_tenant(stack, "gw-life")
    assert get(stack, "/x", headers={"X-API-Key": a.key, "Host": "gw-nobody.localhost"}).status_code == 404
    stack.admin.post(f"/admin/tenants/{a.id}/suspend")
    wait_until(lambda: get(stack, "/x", headers={"X-API-Key": a.key}).status_code == 403)
    assert get(stack, "/x", headers={"X-API-Key": a.key}).json()["code"] == "tenant_suspended"
    stack.admin.post(f"/admin/tenants/{a.id}/resume")
    wait_until(lambda: get(stack, "/x", headers={"X-API-Key": a.key}).status_code == 200)
    stack.admin.delete(f"/admin/tenants/{a.id}")
    wait_until(lambda: get(stack, "/x", headers={"X-API-Key": a.key}).status_code == 404)


def test_suspension_and_revocation_reach_two_gateways_within_two_seconds(
    stack: GatewayStack, installation: Installation, tmp_path: Path
) -> None:
    second = GatewayProcess(
        installation, stack.service.url, stack.echo.url, tmp_path / "gw2.log", stack.signing_keys,
        DIRECTORY_REFRESH_SECONDS="1.0",
    ).start()  # fmt: skip
    try:
        a = make_tenant(stack, "gw-prop")
        gateways = [stack.gateway.url, second.url]
        wait_until(lambda: all(httpx.get(g + "/x", headers={"X-API-Key": a.key}).status_code == 200 for g in gateways))
        stack.admin.post(f"/admin/tenants/{a.id}/suspend")
        elapsed = wait_until(
            lambda: all(httpx.get(g + "/x", headers={"X-API-Key": a.key}).status_code == 403 for g in gateways),
            timeout=2.0,
        )
        assert elapsed <= 2.0
        stack.admin.post(f"/admin/tenants/{a.id}/resume")
        wait_until(lambda: all(httpx.get(g + "/x", headers={"X-API-Key": a.key}).status_code == 200 for g in gateways))
        token = httpx.post(second.url + "/_gateway/token", headers={"X-API-Key": a.key}).json()["access_token"]
        stack.admin.delete(f"/admin/tenants/{a.id}/api-keys/{a.key_id}")
        wait_until(
            lambda: all(
                httpx.get(g + "/x", headers={"X-API-Key": a.key}).status_code == 401
                and httpx.get(g + "/x", headers={"Authorization": f"Bearer {token}"}).status_code == 401
                for g in gateways
            ),
            timeout=2.0,
        )
    finally:
        second.stop()


# --- quotas ----------------------------------------------------------------------------------------------


def test_concurrent_requests_against_a_per_minute_limit_forward_exactly_the_limit(
    stack: GatewayStack, redis_url: str
) -> None:
    limit = 37
    a = make_tenant(stack, "gw-quota-a", limits={"requests_per_minute": 1000})
    b = make_tenant(stack, "gw-quota-b")
    stack.admin.patch(f"/admin/tenants/{a.id}", json={"limits": {"requests_per_minute": limit}})
    wait_until(lambda: get(stack, "/x", headers={"X-API-Key": a.key}).headers.get("ratelimit-limit") == str(limit))
    if time.time() % 60 > 30:  # the burst must fit in one minute window, even on a loaded machine
        time.sleep(60 - time.time() % 60 + 0.2)
    window = int(time.time() // 60)
    used = int(get(stack, "/x", headers={"X-API-Key": a.key}).headers["ratelimit-limit"]) - int(
        get(stack, "/x", headers={"X-API-Key": a.key}).headers["ratelimit-remaining"]
    )
    limits = httpx.Limits(max_connections=50)
    with (
        httpx.Client(base_url=stack.gateway.url, timeout=30, limits=limits) as client,
        concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool,
    ):
        statuses = list(pool.map(lambda _: client.get("/count", headers={"X-API-Key": a.key}).status_code, range(200)))
    assert int(time.time() // 60) == window, "the burst crossed a minute boundary"
    assert statuses.count(200) == limit - used
    assert statuses.count(429) == 200 - (limit - used)
    refused = get(stack, "/x", headers={"X-API-Key": a.key})
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-remaining"] == "0"
    # Tenant B is untouched by A's exhaustion.
    assert get(stack, "/x", headers={"X-API-Key": b.key}).status_code == 200
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = [k.decode() for k in client.scan_iter(match="*", count=1000)]
    mine = [k for k in keys if a.id in k]
    assert mine
    for key in mine:
        assert key.startswith("t:{" + a.id + "}:")
        assert client.ttl(key) > 0
    assert all(k.startswith(("t:{", "tenantry:")) for k in keys if "rl" in k)


def test_daily_quota_gives_quota_exceeded(stack: GatewayStack) -> None:
    a = make_tenant(stack, "gw-daily", limits={"requests_per_day": 3, "requests_per_minute": 100})
    statuses = [get(stack, "/x", headers={"X-API-Key": a.key}) for _ in range(6)]
    codes = [r.status_code for r in statuses]
    assert codes.count(429) >= 2
    assert statuses[-1].json()["code"] == "quota_exceeded"


# --- forwarding ------------------------------------------------------------------------------------------


def test_client_tenant_headers_are_replaced_and_identity_added(stack: GatewayStack) -> None:
    a = make_tenant(stack, "gw-hdr")
    response = get(
        stack,
        "/x",
        headers={
            "X-API-Key": a.key,
            "X-Tenant-ID": a.id,
            "X-Tenant-Slug": "evil",
            "X-Tenant-Token": "forged",
            "X-Tenant-Plan": "enterprise",
            "X-Forwarded-For": "6.6.6.6",
            "X-Request-ID": "req-123",
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "drop me",
        },
    )
    seen = seen_headers(response.json())
    assert seen["x-tenant-id"] == [a.id]
    assert seen["x-tenant-slug"] == ["gw-hdr"]
    assert "x-tenant-plan" not in seen
    assert seen["x-tenant-token"] != ["forged"]
    assert seen["x-request-id"] == ["req-123"]
    assert response.headers["x-request-id"] == "req-123"
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert "x-secret-hop" not in seen
    assert "x-api-key" not in seen


def test_upstream_verifies_tenant_token_with_another_jose_library(stack: GatewayStack) -> None:
    a = make_tenant(stack, "gw-jose")
    response = get(stack, "/x", headers={"X-API-Key": a.key})
    token = seen_headers(response.json())["x-tenant-token"][0]
    jwks = KeySet.import_key_set(get(stack, "/_gateway/jwks.json").json())
    decoded = jose_jwt.decode(token, jwks, algorithms=["EdDSA"])
    claims = decoded.claims
    assert claims["tid"] == a.id
    assert claims["slug"] == "gw-jose"
    assert claims["sub"] == a.key_id
    assert claims["plan"] == "free"
    assert claims["exp"] - claims["iat"] <= 60
    assert decoded.header["kid"] == "k1"


def test_request_and_response_bodies_stream(stack: GatewayStack) -> None:
    a = make_tenant(stack, "gw-body")
    payload = b"x" * 300_000
    response = httpx.post(stack.gateway.url + "/echo", content=payload, headers={"X-API-Key": a.key}, timeout=30)
    assert response.status_code == 200
    assert len(response.json()["body"]) == len(payload)

    def chunks():
        for _ in range(10):
            yield b"y" * 1000

    response = httpx.post(stack.gateway.url + "/echo", content=chunks(), headers={"X-API-Key": a.key}, timeout=30)
    assert response.json()["body"] == "y" * 10_000
    with httpx.stream("GET", stack.gateway.url + "/stream?chunks=20", headers={"X-API-Key": a.key}) as streamed:
        lines = list(streamed.iter_lines())
    assert lines[:2] == ["chunk0", "chunk1"]
    assert len(lines) == 20


def test_oversized_body_gets_413(stack: GatewayStack, installation: Installation, tmp_path: Path) -> None:
    small = GatewayProcess(
        installation, stack.service.url, stack.echo.url, tmp_path / "gw.log", stack.signing_keys,
        MAX_REQUEST_BODY_BYTES="1000",
    ).start()  # fmt: skip
    try:
        a = make_tenant(stack, "gw-413")
        wait_until(lambda: httpx.get(small.url + "/x", headers={"X-API-Key": a.key}).status_code == 200)
        response = httpx.post(small.url + "/echo", content=b"z" * 5000, headers={"X-API-Key": a.key})
        assert response.status_code == 413
        assert response.json()["code"] == "payload_too_large"

        def chunks():
            for _ in range(10):
                yield b"z" * 500

        response = httpx.post(small.url + "/echo", content=chunks(), headers={"X-API-Key": a.key})
        assert response.status_code == 413
        # MAX_REQUEST_BODY_BYTES is the old, shared name: still read for this release, with a warning.
        assert [(w["variable"], w["replacement"]) for w in deprecation_warnings(small)] == [
            ("MAX_REQUEST_BODY_BYTES", "GATEWAY_MAX_REQUEST_BODY_BYTES")
        ]
    finally:
        small.stop()


def deprecation_warnings(gateway: GatewayProcess) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in gateway.log().splitlines() if '"setting_deprecated"' in line]
    assert all(line["level"] == "warning" for line in lines)
    return lines


def test_the_gateways_own_body_limit_wins_over_the_old_shared_name(
    stack: GatewayStack, installation: Installation, tmp_path: Path
) -> None:
    small = GatewayProcess(
        installation, stack.service.url, stack.echo.url, tmp_path / "gw.log", stack.signing_keys,
        GATEWAY_MAX_REQUEST_BODY_BYTES="1000", MAX_REQUEST_BODY_BYTES="100000",
    ).start()  # fmt: skip
    try:
        a = make_tenant(stack, "gw-413-new-name")
        wait_until(lambda: httpx.get(small.url + "/x", headers={"X-API-Key": a.key}).status_code == 200)
        assert httpx.post(small.url + "/echo", content=b"z" * 1000, headers={"X-API-Key": a.key}).status_code == 200
        response = httpx.post(small.url + "/echo", content=b"z" * 5000, headers={"X-API-Key": a.key})
        assert response.status_code == 413
        assert response.json()["code"] == "payload_too_large"
        assert [(w["variable"], w["ignored"]) for w in deprecation_warnings(small)] == [
            ("MAX_REQUEST_BODY_BYTES", True)
        ]
    finally:
        small.stop()


def test_upstream_down_gives_502_and_slow_gives_504(
    stack: GatewayStack, installation: Installation, tmp_path: Path
) -> None:
    from support.platform import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    gw = GatewayProcess(
        installation, stack.service.url, dead, tmp_path / "gw.log", stack.signing_keys, UPSTREAM_TIMEOUT="0.5"
    ).start()
    try:
        a = make_tenant(stack, "gw-502")
        wait_until(lambda: httpx.get(gw.url + "/x", headers={"X-API-Key": a.key}).status_code == 502)
        response = httpx.get(gw.url + "/x", headers={"X-API-Key": a.key})
        assert response.json()["code"] == "upstream_unavailable"
        stack.admin.patch(f"/admin/tenants/{a.id}", json={"upstream_url": stack.echo.url})
        wait_until(lambda: httpx.get(gw.url + "/x", headers={"X-API-Key": a.key}).status_code == 200)
        started = time.monotonic()
        response = httpx.get(gw.url + "/slow?seconds=3", headers={"X-API-Key": a.key}, timeout=10)
        assert response.status_code == 504
        assert response.json()["code"] == "upstream_timeout"
        assert time.monotonic() - started < 2.5
    finally:
        gw.stop()


def _closing_upstream() -> tuple[str, list[bytes], socket.socket]:
    """A TCP upstream that reads each request and hangs up without answering; records what it got."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    seen: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    seen.append(conn.recv(65536))

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{server.getsockname()[1]}", seen, server


def test_post_is_never_retried_and_a_hangup_is_502(stack: GatewayStack) -> None:
    url, seen, server = _closing_upstream()
    try:
        a = make_tenant(stack, "gw-retry")
        stack.admin.patch(f"/admin/tenants/{a.id}", json={"upstream_url": url})
        wait_until(lambda: get(stack, "/probe", headers={"X-API-Key": a.key}).status_code == 502)
        seen.clear()
        response = httpx.post(stack.gateway.url + "/pay", content=b"once", headers={"X-API-Key": a.key})
        assert response.status_code == 502
        assert response.json()["code"] == "upstream_unavailable"
        time.sleep(0.2)
        assert sum(1 for request in seen if request.startswith(b"POST /pay")) == 1
    finally:
        server.close()


# --- hostile tokens and headers --------------------------------------------------------------------------


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_hostile_tokens_get_401_or_403_never_500(stack: GatewayStack) -> None:
    a = make_tenant(stack, "gw-jwt-a")
    b = make_tenant(stack, "gw-jwt-b")
    now = int(time.time())
    claims = {"iss": "tenantry-gateway", "aud": "tenantry", "sub": a.key_id, "tid": a.id, "iat": now, "exp": now + 300}
    jwks = get(stack, "/_gateway/jwks.json").json()
    public_x = jwks["keys"][0]["x"].encode()
    valid = stack.gateway.client().post("/_gateway/token", headers={"X-API-Key": a.key}).json()["access_token"]
    header, payload, signature = valid.split(".")
    tokens = {
        "alg none": _b64({"alg": "none", "kid": "k1"}) + "." + _b64(claims) + ".",
        "hs256 with public key": pyjwt.encode(claims, public_x, algorithm="HS256", headers={"kid": "k1"}),
        "expired": stack_sign(stack, {**claims, "iat": now - 4000, "exp": now - 3600}),
        "wrong aud": stack_sign(stack, {**claims, "aud": "someone-else"}),
        "wrong iss": stack_sign(stack, {**claims, "iss": "evil"}),
        "missing exp": stack_sign(stack, {k: v for k, v in claims.items() if k != "exp"}),
        "unknown kid": stack_sign(stack, claims, kid="k9"),
        "truncated": valid[: len(valid) // 2],
        "two segments": header + "." + payload,
        "tampered payload": header + "." + _b64({**claims, "tid": b.id}) + "." + signature,
        "not base64": "@@@.###.$$$",
    }
    for name, token in tokens.items():
        response = get(stack, "/x", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, (name, response.status_code, response.text)
    response = get(stack, "/x", headers={"Authorization": f"Bearer {valid}", "X-Tenant-ID": b.id})
    assert response.status_code == 403
    huge = get(stack, "/x", headers={"X-API-Key": a.key, "X-Padding": "p" * 10_240})
    assert huge.status_code == 431
    response = get(stack, "/x", headers={"Authorization": "Bearer " + "e" * 9000})
    assert response.status_code in (401, 431)


def stack_sign(stack: GatewayStack, claims: dict, kid: str = "k1") -> str:
    from tenantry_common.jwt_keys import KeyRing

    ring = KeyRing.from_config(stack.signing_keys, "EdDSA")
    key = ring.private_keys["k1"]
    return pyjwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})


def test_token_endpoint_and_jwks(stack: GatewayStack) -> None:
    a = make_tenant(stack, "gw-token")
    response = stack.gateway.client().post("/_gateway/token", headers={"Authorization": f"Bearer {a.key}"})
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    header = pyjwt.get_unverified_header(body["access_token"])
    assert header["kid"] == "k1"
    assert header["alg"] == "EdDSA"
    claims = pyjwt.decode(body["access_token"], options={"verify_signature": False})
    assert {"iss", "aud", "sub", "tid", "scope", "iat", "exp", "jti"} <= set(claims)
    bad = stack.gateway.client().post("/_gateway/token", headers={"X-API-Key": "tk_nope"})
    assert bad.status_code == 401
    assert bad.json()["code"] == "unauthorized"
    assert get(stack, "/_gateway/healthz").status_code == 200
    assert get(stack, "/_gateway/readyz").json()["checks"]["directory"] == "ok"
    metrics = get(stack, "/_gateway/metrics").text
    assert "tenantry_gateway_requests_total" in metrics
