"""The tenant directory that gateways sync from: changes by revision, removals, and never a secret."""

from __future__ import annotations

from support.platform import Installation
from support.platform import directory_page as _directory


async def test_directory_needs_a_service_token(api) -> None:
    assert (await api.get("/internal/v1/directory/")).status_code == 401


async def test_incremental_sync_sees_changes_and_purges(api, installation: Installation) -> None:
    created = (await api.post("/admin/tenants", json={"slug": "dir-alpha", "name": "A"})).json()
    full = await _directory(api, installation)
    assert full["full"] is True
    entry = next(t for t in full["tenants"] if t["id"] == created["id"])
    assert entry["slug"] == "dir-alpha"
    assert entry["status"] == "active"
    assert entry["limits"]["requests_per_minute"] == 600
    assert [k["id"] for k in entry["keys"]] == [created["api_key"]["id"]]
    assert len(entry["keys"][0]["hash"]) == 64
    body = str(full)
    assert created["api_key"]["key"] not in body
    assert "password" not in body

    since = full["revision"]
    assert (await _directory(api, installation, since))["tenants"] == []
    await api.post(f"/admin/tenants/{created['id']}/suspend")
    changed = await _directory(api, installation, since)
    assert [t["status"] for t in changed["tenants"]] == ["suspended"]
    assert changed["revision"] > since

    since = changed["revision"]
    await api.delete(f"/admin/tenants/{created['id']}", params={"purge": "true"})
    removed = await _directory(api, installation, since)
    assert created["id"] in removed["removed"]
    assert all(t["id"] != created["id"] for t in removed["tenants"])


async def test_one_tenant_entry_for_event_driven_refresh(api, installation: Installation) -> None:
    created = (
        await api.post("/admin/tenants", json={"slug": "dir-bravo", "name": "B", "domains": ["b.example.org"]})
    ).json()
    response = await api.get(
        f"/internal/v1/directory/tenants/{created['id']}",
        headers={"Authorization": f"Bearer {installation.gateway_token}"},
    )
    page = response.json()
    assert [t["domains"] for t in page["tenants"]] == [["b.example.org"]]
