"""Black-box tests of tenant API keys and custom domains in the admin API (contract §3 and §7)."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from support.assertions import API_KEY, KEYLIKE, assert_problem, uniq
from support.assertions import create_tenant as create


def domain_of(stem: str) -> str:
    return f"{stem}-{secrets.token_hex(4)}.example.com"


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def list_keys(api, ref: str) -> list[dict]:
    response = await api.get(f"/admin/tenants/{ref}/api-keys")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {"items", "next_cursor"}
    return body["items"]


# --- API keys ---------------------------------------------------------------------------------------------


async def test_create_api_key_returns_201_and_the_secret_only_there(api) -> None:
    tenant = await create(api, uniq("create"))
    expires = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    response = await api.post(
        f"/admin/tenants/{tenant['id']}/api-keys",
        json={"name": "ci", "scopes": ["notes:read", "notes:write"], "expires_at": expires},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert API_KEY.fullmatch(body["key"]), body
    assert body["id"]
    assert body["name"] == "ci"
    assert body["scopes"] == ["notes:read", "notes:write"]
    assert body["key"].startswith(body["prefix"])
    assert len(body["prefix"]) == 11
    assert parse_time(body["expires_at"]) == parse_time(expires)
    listed = await list_keys(api, tenant["slug"])
    mine = [k for k in listed if k["id"] == body["id"]]
    assert len(mine) == 1
    assert "key" not in mine[0]
    assert mine[0]["prefix"] == body["prefix"]
    assert mine[0]["status"] == "active"
    assert body["key"] not in (await api.get(f"/admin/tenants/{tenant['id']}/api-keys")).text


async def test_create_api_key_with_only_a_name(api) -> None:
    tenant = await create(api, uniq("minimal"))
    response = await api.post(f"/admin/tenants/{tenant['slug']}/api-keys", json={"name": "bare"})
    assert response.status_code == 201, response.text
    assert response.json()["scopes"] == []
    assert response.json()["expires_at"] is None


async def test_list_api_keys_never_contains_a_secret(api) -> None:
    tenant = await create(api, uniq("list"))
    secrets_seen = [tenant["api_key"]["key"]]
    for name in ("one", "two", "three"):
        response = await api.post(f"/admin/tenants/{tenant['id']}/api-keys", json={"name": name})
        assert response.status_code == 201
        secrets_seen.append(response.json()["key"])
    rotated = await api.post(f"/admin/tenants/{tenant['id']}/api-keys/{tenant['api_key']['id']}/rotate", json={})
    assert rotated.status_code == 201
    secrets_seen.append(rotated.json()["key"])
    response = await api.get(f"/admin/tenants/{tenant['id']}/api-keys")
    assert response.status_code == 200
    text = response.text
    assert not KEYLIKE.search(text), text
    for secret in secrets_seen:
        assert secret not in text
        assert secret[3:] not in text
    items = response.json()["items"]
    assert len(items) == 5
    for item in items:
        assert "key" not in item
        assert len(item["prefix"]) == 11
        assert item["prefix"].startswith("tk_")


async def test_api_keys_page_newest_first_with_a_cursor(api) -> None:
    tenant = await create(api, uniq("pages"))
    made = [tenant["api_key"]["id"]]
    for n in range(6):
        response = await api.post(f"/admin/tenants/{tenant['id']}/api-keys", json={"name": f"k{n}"})
        assert response.status_code == 201
        made.append(response.json()["id"])
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        response = await api.get(f"/admin/tenants/{tenant['id']}/api-keys", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["items"]) <= 3
        seen += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(made))  # newest first, each key once
    everything = (await api.get(f"/admin/tenants/{tenant['id']}/api-keys")).json()
    assert [item["id"] for item in everything["items"]] == seen
    assert everything["next_cursor"] is None


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 201}, {"limit": "x"}, {"cursor": "not-a-cursor"}, {"cursor": "W10="}, {"curser": "x"}],
)
async def test_api_keys_list_refuses_bad_paging_parameters_with_422(api, params: dict) -> None:
    tenant = await create(api, uniq("badpage"))
    response = await api.get(f"/admin/tenants/{tenant['id']}/api-keys", params=params)
    assert response.status_code == 422, response.text
    assert response.json()["code"]


async def test_revoke_api_key_returns_204_and_lists_it_as_revoked(api) -> None:
    tenant = await create(api, uniq("revoke"))
    key = (await api.post(f"/admin/tenants/{tenant['id']}/api-keys", json={"name": "temp"})).json()
    response = await api.delete(f"/admin/tenants/{tenant['id']}/api-keys/{key['id']}")
    assert response.status_code == 204, response.text
    assert response.content == b""
    listed = {k["id"]: k for k in await list_keys(api, tenant["id"])}
    assert listed[key["id"]]["status"] == "revoked"
    assert listed[key["id"]]["revoked_at"]
    assert listed[tenant["api_key"]["id"]]["status"] == "active"
    again = await api.delete(f"/admin/tenants/{tenant['slug']}/api-keys/{key['id']}")
    assert again.status_code == 204, again.text


async def test_rotate_api_key_returns_a_new_key_and_the_old_one_expires_after_the_grace(api) -> None:
    tenant = await create(api, uniq("rotate"))
    old = tenant["api_key"]
    before = datetime.now(UTC)
    response = await api.post(f"/admin/tenants/{tenant['id']}/api-keys/{old['id']}/rotate", json={"grace_seconds": 60})
    assert response.status_code == 201, response.text
    new = response.json()
    assert API_KEY.fullmatch(new["key"])
    assert new["key"] != old["key"]
    assert new["id"] != old["id"]
    listed = {k["id"]: k for k in await list_keys(api, tenant["id"])}
    old_listed = listed[old["id"]]
    assert old_listed["status"] == "active"  # still working during the grace period
    expires = parse_time(old_listed["expires_at"])
    assert before + timedelta(seconds=55) <= expires <= datetime.now(UTC) + timedelta(seconds=65)
    assert old_listed["rotated_to"] == new["id"]
    assert listed[new["id"]]["status"] == "active"
    assert listed[new["id"]]["expires_at"] is None


async def test_rotate_without_a_body_uses_the_default_grace_of_a_day(api) -> None:
    tenant = await create(api, uniq("rotdef"))
    old = tenant["api_key"]
    for body in ({}, None):
        kwargs = {"json": body} if body is not None else {}
        key_id = old["id"]
        response = await api.post(f"/admin/tenants/{tenant['id']}/api-keys/{key_id}/rotate", **kwargs)
        assert response.status_code == 201, response.text
        listed = {k["id"]: k for k in await list_keys(api, tenant["id"])}
        expires = parse_time(listed[key_id]["expires_at"])
        assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(seconds=86400)
        old = {"id": response.json()["id"]}


async def test_rotate_with_zero_grace_expires_the_old_key_now(api) -> None:
    tenant = await create(api, uniq("rotzero"))
    old = tenant["api_key"]
    response = await api.post(f"/admin/tenants/{tenant['id']}/api-keys/{old['id']}/rotate", json={"grace_seconds": 0})
    assert response.status_code == 201, response.text
    listed = {k["id"]: k for k in await list_keys(api, tenant["id"])}
    assert listed[old["id"]]["status"] == "expired"
    # An expired key cannot be rotated again.
    again = await api.post(f"/admin/tenants/{tenant['id']}/api-keys/{old['id']}/rotate", json={})
    assert_problem(again, 409)


async def test_rotate_a_revoked_key_gets_409(api) -> None:
    tenant = await create(api, uniq("rotrev"))
    key = (await api.post(f"/admin/tenants/{tenant['id']}/api-keys", json={"name": "gone"})).json()
    assert (await api.delete(f"/admin/tenants/{tenant['id']}/api-keys/{key['id']}")).status_code == 204
    response = await api.post(f"/admin/tenants/{tenant['id']}/api-keys/{key['id']}/rotate", json={"grace_seconds": 60})
    assert_problem(response, 409)
    assert len(await list_keys(api, tenant["id"])) == 2


@pytest.mark.parametrize(
    "key_id",
    ["6f1c2a8e-3b7d-4c1e-9a5f-2d8b7e4c1a90", "not-a-uuid", "00000000-0000-0000-0000-000000000000", "1", "a%00b"],
)
async def test_unknown_key_id_gets_404(api, key_id: str) -> None:
    tenant = await create(api, uniq("nokey"))
    assert_problem(await api.delete(f"/admin/tenants/{tenant['id']}/api-keys/{key_id}"), 404, "api_key_not_found")
    response = await api.post(f"/admin/tenants/{tenant['id']}/api-keys/{key_id}/rotate", json={})
    assert_problem(response, 404, "api_key_not_found")


async def test_another_tenants_key_is_unknown_here(api) -> None:
    a = await create(api, uniq("owner"))
    b = await create(api, uniq("other"))
    key_id = a["api_key"]["id"]
    assert_problem(await api.delete(f"/admin/tenants/{b['id']}/api-keys/{key_id}"), 404, "api_key_not_found")
    response = await api.post(f"/admin/tenants/{b['id']}/api-keys/{key_id}/rotate", json={})
    assert_problem(response, 404, "api_key_not_found")
    listed = {k["id"]: k for k in await list_keys(api, a["id"])}
    assert listed[key_id]["status"] == "active"
    assert key_id not in {k["id"] for k in await list_keys(api, b["id"])}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": 5}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "k", "scopes": "all"}, "scopes"),
        ({"name": "k", "scopes": ["has space"]}, "scopes[0]"),
        ({"name": "k", "expires_at": "yesterday"}, "expires_at"),
        ({"name": "k", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "k", "expires_at": "2099-01-01T00:00:00"}, "expires_at"),
        ({"name": "k", "expires_at": "9999-12-31T23:59:59-12:00"}, "expires_at"),
        ({"name": "a\u0000b"}, "name"),
        ({"name": "k", "key": "tk_chosen_by_client"}, "key"),
        ({"name": "k", "tenant_id": str(uuid.uuid4())}, "tenant_id"),
        ({"name": "k", "id": str(uuid.uuid4())}, "id"),
    ],
)
async def test_create_api_key_with_invalid_body_gets_422_naming_the_field(api, body: dict, field: str) -> None:
    tenant = await create(api, uniq("badkey"))
    response = await api.post(f"/admin/tenants/{tenant['id']}/api-keys", json=body)
    assert_problem(response, 422, field=field)
    assert len(await list_keys(api, tenant["id"])) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"grace_seconds": -1}, "grace_seconds"),
        ({"grace_seconds": "soon"}, "grace_seconds"),
        ({"grace_seconds": 10**9}, "grace_seconds"),
        ({"grace": 5}, "grace"),
    ],
)
async def test_rotate_with_invalid_body_gets_422_naming_the_field(api, body: dict, field: str) -> None:
    tenant = await create(api, uniq("badrot"))
    response = await api.post(f"/admin/tenants/{tenant['id']}/api-keys/{tenant['api_key']['id']}/rotate", json=body)
    assert_problem(response, 422, field=field)
    assert len(await list_keys(api, tenant["id"])) == 1


async def test_api_keys_of_a_deleted_tenant_cannot_be_created_or_rotated(api) -> None:
    tenant = await create(api, uniq("delkeys"))
    assert (await api.delete(f"/admin/tenants/{tenant['id']}")).status_code == 200
    assert_problem(await api.post(f"/admin/tenants/{tenant['id']}/api-keys", json={"name": "x"}), 409, "invalid_state")
    response = await api.post(f"/admin/tenants/{tenant['id']}/api-keys/{tenant['api_key']['id']}/rotate", json={})
    assert_problem(response, 409, "invalid_state")


# --- domains --------------------------------------------------------------------------------------------------


async def test_add_domain_normalises_case_and_trailing_dot(api) -> None:
    tenant = await create(api, uniq("dom"))
    domain = domain_of("acme")
    response = await api.post(f"/admin/tenants/{tenant['id']}/domains", json={"domain": domain.upper() + "."})
    assert response.status_code == 201, response.text
    assert response.json()["domains"] == [domain]
    assert (await api.get(f"/admin/tenants/{tenant['id']}")).json()["domains"] == [domain]


async def test_create_with_domains_normalises_them(api) -> None:
    domain = domain_of("create")
    tenant = await create(api, uniq("domcr"), domains=[domain.upper() + ".", domain])
    assert tenant["domains"] == [domain]


async def test_adding_the_same_domain_twice_to_one_tenant_is_harmless(api) -> None:
    tenant = await create(api, uniq("domtwice"))
    domain = domain_of("twice")
    assert (await api.post(f"/admin/tenants/{tenant['id']}/domains", json={"domain": domain})).status_code == 201
    again = await api.post(f"/admin/tenants/{tenant['id']}/domains", json={"domain": domain})
    assert again.status_code == 201, again.text
    assert again.json()["domains"] == [domain]


async def test_domain_of_another_tenant_gets_409_domain_taken(api) -> None:
    a = await create(api, uniq("doma"))
    b = await create(api, uniq("domb"))
    domain = domain_of("taken")
    assert (await api.post(f"/admin/tenants/{a['id']}/domains", json={"domain": domain})).status_code == 201
    response = await api.post(f"/admin/tenants/{b['id']}/domains", json={"domain": domain.upper()})
    assert_problem(response, 409, "domain_taken")
    create_response = await api.post(
        "/admin/tenants", json={"slug": uniq("domc"), "name": "C", "domains": [domain + "."]}
    )
    assert_problem(create_response, 409, "domain_taken")
    assert (await api.get(f"/admin/tenants/{b['id']}")).json()["domains"] == []
    assert (await api.get(f"/admin/tenants/{a['id']}")).json()["domains"] == [domain]


async def test_remove_domain_returns_204_and_frees_it(api) -> None:
    a = await create(api, uniq("domrm"))
    b = await create(api, uniq("domrm2"))
    domain = domain_of("remove")
    assert (await api.post(f"/admin/tenants/{a['id']}/domains", json={"domain": domain})).status_code == 201
    response = await api.delete(f"/admin/tenants/{a['id']}/domains/{domain.upper()}.")
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert (await api.get(f"/admin/tenants/{a['id']}")).json()["domains"] == []
    taken = await api.post(f"/admin/tenants/{b['id']}/domains", json={"domain": domain})
    assert taken.status_code == 201, taken.text


async def test_remove_unknown_domain_gets_404(api) -> None:
    a = await create(api, uniq("domunk"))
    b = await create(api, uniq("domunk2"))
    assert_problem(await api.delete(f"/admin/tenants/{a['id']}/domains/{domain_of('never')}"), 404)
    assert_problem(await api.delete(f"/admin/tenants/{a['id']}/domains/a%00b.example.com"), 404)
    # Another tenant's domain is not this tenant's to remove.
    domain = domain_of("theirs")
    assert (await api.post(f"/admin/tenants/{b['id']}/domains", json={"domain": domain})).status_code == 201
    assert_problem(await api.delete(f"/admin/tenants/{a['id']}/domains/{domain}"), 404)
    assert (await api.get(f"/admin/tenants/{b['id']}")).json()["domains"] == [domain]


@pytest.mark.parametrize(
    "domain",
    [
        "nodot",
        "-bad.example.com",
        "bad-.example.com",
        "bad..example.com",
        ".example.com",
        "under_score.example.com",
        "sp ace.example.com",
        "bücher.example.com",
        "127.0.0.1",
        "10.0.0.1",
        # IPv4 addresses in the spellings resolvers also accept (inet_aton, WHATWG URL): never a domain.
        "127.1",
        "0x7f.0x1",
        "0x7f.0x0.0x0.0x1",
        "0177.0.0.1",
        "2130706433",
        "0x7f000001",
        "1.2.3.0x4",
        "example.0x10",
        "example.017",
        "example.0x",
        "[::1]",
        "a" * 64 + ".example.com",
        ("a" * 60 + ".") * 5 + "com",
        "example.com/path",
        "user@example.com",
        "example.com:8080",
        "*.example.com",
        "",
        "   ",
        "'; DROP TABLE tenant_domains;--.com",
        "a\u0000b.example.com",
    ],
)
async def test_invalid_domain_gets_422_naming_domain(api, domain: str) -> None:
    tenant = await create(api, uniq("dombad"))
    response = await api.post(f"/admin/tenants/{tenant['id']}/domains", json={"domain": domain})
    assert_problem(response, 422, field="domain")
    assert (await api.get(f"/admin/tenants/{tenant['id']}")).json()["domains"] == []


@pytest.mark.parametrize("domain", ["x.localhost", "localhost", "X.LOCALHOST.", "deep.sub.localhost"])
async def test_domain_under_the_base_domain_gets_422(api, domain: str) -> None:
    tenant = await create(api, uniq("dombase"))
    response = await api.post(f"/admin/tenants/{tenant['id']}/domains", json={"domain": domain})
    assert_problem(response, 422, field="domain")


@pytest.mark.parametrize(
    ("body", "field"), [({}, "domain"), ({"domain": 5}, "domain"), ({"domain": "a.com", "x": 1}, "x")]
)
async def test_domain_body_with_wrong_shape_gets_422(api, body: dict, field: str) -> None:
    tenant = await create(api, uniq("domshape"))
    assert_problem(await api.post(f"/admin/tenants/{tenant['id']}/domains", json=body), 422, field=field)


async def test_create_with_an_invalid_domain_gets_422_naming_it(api) -> None:
    slug = uniq("domcrbad")
    response = await api.post(
        "/admin/tenants", json={"slug": slug, "name": "X", "domains": [domain_of("fine"), "x.localhost"]}
    )
    assert_problem(response, 422, field="domains[1]")
    assert_problem(await api.get(f"/admin/tenants/{slug}"), 404, "tenant_not_found")
