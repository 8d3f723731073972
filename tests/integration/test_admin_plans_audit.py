"""Black-box tests of plans and the audit log in the admin API (contract §3 and §7)."""

from __future__ import annotations

import secrets

import asyncpg
import pytest

from support.assertions import assert_problem, uniq
from support.assertions import create_tenant as create

ACTOR = "admin:admin"


def plan_name(stem: str) -> str:
    return f"{stem}-{secrets.token_hex(3)}"


async def audit(api, **params) -> list[dict]:
    response = await api.get("/admin/audit", params={"limit": 200, **params})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {"items", "next_cursor"}
    return body["items"]


# --- plans ----------------------------------------------------------------------------------------------------


async def test_plans_list_free_pro_and_enterprise_with_their_limits(api) -> None:
    response = await api.get("/admin/plans")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {"items", "next_cursor"}
    plans = {p["name"]: p for p in body["items"]}
    assert {"free", "pro", "enterprise"} <= set(plans)
    for plan in plans.values():
        assert isinstance(plan["limits"]["requests_per_minute"], int)
        assert isinstance(plan["limits"]["requests_per_day"], int)
    assert plans["free"]["limits"]["requests_per_minute"] == 600
    assert plans["free"]["limits"]["requests_per_day"] == 50000


async def test_put_plan_creates_then_replaces_it(api) -> None:
    name = plan_name("team")
    created = await api.put(
        f"/admin/plans/{name}", json={"limits": {"requests_per_minute": 100, "requests_per_day": 1000}}
    )
    assert created.status_code == 200, created.text
    assert created.json()["name"] == name
    assert created.json()["limits"]["requests_per_minute"] == 100
    assert created.json()["limits"]["requests_per_day"] == 1000
    replaced = await api.put(
        f"/admin/plans/{name}",
        json={"limits": {"requests_per_minute": 250, "requests_per_day": 9000, "max_connections": 7}},
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["limits"] == {"requests_per_minute": 250, "requests_per_day": 9000, "max_connections": 7}
    plans = {p["name"]: p for p in (await api.get("/admin/plans")).json()["items"]}
    assert plans[name]["limits"] == replaced.json()["limits"]


async def test_tenant_on_a_replaced_plan_shows_the_new_limits(api, pg_url: str) -> None:
    name = plan_name("grow")
    body = {"limits": {"requests_per_minute": 10, "requests_per_day": 100, "max_connections": 3}}
    assert (await api.put(f"/admin/plans/{name}", json=body)).status_code == 200
    tenant = await create(api, uniq("onplan"), plan=name)
    assert tenant["plan"] == name
    assert tenant["limits"] == {"requests_per_minute": 10, "requests_per_day": 100, "max_connections": 3}
    body = {"limits": {"requests_per_minute": 20, "requests_per_day": 200, "max_connections": 4}}
    assert (await api.put(f"/admin/plans/{name}", json=body)).status_code == 200
    got = (await api.get(f"/admin/tenants/{tenant['id']}")).json()
    assert got["limits"] == {"requests_per_minute": 20, "requests_per_day": 200, "max_connections": 4}
    usage = (await api.get(f"/admin/tenants/{tenant['id']}/usage")).json()
    assert usage["requests_minute"]["limit"] == 20
    assert usage["requests_day"]["limit"] == 200
    listed = (await api.get("/admin/tenants", params={"plan": name})).json()["items"]
    assert [t["limits"]["requests_per_minute"] for t in listed] == [20]
    conn = await asyncpg.connect(pg_url)
    try:
        limit = await conn.fetchval("SELECT rolconnlimit FROM pg_roles WHERE rolname = $1", tenant["database"]["name"])
    finally:
        await conn.close()
    assert limit == 4


async def test_tenant_limit_overrides_win_over_the_plan(api) -> None:
    name = plan_name("ovr")
    body = {"limits": {"requests_per_minute": 10, "requests_per_day": 100}}
    assert (await api.put(f"/admin/plans/{name}", json=body)).status_code == 200
    tenant = await create(api, uniq("override"), plan=name, limits={"requests_per_minute": 99})
    assert tenant["limits"]["requests_per_minute"] == 99
    assert tenant["limits"]["requests_per_day"] == 100
    body = {"limits": {"requests_per_minute": 11, "requests_per_day": 111}}
    assert (await api.put(f"/admin/plans/{name}", json=body)).status_code == 200
    got = (await api.get(f"/admin/tenants/{tenant['id']}")).json()
    assert got["limits"]["requests_per_minute"] == 99
    assert got["limits"]["requests_per_day"] == 111


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"limits": {"requests_per_minute": -1, "requests_per_day": 10}}, "limits.requests_per_minute"),
        ({"limits": {"requests_per_minute": 1, "requests_per_day": -10}}, "limits.requests_per_day"),
        (
            {"limits": {"requests_per_minute": 1, "requests_per_day": 10, "max_connections": 0}},
            "limits.max_connections",
        ),
        ({"limits": {"requests_per_minute": 1, "requests_per_day": 10, "bogus": 1}}, "limits.bogus"),
        ({"limits": {"requests_per_day": 10}}, "limits.requests_per_minute"),
        ({"limits": {"requests_per_minute": 10}}, "limits.requests_per_day"),
        ({"limits": {"requests_per_minute": "ten", "requests_per_day": 10}}, "limits.requests_per_minute"),
        ({"limits": {"requests_per_minute": 1.5, "requests_per_day": 10}}, "limits.requests_per_minute"),
        ({"limits": {"requests_per_minute": True, "requests_per_day": 10}}, "limits.requests_per_minute"),
        ({"limits": {"requests_per_minute": 10**13, "requests_per_day": 10}}, "limits.requests_per_minute"),
        ({"limits": []}, "limits"),
        ({"limits": None}, "limits"),
        ({}, "limits"),
        ({"limits": {"requests_per_minute": 1, "requests_per_day": 1}, "tenants": []}, "tenants"),
    ],
)
async def test_put_plan_with_bad_limits_gets_422_naming_the_field(api, body: dict, field: str) -> None:
    name = plan_name("bad")
    assert_problem(await api.put(f"/admin/plans/{name}", json=body), 422, field=field)
    assert name not in {p["name"] for p in (await api.get("/admin/plans")).json()["items"]}


@pytest.mark.parametrize("name", ["Upper", "x", "1plan", "has space", "a" * 40, "drop'table", "pl%C3%A4n"])
async def test_put_plan_with_an_invalid_name_gets_422(api, name: str) -> None:
    body = {"limits": {"requests_per_minute": 1, "requests_per_day": 1}}
    response = await api.put(f"/admin/plans/{name}", json=body)
    assert_problem(response, 422)


async def test_bad_plan_replacement_keeps_the_old_limits(api) -> None:
    name = plan_name("keep")
    good = {"limits": {"requests_per_minute": 5, "requests_per_day": 50}}
    assert (await api.put(f"/admin/plans/{name}", json=good)).status_code == 200
    bad = {"limits": {"requests_per_minute": -5, "requests_per_day": 50}}
    assert_problem(await api.put(f"/admin/plans/{name}", json=bad), 422)
    plans = {p["name"]: p for p in (await api.get("/admin/plans")).json()["items"]}
    assert plans[name]["limits"]["requests_per_minute"] == 5


# --- audit ----------------------------------------------------------------------------------------------------


async def test_every_admin_change_is_audited_with_actor_action_target_before_and_after(api) -> None:
    tenant = await create(api, uniq("audit"))
    tid, slug = tenant["id"], tenant["slug"]
    domain = f"audit-{secrets.token_hex(4)}.example.com"

    async def ok(response, status: int = 200) -> dict:
        got = await response
        assert got.status_code == status, got.text
        return got.json() if got.content else {}

    await ok(api.patch(f"/admin/tenants/{tid}", json={"name": "Audited Name", "plan": "pro"}))
    await ok(api.post(f"/admin/tenants/{tid}/suspend"))
    await ok(api.post(f"/admin/tenants/{tid}/resume"))
    key = await ok(api.post(f"/admin/tenants/{tid}/api-keys", json={"name": "audited"}), 201)
    rotated = await ok(api.post(f"/admin/tenants/{tid}/api-keys/{key['id']}/rotate", json={"grace_seconds": 60}), 201)
    await ok(api.delete(f"/admin/tenants/{tid}/api-keys/{rotated['id']}"), 204)
    await ok(api.post(f"/admin/tenants/{tid}/domains", json={"domain": domain}), 201)
    await ok(api.delete(f"/admin/tenants/{tid}/domains/{domain}"), 204)
    await ok(api.delete(f"/admin/tenants/{tid}"))
    await ok(api.post(f"/admin/tenants/{tid}/restore"))

    entries = await audit(api, tenant=tid)
    assert entries == sorted(entries, key=lambda e: e["id"], reverse=True)  # newest first
    by_action: dict[str, list[dict]] = {}
    for entry in entries:
        assert entry["tenant_id"] == tid
        assert entry["at"]
        by_action.setdefault(entry["action"], []).append(entry)
    expected = {
        "tenant.create": slug,
        "tenant.update": slug,
        "tenant.suspend": slug,
        "tenant.resume": slug,
        "api_key.create": key["id"],
        "api_key.rotate": key["id"],
        "api_key.revoke": rotated["id"],
        "domain.add": domain,
        "domain.remove": domain,
        "tenant.delete": slug,
        "tenant.restore": slug,
    }
    for action, target in expected.items():
        assert action in by_action, f"{action} not audited: {sorted(by_action)}"
        entry = by_action[action][0]
        assert entry["actor"] == ACTOR, entry
        assert entry["target"] == target, entry
    update = by_action["tenant.update"][0]
    assert update["before"]["name"] == tenant["name"]
    assert update["before"]["plan"] == "free"
    assert update["after"]["name"] == "Audited Name"
    assert update["after"]["plan"] == "pro"
    assert by_action["tenant.create"][0]["before"] is None
    assert by_action["tenant.create"][0]["after"]["slug"] == slug
    assert by_action["tenant.suspend"][0]["before"]["status"] == "active"
    assert by_action["tenant.suspend"][0]["after"]["status"] == "suspended"
    assert by_action["tenant.resume"][0]["after"]["status"] == "active"
    assert by_action["tenant.delete"][0]["after"]["status"] == "deleted"
    assert by_action["tenant.restore"][0]["before"]["status"] == "deleted"
    assert by_action["tenant.restore"][0]["after"]["status"] == "active"
    assert by_action["api_key.revoke"][0]["after"]["status"] == "revoked"
    assert by_action["api_key.rotate"][0]["after"]["new_key_id"] == rotated["id"]
    assert by_action["domain.add"][0]["after"] == {"domain": domain}
    assert by_action["domain.remove"][0]["before"] == {"domain": domain}
    # By slug too.
    assert [e["id"] for e in await audit(api, tenant=slug)] == [e["id"] for e in entries]


async def test_failed_changes_are_not_audited(api) -> None:
    tenant = await create(api, uniq("noaudit"))
    before = await audit(api, tenant=tenant["id"])
    assert_problem(await api.patch(f"/admin/tenants/{tenant['id']}", json={"plan": "nope-plan"}), 422)
    assert_problem(await api.post(f"/admin/tenants/{tenant['id']}/resume"), 409)
    after = await audit(api, tenant=tenant["id"])
    assert [e["id"] for e in after] == [e["id"] for e in before]


async def test_plan_changes_are_audited(api) -> None:
    name = plan_name("aud")
    first = {"limits": {"requests_per_minute": 1, "requests_per_day": 2}}
    second = {"limits": {"requests_per_minute": 3, "requests_per_day": 4}}
    assert (await api.put(f"/admin/plans/{name}", json=first)).status_code == 200
    assert (await api.put(f"/admin/plans/{name}", json=second)).status_code == 200
    entries = [e for e in await audit(api) if e["action"] == "plan.put" and e["target"] == name]
    assert len(entries) == 2
    newest, oldest = entries
    assert oldest["actor"] == newest["actor"] == ACTOR
    assert oldest["before"] is None
    assert oldest["after"]["limits"]["requests_per_minute"] == 1
    assert newest["before"]["limits"]["requests_per_minute"] == 1
    assert newest["after"]["limits"]["requests_per_minute"] == 3


async def test_purge_is_audited_and_the_entries_outlive_the_tenant(api) -> None:
    tenant = await create(api, uniq("audpurge"))
    assert (await api.delete(f"/admin/tenants/{tenant['id']}", params={"purge": "true"})).status_code == 200
    entries = [e for e in await audit(api) if e["tenant_id"] == tenant["id"]]
    actions = [e["action"] for e in entries]
    assert "tenant.purged" in actions
    assert "tenant.create" in actions
    purged = next(e for e in entries if e["action"] == "tenant.purged")
    assert purged["actor"] == ACTOR
    assert purged["target"] == tenant["slug"]
    # The tenant is gone, but its id still filters its entries; its slug names nothing any more.
    by_id = await audit(api, tenant=tenant["id"])
    assert [e["id"] for e in by_id] == [e["id"] for e in entries]
    assert_problem(await api.get("/admin/audit", params={"tenant": tenant["slug"]}), 404, "tenant_not_found")


async def test_audit_tenant_filter_returns_only_that_tenants_entries(api) -> None:
    a = await create(api, uniq("filta"))
    b = await create(api, uniq("filtb"))
    assert (await api.patch(f"/admin/tenants/{b['id']}", json={"name": "B changed"})).status_code == 200
    only_a = await audit(api, tenant=a["id"])
    assert only_a
    assert {e["tenant_id"] for e in only_a} == {a["id"]}
    assert "tenant.update" not in {e["action"] for e in only_a}
    only_b = await audit(api, tenant=b["slug"])
    assert {e["tenant_id"] for e in only_b} == {b["id"]}
    assert "tenant.update" in {e["action"] for e in only_b}


async def test_audit_limit_and_cursor_paginate_without_gaps(api) -> None:
    tenant = await create(api, uniq("audpage"))
    for i in range(5):
        response = await api.patch(f"/admin/tenants/{tenant['id']}", json={"name": f"Name {i}"})
        assert response.status_code == 200
    everything = await audit(api, tenant=tenant["id"])
    assert len(everything) >= 6
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"tenant": tenant["id"], "limit": 2}
        if cursor:
            params["cursor"] = cursor
        response = await api.get("/admin/audit", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 2
        seen.extend(e["id"] for e in page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 20
    assert seen == [e["id"] for e in everything]
    first = await api.get("/admin/audit", params={"limit": 1})
    assert len(first.json()["items"]) == 1
    assert first.json()["next_cursor"] is not None


@pytest.mark.parametrize("limit", ["0", "201", "-3", "abc"])
async def test_audit_limit_out_of_range_gets_422_naming_limit(api, limit: str) -> None:
    assert_problem(await api.get("/admin/audit", params={"limit": limit}), 422, field="limit")


@pytest.mark.parametrize("cursor", ["abc", "-1", "1.5", "9" * 40, "9" * 19, "9" * 25, "\u00b2", "\u0661\u0662"])
async def test_audit_invalid_cursor_gets_4xx(api, cursor: str) -> None:
    response = await api.get("/admin/audit", params={"cursor": cursor})
    assert_problem(response, 422, field="cursor")


@pytest.mark.parametrize("ref", ["pla-never-existed", "00000000-0000-4000-8000-000000000000", "a\x00b"])
async def test_audit_of_an_unknown_tenant_gets_404(api, ref: str) -> None:
    assert_problem(await api.get("/admin/audit", params={"tenant": ref}), 404, "tenant_not_found")


# --- request ids ----------------------------------------------------------------------------------------------


async def test_a_safe_client_request_id_is_echoed_and_recorded_in_the_audit_entry(api) -> None:
    request_id = "trace-" + secrets.token_hex(8) + ":span_1.2"
    tenant = await create(api, uniq("rid"))
    response = await api.post(f"/admin/tenants/{tenant['id']}/suspend", headers={"X-Request-ID": request_id})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == request_id
    (entry,) = [e for e in await audit(api, tenant=tenant["id"]) if e["action"] == "tenant.suspend"]
    assert entry["request_id"] == request_id


@pytest.mark.parametrize(
    "unsafe",
    [
        "a b",
        "x" * 129,
        "line\nbreak",
        "esc\x1b[31mred",
        "tab\tid",
        "nul\x00id",
        "del\x7fid",
        'quote"id',
        "semi;colon",
        "pct%0d%0a",
        "<script>",
        "caf\u00e9",
        "",
    ],
    ids=repr,
)
async def test_an_unsafe_client_request_id_is_replaced_by_a_fresh_one_everywhere(api, unsafe: str) -> None:
    tenant = await create(api, uniq("ridbad"))
    response = await api.post(
        f"/admin/tenants/{tenant['id']}/suspend", headers=[("X-Request-ID", unsafe.encode("latin-1"))]
    )
    assert response.status_code == 200, response.text  # replaced, never refused
    echoed = response.headers["x-request-id"]
    assert echoed != unsafe
    assert len(echoed) == 32
    assert all(c in "0123456789abcdef" for c in echoed)
    (entry,) = [e for e in await audit(api, tenant=tenant["id"]) if e["action"] == "tenant.suspend"]
    assert entry["request_id"] == echoed
