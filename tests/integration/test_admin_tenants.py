"""Black-box tests of the tenant admin API (contract §3 and §7): create, list, get, change, lifecycle, purge."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from support.assertions import API_KEY, assert_problem, uniq
from support.assertions import create_tenant as create
from support.platform import wait_for

# --- create ---------------------------------------------------------------------------------------------


async def test_create_returns_201_active_with_first_api_key_and_location(api) -> None:
    slug = uniq("create")
    response = await api.post(
        "/admin/tenants",
        json={"slug": slug, "name": "Acme Corp", "plan": "free", "domains": [], "settings": {"theme": "dark"}},
    )
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status"] == "active"
    assert body["slug"] == slug
    assert body["name"] == "Acme Corp"
    assert body["plan"] == "free"
    assert body["settings"] == {"theme": "dark"}
    assert body["domains"] == []
    assert {"name", "host", "port"} <= set(body["database"])
    assert isinstance(body["database"]["port"], int)
    assert body["limits"]["requests_per_minute"] == 600
    assert body["limits"]["requests_per_day"] == 50000
    assert body["created_at"]
    assert body["updated_at"]
    key = body["api_key"]
    assert API_KEY.fullmatch(key["key"]), key
    assert key["id"]
    assert key["key"].startswith(key["prefix"])
    assert len(key["prefix"]) < len(key["key"])
    assert response.headers["location"].endswith(f"/admin/tenants/{body['id']}")
    got = await api.get(response.headers["location"])
    assert got.status_code == 200
    assert got.json()["id"] == body["id"]
    assert "api_key" not in got.json()


async def test_create_without_plan_gets_the_default_plan(api) -> None:
    body = await create(api, uniq("defplan"))
    assert body["plan"] == "free"
    assert body["settings"] == {}


async def test_create_with_prefer_respond_async_returns_202_provisioning_then_becomes_active(api) -> None:
    slug = uniq("async")
    response = await api.post(
        "/admin/tenants", json={"slug": slug, "name": "Async Inc"}, headers={"Prefer": "respond-async"}
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "provisioning"
    assert API_KEY.fullmatch(body["api_key"]["key"])
    location = response.headers["location"]
    assert location.endswith(f"/admin/tenants/{body['id']}")

    async def active() -> bool:
        got = await api.get(location)
        assert got.status_code == 200, got.text
        assert got.json()["status"] in ("provisioning", "active"), got.text
        return got.json()["status"] == "active"

    await wait_for(active, timeout=30, interval=0.1)
    by_slug = await api.get(f"/admin/tenants/{slug}")
    assert by_slug.json()["status"] == "active"


async def test_create_with_duplicate_slug_gets_409_tenant_exists(api) -> None:
    slug = uniq("dup")
    await create(api, slug)
    response = await api.post("/admin/tenants", json={"slug": slug, "name": "Again"})
    assert_problem(response, 409, "tenant_exists")


async def test_create_with_unknown_plan_gets_422_naming_plan(api) -> None:
    response = await api.post("/admin/tenants", json={"slug": uniq("noplan"), "name": "X", "plan": "platinum-x"})
    assert_problem(response, 422, field="plan")


async def test_create_with_disallowed_upstream_gets_422_upstream_not_allowed(api) -> None:
    response = await api.post(
        "/admin/tenants",
        json={"slug": uniq("upst"), "name": "X", "upstream_url": "http://169.254.169.254/latest/meta-data"},
    )
    assert_problem(response, 422, "upstream_not_allowed")


# --- validation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "slug",
    [
        "ab",  # too short
        "a",
        "",
        "a" * 33,  # too long
        "a" * 64,
        "a" * 65,
        "a" * 300,
        "Acme",  # uppercase
        "ACME",
        "1acme",  # leading digit
        "-acme",
        "acme-",  # trailing '-'
        "ac--me",  # '--'
        "acmé",  # unicode
        "\uff41\uff43\uff4d\uff45",  # fullwidth "acme"
        "ac me",
        "ac_me",
        "ac.me",
        "acme\n",
        "a'; DROP TABLE tenants;--",
        'x" OR 1=1',
        "x' OR '1'='1",
        "acme/../../etc",
        "acme%00",
    ],
)
async def test_invalid_slug_gets_422_problem_json_naming_slug(api, slug: str) -> None:
    response = await api.post("/admin/tenants", json={"slug": slug, "name": "Invalid"})
    body = assert_problem(response, 422, field="slug")
    assert body["code"] == "validation_error"


@pytest.mark.parametrize(
    "slug", ["www", "api", "admin", "app", "gateway", "internal", "template", "postgres", "public", "root"]
)
async def test_reserved_slug_gets_422_problem_json(api, slug: str) -> None:
    response = await api.post("/admin/tenants", json={"slug": slug, "name": "Reserved"})
    assert_problem(response, 422, field="slug")


async def test_sql_like_slug_leaves_the_registry_intact(api) -> None:
    await api.post("/admin/tenants", json={"slug": "a'; DROP TABLE tenants;--", "name": "x"})
    response = await api.get("/admin/tenants", params={"limit": 1})
    assert response.status_code == 200
    lookup = await api.get("/admin/tenants/a'; DROP TABLE tenants;--")
    assert_problem(lookup, 404, "tenant_not_found")


@pytest.mark.parametrize("field", ["color", "owner", "Slug", "tenant_id"])
async def test_unknown_field_gets_422_naming_the_field(api, field: str) -> None:
    response = await api.post("/admin/tenants", json={"slug": uniq("unk"), "name": "X", field: "y"})
    assert_problem(response, 422, field=field)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("status", "active"),
        ("database", {"name": "postgres", "host": "10.0.0.1", "port": 5432}),
        ("password", "hunter2hunter2"),
        ("id", "00000000-0000-0000-0000-000000000001"),
        ("db_name", "postgres"),
        ("api_key", "tk_x"),
        ("created_at", "2020-01-01T00:00:00Z"),
    ],
)
async def test_privileged_field_on_create_gets_422_naming_the_field(api, field: str, value: object) -> None:
    slug = uniq("priv")
    response = await api.post("/admin/tenants", json={"slug": slug, "name": "X", field: value})
    assert_problem(response, 422, field=field)
    assert_problem(await api.get(f"/admin/tenants/{slug}"), 404, "tenant_not_found")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("status", "active"),
        ("database", {"name": "postgres"}),
        ("password", "hunter2hunter2"),
        ("id", "00000000-0000-0000-0000-000000000001"),
        ("slug", "renamed"),
    ],
)
async def test_privileged_field_on_patch_gets_422_naming_the_field(api, field: str, value: object) -> None:
    tenant = await create(api, uniq("ppriv"))
    response = await api.patch(f"/admin/tenants/{tenant['id']}", json={field: value})
    assert_problem(response, 422, field=field)
    after = (await api.get(f"/admin/tenants/{tenant['id']}")).json()
    assert after["status"] == "active"
    assert after["slug"] == tenant["slug"]
    assert after["database"] == tenant["database"]


async def test_body_over_64_kib_gets_413_payload_too_large(api) -> None:
    body = {"slug": uniq("big"), "name": "Big", "settings": {"blob": "x" * (65 * 1024)}}
    response = await api.post("/admin/tenants", json=body)
    assert_problem(response, 413, "payload_too_large")


async def test_body_over_64_kib_on_patch_gets_413_payload_too_large(api) -> None:
    tenant = await create(api, uniq("bigp"))
    response = await api.patch(f"/admin/tenants/{tenant['id']}", json={"settings": {"blob": "x" * (65 * 1024)}})
    assert_problem(response, 413, "payload_too_large")


@pytest.mark.parametrize(
    "raw",
    [b"{", b"not json", b'{"slug": "abc", "name": }', b"\xff\xfe\x00", b'{"slug": "abc" "name": "x"}', b"", b"null"],
)
async def test_malformed_json_gets_4xx_problem_json(api, raw: bytes) -> None:
    response = await api.post("/admin/tenants", content=raw, headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert_problem(response, response.status_code)


@pytest.mark.parametrize("raw", [b"[]", b'"acme"', b"42", b"true"])
async def test_json_that_is_not_an_object_gets_4xx_problem_json(api, raw: bytes) -> None:
    response = await api.post("/admin/tenants", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422), response.text
    assert_problem(response, response.status_code)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"slug": 123}, "slug"),
        ({"slug": None}, "slug"),
        ({"name": None}, "name"),
        ({"name": 5}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"plan": 5}, "plan"),
        ({"settings": []}, "settings"),
        ({"settings": "x"}, "settings"),
        ({"domains": "acme.example.com"}, "domains"),
        ({"domains": [1]}, "domains[0]"),
        ({"limits": {"requests_per_minute": -1}}, "limits.requests_per_minute"),
        ({"limits": {"requests_per_minute": "many"}}, "limits.requests_per_minute"),
        ({"limits": {"bogus": 1}}, "limits.bogus"),
        ({"upstream_url": 7}, "upstream_url"),
    ],
)
async def test_wrong_types_on_create_get_422_naming_the_field(api, patch: dict, field: str) -> None:
    body = {"slug": uniq("type"), "name": "Types", **patch}
    response = await api.post("/admin/tenants", json=body)
    assert_problem(response, 422, field=field)


@pytest.mark.parametrize("missing", ["slug", "name"])
async def test_missing_required_field_gets_422_naming_it(api, missing: str) -> None:
    body = {"slug": uniq("miss"), "name": "Missing"}
    del body[missing]
    response = await api.post("/admin/tenants", json=body)
    assert_problem(response, 422, field=missing)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"name": "a\u0000b"}, "name"),
        ({"plan": "fr\u0000ee"}, "plan"),
        ({"settings": {"a": "x\u0000y"}}, "settings"),
        ({"settings": {"a\u0000": 1}}, "settings"),
        ({"settings": {"a": [{"b": ["\u0000"]}]}}, "settings"),
        ({"upstream_url": "http://127.0.0.1/\u0000"}, "upstream_url"),
    ],
)
async def test_nul_characters_in_the_body_get_422_naming_the_field(api, patch: dict, field: str) -> None:
    slug = uniq("nul")
    assert_problem(await api.post("/admin/tenants", json={"slug": slug, "name": "Nul", **patch}), 422, field=field)
    assert_problem(await api.get(f"/admin/tenants/{slug}"), 404, "tenant_not_found")
    tenant = await create(api, uniq("nulp"))
    assert_problem(await api.patch(f"/admin/tenants/{tenant['id']}", json=patch), 422, field=field)


async def test_nul_characters_in_refs_and_filters_are_never_a_500(api) -> None:
    assert_problem(await api.get("/admin/tenants/ab%00cd"), 404, "tenant_not_found")
    assert_problem(await api.post("/admin/tenants/ab%00cd/suspend"), 404, "tenant_not_found")
    assert_problem(await api.get("/admin/tenants", params={"q": "a\x00b"}), 422, field="q")
    assert_problem(await api.get("/admin/tenants", params={"plan": "a\x00b"}), 422, field="plan")
    assert_problem(await api.get("/admin/tenants", params={"status": "a\x00b"}), 422, field="status")


@pytest.mark.parametrize("depth", [1000, 5000, 30000])
async def test_deeply_nested_json_gets_400_malformed_body(api, depth: int) -> None:
    body = b'{"slug": "api-deep", "name": "d", "settings": {"a": ' + b"[" * depth + b"]" * depth + b"}}"
    response = await api.post("/admin/tenants", content=body, headers={"Content-Type": "application/json"})
    assert_problem(response, 400, "malformed_body")


async def test_moderately_nested_settings_are_stored(api) -> None:
    nested: object = "leaf"
    for _ in range(100):
        nested = {"n": [nested]}
    tenant = await create(api, uniq("nested"), settings={"deep": nested})
    assert (await api.get(f"/admin/tenants/{tenant['id']}")).json()["settings"] == {"deep": nested}


# --- get and list ---------------------------------------------------------------------------------------


async def test_get_by_id_and_by_slug_returns_the_same_tenant(api) -> None:
    tenant = await create(api, uniq("get"))
    by_id = await api.get(f"/admin/tenants/{tenant['id']}")
    by_slug = await api.get(f"/admin/tenants/{tenant['slug']}")
    assert by_id.status_code == by_slug.status_code == 200
    assert by_id.json() == by_slug.json()
    assert by_id.json()["id"] == tenant["id"]
    for key in ("id", "slug", "name", "status", "plan", "domains", "database", "limits", "settings"):
        assert key in by_id.json()
    for secret_field in ("password", "api_key", "db_password_enc", "key"):
        assert secret_field not in by_id.json()


@pytest.mark.parametrize(
    "ref",
    ["api-no-such-tenant", "00000000-0000-0000-0000-000000000000", "nope", "a'; DROP TABLE tenants;--", 'x" OR 1=1'],
)
async def test_unknown_tenant_gets_404_problem_json_tenant_not_found(api, ref: str) -> None:
    assert_problem(await api.get(f"/admin/tenants/{ref}"), 404, "tenant_not_found")


async def test_a_slug_of_32_hex_characters_is_found_by_slug_not_taken_for_an_id(api) -> None:
    slug = "f" + secrets.token_hex(16)[:31]
    tenant = await create(api, slug)
    for ref in (slug, tenant["id"], tenant["id"].upper()):
        response = await api.get(f"/admin/tenants/{ref}")
        assert response.status_code == 200, (ref, response.text)
        assert response.json()["id"] == tenant["id"]
    assert (await api.post(f"/admin/tenants/{slug}/suspend")).json()["status"] == "suspended"


async def test_every_endpoint_of_an_unknown_tenant_gets_404_tenant_not_found(api) -> None:
    ref = "00000000-0000-4000-8000-000000000000"
    calls = [
        api.patch(f"/admin/tenants/{ref}", json={"name": "x"}),
        api.post(f"/admin/tenants/{ref}/suspend"),
        api.post(f"/admin/tenants/{ref}/resume"),
        api.delete(f"/admin/tenants/{ref}"),
        api.delete(f"/admin/tenants/{ref}", params={"purge": "true"}),
        api.post(f"/admin/tenants/{ref}/restore"),
        api.get(f"/admin/tenants/{ref}/usage"),
        api.get(f"/admin/tenants/{ref}/api-keys"),
        api.post(f"/admin/tenants/{ref}/api-keys", json={"name": "k"}),
        api.post(f"/admin/tenants/{ref}/domains", json={"domain": "unknown-tenant.example.com"}),
        api.delete(f"/admin/tenants/{ref}/domains/unknown-tenant.example.com"),
    ]
    for call in calls:
        assert_problem(await call, 404, "tenant_not_found")


async def test_list_answers_items_and_next_cursor(api) -> None:
    await create(api, uniq("listed"))
    response = await api.get("/admin/tenants")
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= {"items", "next_cursor"}
    assert isinstance(body["items"], list)
    assert body["items"]
    for item in body["items"]:
        assert "api_key" not in item
        assert "password" not in str(item).lower()


async def test_list_paginates_with_cursor_across_several_pages(api) -> None:
    token = f"pg{secrets.token_hex(3)}"
    slugs = [f"api-{token}-{i}" for i in range(7)]
    for slug in slugs:
        await create(api, slug)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"q": token, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        response = await api.get("/admin/tenants", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 2
        seen.extend(item["slug"] for item in page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert seen == slugs
    assert pages == 4
    one = await api.get("/admin/tenants", params={"q": token, "limit": 200})
    assert [t["slug"] for t in one.json()["items"]] == slugs
    assert one.json()["next_cursor"] is None


async def test_list_filters_by_status_plan_and_q(api) -> None:
    token = f"flt{secrets.token_hex(3)}"
    free = await create(api, f"api-{token}-free")
    pro = await create(api, f"api-{token}-pro", plan="pro")
    suspended = await create(api, f"api-{token}-susp")
    assert (await api.post(f"/admin/tenants/{suspended['id']}/suspend")).status_code == 200

    async def slugs(**params: str) -> set[str]:
        response = await api.get("/admin/tenants", params={"q": token, "limit": 200, **params})
        assert response.status_code == 200, response.text
        return {t["slug"] for t in response.json()["items"]}

    assert await slugs() == {free["slug"], pro["slug"], suspended["slug"]}
    assert await slugs(status="suspended") == {suspended["slug"]}
    assert await slugs(status="active") == {free["slug"], pro["slug"]}
    assert await slugs(plan="pro") == {pro["slug"]}
    assert await slugs(plan="free", status="active") == {free["slug"]}
    assert await slugs(status="deleted") == set()
    # q matches slugs and names, case-insensitively, and treats LIKE wildcards literally.
    response = await api.get("/admin/tenants", params={"q": f"{token.upper()}-PRO", "limit": 200})
    assert {t["slug"] for t in response.json()["items"]} == {pro["slug"]}
    for wildcard in ("%", "_", "\\"):
        response = await api.get("/admin/tenants", params={"q": f"{token}{wildcard}", "limit": 200})
        assert response.status_code == 200
        assert response.json()["items"] == []
    named = await create(api, uniq("named"))
    patch = await api.patch(f"/admin/tenants/{named['id']}", json={"name": f"Zebra {token} Holdings"})
    assert patch.status_code == 200
    response = await api.get("/admin/tenants", params={"q": f"zebra {token}", "limit": 200})
    assert {t["slug"] for t in response.json()["items"]} == {named["slug"]}


@pytest.mark.parametrize("limit", ["1", "200"])
async def test_list_limit_bounds_are_accepted(api, limit: str) -> None:
    await create(api, uniq("lim"))
    response = await api.get("/admin/tenants", params={"limit": limit})
    assert response.status_code == 200, response.text
    assert 1 <= len(response.json()["items"]) <= int(limit)


@pytest.mark.parametrize("limit", ["0", "201", "-1", "1000000", "abc", "1.5", ""])
async def test_list_limit_out_of_range_gets_422_naming_limit(api, limit: str) -> None:
    response = await api.get("/admin/tenants", params={"limit": limit})
    assert_problem(response, 422, field="limit")


async def test_list_with_unknown_status_gets_422_naming_status(api) -> None:
    assert_problem(await api.get("/admin/tenants", params={"status": "sleeping"}), 422, field="status")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "!!!!",
        _b64(b"not json"),
        _b64(b"[1, 2]"),
        _b64(b'{"a": 1}'),
        _b64(b'"ab"'),
        _b64(b'["2020-01-01T00:00:00+00:00", "not-a-uuid"]'),
        _b64(b'["yesterday", "00000000-0000-0000-0000-000000000000"]'),
        _b64(b'["2020-01-01T00:00:00+00:00", "00000000-0000-0000-0000-000000000000", 3]'),
        _b64(b"[null, null]"),
        _b64(b'["0001-01-01T00:00:00+05:00", "00000000-0000-0000-0000-000000000000"]'),
        _b64(b'["9999-12-31T23:59:59-05:00", "00000000-0000-0000-0000-000000000000"]'),
    ],
)
async def test_list_with_a_forged_cursor_gets_422_naming_cursor(api, cursor: str) -> None:
    assert_problem(await api.get("/admin/tenants", params={"cursor": cursor}), 422, field="cursor")


async def test_list_with_a_naive_timestamp_cursor_gets_422_naming_cursor(api) -> None:
    cursor = _b64(b'["2020-01-01T00:00:00", "00000000-0000-0000-0000-000000000000"]')
    assert_problem(await api.get("/admin/tenants", params={"cursor": cursor}), 422, field="cursor")


# --- changing ---------------------------------------------------------------------------------------------


async def test_patch_changes_name_plan_settings_limits_and_upstream_url(api) -> None:
    tenant = await create(api, uniq("patch"))
    response = await api.patch(
        f"/admin/tenants/{tenant['slug']}",
        json={
            "name": "Renamed Ltd",
            "plan": "pro",
            "settings": {"locale": "fr", "nested": {"a": [1, 2]}},
            "limits": {"requests_per_minute": 42},
            "upstream_url": "http://127.0.0.1:9000/base",
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == "Renamed Ltd"
    assert body["plan"] == "pro"
    assert body["settings"] == {"locale": "fr", "nested": {"a": [1, 2]}}
    assert body["limits"]["requests_per_minute"] == 42
    assert body["limits"]["requests_per_day"] == 1000000  # from the pro plan
    assert body["upstream_url"] == "http://127.0.0.1:9000/base"
    assert body["updated_at"] >= tenant["updated_at"]
    assert (await api.get(f"/admin/tenants/{tenant['id']}")).json() == body


async def test_patch_changes_only_the_fields_present(api) -> None:
    tenant = await create(api, uniq("partial"), settings={"keep": True})
    response = await api.patch(f"/admin/tenants/{tenant['id']}", json={"name": "Only Name"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == "Only Name"
    assert body["settings"] == {"keep": True}
    assert body["plan"] == tenant["plan"]
    assert body["limits"] == tenant["limits"]


async def test_patch_upstream_url_null_clears_it(api) -> None:
    tenant = await create(api, uniq("clear"), upstream_url="http://localhost:8002")
    assert tenant["upstream_url"] == "http://localhost:8002"
    response = await api.patch(f"/admin/tenants/{tenant['id']}", json={"upstream_url": None})
    assert response.status_code == 200, response.text
    assert response.json()["upstream_url"] is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1",
        "http://127.0.0.1:8002/x",
        "https://localhost:9443",
        "http://[::1]:80",
        "http://127.0.0.1:65535/a%20b/%7E",
        "http://localhost./base?x=%41",
        "http://127.0.0.1:1",
    ],
)
async def test_patch_upstream_url_on_an_allowed_host_is_accepted(api, url: str) -> None:
    tenant = await create(api, uniq("upok"))
    response = await api.patch(f"/admin/tenants/{tenant['id']}", json={"upstream_url": url})
    assert response.status_code == 200, response.text
    assert response.json()["upstream_url"] == url


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1",
        "http://10.0.0.1:8080/api",
        "http://169.254.169.254/latest/meta-data",
        "http://metadata.google.internal/",
        "http://example.com",
        "http://localhost.evil.example",
        "http://127.0.0.2",
        "http://0.0.0.0:8000",
        "http://[fe80::1]/",
    ],
)
async def test_patch_upstream_url_outside_the_allowlist_gets_422_upstream_not_allowed(api, url: str) -> None:
    tenant = await create(api, uniq("updeny"))
    response = await api.patch(f"/admin/tenants/{tenant['id']}", json={"upstream_url": url})
    assert_problem(response, 422, "upstream_not_allowed", field="upstream_url")
    assert (await api.get(f"/admin/tenants/{tenant['id']}")).json()["upstream_url"] is None


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/",
        "not a url",
        "http://",
        "http://user:pw@127.0.0.1/",
        "http://127.0.0.1:99999/",
        "",
        "http://[::1",
        # Raw spaces and control characters, anywhere: they would split the gateway's request line or a header.
        "http://127.0.0.1/a b",
        "http://127.0.0.1/a\tb",
        "http://127.0.0.1/a\r\nX-Evil: 1",
        "http://127.0.0.1/a\nb",
        "http://127.0.0.1/\x00",
        "http://127.0.0.1/\x7f",
        "http://127.0.0.1/\x1b[2J",
        "http://127.0.0.1:80\x01/",
        " http://127.0.0.1/",
        "http://127.0.0.1/ ",
        "http://127.0.0.1/?q=a b",
        "http://local host/",
        "http://127.0.0.1/caf\u00e9",
        "http://127.0.0.1/a\u2028b",
        # Percent-encoded control characters: the upstream decodes them.
        "http://127.0.0.1/a%0d%0aX-Evil:%201",
        "http://127.0.0.1/%00",
        "http://127.0.0.1/a%0A",
        "http://127.0.0.1/a%1f",
        "http://127.0.0.1/a%7F",
        "http://127.0.0.1/a?b=%0d",
        # Port 0: the gateway would fall back to port 80.
        "http://127.0.0.1:0/",
        "http://localhost:0",
        "http://[::1]:0/",
        "http://127.0.0.1:00/",
        # Loopback in the other spellings resolvers accept: no allow-list entry can judge them.
        "http://0x7f.0x1/",
        "http://127.1/",
        "http://0177.0.0.1/",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://127.0.0.01/",
        "http://localhost.0x1/",
    ],
)
async def test_patch_malformed_upstream_url_gets_422_naming_upstream_url(api, url: str) -> None:
    tenant = await create(api, uniq("upbad"))
    response = await api.patch(f"/admin/tenants/{tenant['id']}", json={"upstream_url": url})
    assert_problem(response, 422, "validation_error", field="upstream_url")
    assert (await api.get(f"/admin/tenants/{tenant['id']}")).json()["upstream_url"] is None


async def test_create_with_a_malformed_upstream_url_gets_422_naming_it(api) -> None:
    slug = uniq("upcrbad")
    response = await api.post("/admin/tenants", json={"slug": slug, "name": "X", "upstream_url": "http://127.0.0.1:0/"})
    assert_problem(response, 422, "validation_error", field="upstream_url")
    assert_problem(await api.get(f"/admin/tenants/{slug}"), 404, "tenant_not_found")


async def test_patch_with_unknown_plan_gets_422_naming_plan(api) -> None:
    tenant = await create(api, uniq("badplan"))
    response = await api.patch(f"/admin/tenants/{tenant['id']}", json={"plan": "no-such-plan"})
    assert_problem(response, 422, field="plan")
    assert (await api.get(f"/admin/tenants/{tenant['id']}")).json()["plan"] == "free"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"name": None}, "name"),
        ({"name": ""}, "name"),
        ({"settings": [1]}, "settings"),
        ({"limits": {"requests_per_day": -5}}, "limits.requests_per_day"),
        ({"limits": {"max_connections": 0}}, "limits.max_connections"),
        ({"limits": {"rpm": 5}}, "limits.rpm"),
        ({"plan": None}, "plan"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_patch_with_invalid_values_gets_422_naming_the_field(api, patch: dict, field: str) -> None:
    tenant = await create(api, uniq("pbad"))
    assert_problem(await api.patch(f"/admin/tenants/{tenant['id']}", json=patch), 422, field=field)


# --- lifecycle ----------------------------------------------------------------------------------------------


async def test_suspend_and_resume_change_status_and_suspend_is_idempotent(api) -> None:
    tenant = await create(api, uniq("susp"))
    first = await api.post(f"/admin/tenants/{tenant['id']}/suspend")
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "suspended"
    again = await api.post(f"/admin/tenants/{tenant['slug']}/suspend")
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "suspended"
    assert (await api.get(f"/admin/tenants/{tenant['id']}")).json()["status"] == "suspended"
    resumed = await api.post(f"/admin/tenants/{tenant['id']}/resume")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "active"
    assert (await api.get(f"/admin/tenants/{tenant['id']}")).json()["status"] == "active"


async def test_resume_of_an_active_tenant_gets_409_invalid_state(api) -> None:
    tenant = await create(api, uniq("resact"))
    assert_problem(await api.post(f"/admin/tenants/{tenant['id']}/resume"), 409, "invalid_state")
    assert (await api.get(f"/admin/tenants/{tenant['id']}")).json()["status"] == "active"


async def test_impossible_transitions_get_409_invalid_state(api) -> None:
    tenant = await create(api, uniq("trans"))
    assert_problem(await api.post(f"/admin/tenants/{tenant['id']}/restore"), 409, "invalid_state")
    assert (await api.delete(f"/admin/tenants/{tenant['id']}")).status_code == 200
    assert_problem(await api.post(f"/admin/tenants/{tenant['id']}/suspend"), 409, "invalid_state")
    assert_problem(await api.post(f"/admin/tenants/{tenant['id']}/resume"), 409, "invalid_state")
    assert (await api.get(f"/admin/tenants/{tenant['id']}")).json()["status"] == "deleted"


async def test_soft_delete_sets_deleted_and_purge_after_and_keeps_the_database(api, pg_url: str) -> None:
    tenant = await create(api, uniq("soft"))
    response = await api.delete(f"/admin/tenants/{tenant['id']}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "deleted"
    assert body["purge_after"]
    purge_after = datetime.fromisoformat(body["purge_after"].replace("Z", "+00:00"))
    assert purge_after > datetime.now(UTC) + timedelta(days=1)
    got = await api.get(f"/admin/tenants/{tenant['slug']}")
    assert got.status_code == 200
    assert got.json()["status"] == "deleted"
    again = await api.delete(f"/admin/tenants/{tenant['id']}")
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "deleted"
    listed = await api.get("/admin/tenants", params={"status": "deleted", "q": tenant["slug"]})
    assert [t["id"] for t in listed.json()["items"]] == [tenant["id"]]
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", tenant["database"]["name"])
        assert (
            await conn.fetchval("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", tenant["database"]["name"])
            is False
        )
    finally:
        await conn.close()


async def test_restore_brings_a_deleted_tenant_back_to_active(api, pg_url: str) -> None:
    tenant = await create(api, uniq("restore"))
    assert (await api.delete(f"/admin/tenants/{tenant['id']}")).status_code == 200
    response = await api.post(f"/admin/tenants/{tenant['id']}/restore")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "active"
    assert body.get("purge_after") is None
    assert body.get("deleted_at") is None
    assert (await api.get(f"/admin/tenants/{tenant['id']}")).json()["status"] == "active"
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", tenant["database"]["name"])
    finally:
        await conn.close()


async def test_purge_drops_database_and_role_and_forgets_the_tenant(api, pg_url: str) -> None:
    tenant = await create(api, uniq("purge"))
    name = tenant["database"]["name"]
    assert (await api.delete(f"/admin/tenants/{tenant['id']}")).status_code == 200
    response = await api.delete(f"/admin/tenants/{tenant['id']}", params={"purge": "true"})
    assert response.status_code == 200, response.text
    assert response.json()["id"] == tenant["id"]
    assert_problem(await api.get(f"/admin/tenants/{tenant['id']}"), 404, "tenant_not_found")
    assert_problem(await api.get(f"/admin/tenants/{tenant['slug']}"), 404, "tenant_not_found")
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", name) == 0
        assert await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", name) == 0
    finally:
        await conn.close()
    # Purging again: the tenant is gone.
    again = await api.delete(f"/admin/tenants/{tenant['id']}", params={"purge": "true"})
    assert_problem(again, 404, "tenant_not_found")
    # The slug is free again.
    recreated = await create(api, tenant["slug"])
    assert recreated["id"] != tenant["id"]


async def test_purge_of_an_active_tenant_drops_everything_now(api, pg_url: str) -> None:
    tenant = await create(api, uniq("purgeact"))
    response = await api.delete(f"/admin/tenants/{tenant['slug']}", params={"purge": "true"})
    assert response.status_code == 200, response.text
    assert_problem(await api.get(f"/admin/tenants/{tenant['id']}"), 404, "tenant_not_found")
    conn = await asyncpg.connect(pg_url)
    try:
        name = tenant["database"]["name"]
        assert await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", name) == 0
        assert await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", name) == 0
    finally:
        await conn.close()


async def test_purge_with_an_invalid_flag_gets_422_naming_purge(api) -> None:
    tenant = await create(api, uniq("purgeflag"))
    assert_problem(await api.delete(f"/admin/tenants/{tenant['id']}", params={"purge": "maybe"}), 422, field="purge")
    assert (await api.get(f"/admin/tenants/{tenant['id']}")).json()["status"] == "active"


# --- usage ----------------------------------------------------------------------------------------------------


async def test_usage_reports_database_size_and_counters(api) -> None:
    tenant = await create(api, uniq("usage"))
    response = await api.get(f"/admin/tenants/{tenant['id']}/usage")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tenant_id"] == tenant["id"]
    assert body["database"]["name"] == tenant["database"]["name"]
    assert body["database"]["size_bytes"] > 0
    assert body["quota_counters_available"] is True
    for window, limit in (("requests_minute", 600), ("requests_day", 50000)):
        assert body[window]["used"] == 0
        assert body[window]["limit"] == limit
        assert body[window]["resets_at"]


# --- errors in general ----------------------------------------------------------------------------------------


async def test_unknown_route_and_wrong_method_are_problem_json(api) -> None:
    assert_problem(await api.get("/admin/no-such-thing"), 404)
    response = await api.put("/admin/tenants", json={})
    assert response.status_code == 405
    assert_problem(response, 405)
