"""Provisioning under concurrency, against real Postgres.

Concurrent creates each get exactly one database and one role; a slug is taken exactly once; background
provisioning racing reconciler passes still builds everything once; a purge wins over open connections.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest

from support.platform import Installation, TenantServiceProcess, cluster_objects, in_process, wait_for, with_database
from tenant_service import failpoints
from tenant_service.context import AppContext
from tenant_service.provisioning.names import parse_marker
from tenant_service.provisioning.reconciler import Reconciler

# --- helpers ----------------------------------------------------------------------------------------


async def registry_rows(inst: Installation) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(inst.database_url)
    try:
        return list(await conn.fetch("SELECT id, slug, status, db_name, db_role FROM tenants ORDER BY slug"))
    finally:
        await conn.close()


async def installation_id(inst: Installation) -> Any:
    conn = await asyncpg.connect(inst.database_url)
    try:
        return await conn.fetchval("SELECT installation_id FROM installation")
    finally:
        await conn.close()


def tenant_name_prefix(inst: Installation, slug: str) -> str:
    """What every database/role name of a tenant with ``slug`` starts with (before the id suffix)."""
    return f"{inst.prefix}{slug.replace('-', '_')}_"


async def vend(client: Any, inst: Installation, tenant_id: str) -> dict[str, Any]:
    response = await client.get(
        f"/internal/v1/tenants/{tenant_id}/database", headers={"Authorization": f"Bearer {inst.service_token}"}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def tenant_dsn(creds: dict[str, Any]) -> str:
    return f"postgresql://{creds['user']}:{creds['password']}@{creds['host']}:{creds['port']}/{creds['database']}"


async def max_in_flight(inst: Installation, slug_prefix: str, stop: asyncio.Event) -> int:
    """The most tenants with ``slug_prefix`` seen in ``provisioning`` at once, until ``stop``."""
    conn = await asyncpg.connect(inst.database_url)
    seen = 0
    try:
        while not stop.is_set():
            n = await conn.fetchval(
                "SELECT count(*) FROM tenants WHERE status = 'provisioning' AND starts_with(slug, $1)", slug_prefix
            )
            seen = max(seen, n)
            await asyncio.sleep(0.02)
    finally:
        await conn.close()
    return seen


# --- 1. many concurrent creates ---------------------------------------------------------------------


async def test_ten_concurrent_creates_all_end_active(installation: Installation, pg_url: str) -> None:
    slugs = [f"cc-many-{i:02d}" for i in range(10)]
    stop = asyncio.Event()
    # Each create pauses after registering, so all ten are provably in flight together.
    failpoints.configure("provision.after_insert=sleep:0.5")
    try:
        async with in_process(installation) as (client, _):
            watcher = asyncio.create_task(max_in_flight(installation, "cc-many-", stop))
            responses = await asyncio.gather(
                *(client.post("/admin/tenants", json={"slug": s, "name": s.title()}) for s in slugs)
            )
            stop.set()
            overlap = await watcher
            assert [r.status_code for r in responses] == [201] * 10, [r.text for r in responses]
            bodies = [r.json() for r in responses]
            listed = await client.get("/admin/tenants", params={"q": "cc-many-", "limit": 50})
            creds = [await vend(client, installation, b["id"]) for b in bodies]
    finally:
        failpoints.configure("")
        stop.set()
    assert overlap >= 5, f"the creates did not overlap (at most {overlap} in flight)"
    assert {b["status"] for b in bodies} == {"active"}
    assert sorted(b["slug"] for b in bodies) == slugs
    names = {b["database"]["name"] for b in bodies}
    assert len(names) == 10
    assert {t["slug"]: t["status"] for t in listed.json()["items"]} == dict.fromkeys(slugs, "active")

    installation_uuid = await installation_id(installation)
    dbs, roles = await cluster_objects(pg_url, installation.prefix)
    for body in bodies:
        name = body["database"]["name"]
        assert name.startswith(tenant_name_prefix(installation, body["slug"]))
        # Exactly one database and one role for each slug, marked for that tenant.
        assert [d for d in dbs if d.startswith(tenant_name_prefix(installation, body["slug"]))] == [name]
        assert [r for r in roles if r.startswith(tenant_name_prefix(installation, body["slug"]))] == [name]
        assert str(parse_marker(dbs[name], installation_uuid)) == body["id"]
        assert str(parse_marker(roles[name], installation_uuid)) == body["id"]
    # Every database is really usable, by its own role.
    for body, cred in zip(bodies, creds, strict=True):
        conn = await asyncpg.connect(tenant_dsn(cred))
        try:
            assert await conn.fetchval("SELECT current_database()") == body["database"]["name"]
        finally:
            await conn.close()


async def test_ten_concurrent_creates_over_http(
    service: TenantServiceProcess, installation: Installation, pg_url: str
) -> None:
    """The same through a real service process (uvicorn, its own pools): ten tenants, ten databases, ten roles."""
    async with httpx.AsyncClient(
        base_url=service.url, headers={"Authorization": f"Bearer {installation.admin_token}"}, timeout=60
    ) as client:
        slugs = [f"cc-http-{i:02d}" for i in range(10)]
        responses = await asyncio.gather(*(client.post("/admin/tenants", json={"slug": s, "name": s}) for s in slugs))
    assert [r.status_code for r in responses] == [201] * 10, [r.text for r in responses]
    assert {r.json()["status"] for r in responses} == {"active"}
    rows = [r for r in await registry_rows(installation) if r["slug"].startswith("cc-http-")]
    dbs, roles = await cluster_objects(pg_url, installation.prefix + "cc_http_")
    assert len(rows) == 10
    assert {r["status"] for r in rows} == {"active"}
    assert set(dbs) == {r["db_name"] for r in rows} == {r.json()["database"]["name"] for r in responses}
    assert set(roles) == {r["db_role"] for r in rows}
    assert len(dbs) == len(roles) == 10


# --- 2. the same slug at once -----------------------------------------------------------------------


@pytest.mark.parametrize("racers", [2, 5])
async def test_concurrent_creates_of_one_slug(installation: Installation, pg_url: str, racers: int) -> None:
    slug = f"cc-dup-{racers}"
    async with in_process(installation) as (client, _):
        responses = await asyncio.gather(
            *(client.post("/admin/tenants", json={"slug": slug, "name": f"Racer {i}"}) for i in range(racers))
        )
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] + [409] * (racers - 1), [r.text for r in responses]
    winner = next(r.json() for r in responses if r.status_code == 201)
    assert winner["status"] == "active"
    for loser in (r for r in responses if r.status_code == 409):
        assert loser.headers["content-type"].startswith("application/problem+json")
        assert loser.json()["code"] == "tenant_exists"
        assert "api_key" not in loser.json()

    conn = await asyncpg.connect(with_database(pg_url, installation.master_db))
    try:
        rows = await conn.fetch("SELECT id, db_name, db_role FROM tenants WHERE slug = $1", slug)
    finally:
        await conn.close()
    assert [str(r["id"]) for r in rows] == [winner["id"]]
    dbs, roles = await cluster_objects(pg_url, tenant_name_prefix(installation, slug))
    assert list(dbs) == [winner["database"]["name"]] == [rows[0]["db_name"]]
    assert list(roles) == [winner["database"]["name"]] == [rows[0]["db_role"]]


# --- background provisioning racing the reconciler ---------------------------------------------------


async def test_async_creates_racing_reconciler_passes_build_everything_once(
    fresh_installation: Installation, pg_url: str
) -> None:
    """Background provisioning (``Prefer: respond-async``) and reconciler passes of a second replica at once."""
    inst = fresh_installation
    slugs = [f"cc-bg-{i}" for i in range(6)]
    replica = AppContext.build(inst.settings())
    reconciler = Reconciler(replica)
    try:
        async with in_process(inst) as (client, _):

            async def create(slug: str) -> Any:
                return await client.post(
                    "/admin/tenants", json={"slug": slug, "name": slug}, headers={"Prefer": "respond-async"}
                )

            results = await asyncio.gather(
                *(create(s) for s in slugs), *(reconciler.run_once() for _ in range(4)), return_exceptions=True
            )
            assert not [r for r in results if isinstance(r, BaseException)], results
            assert [r.status_code for r in results[: len(slugs)]] == [202] * len(slugs)
            for report in results[len(slugs) :]:
                assert not report.errors
                assert not report.orphans_dropped
                assert not report.failed

            async def all_active() -> bool:
                report = await reconciler.run_once()
                assert not report.errors
                assert not report.orphans_dropped
                return {r["status"] for r in await registry_rows(inst)} == {"active"}

            await wait_for(all_active, timeout=30, interval=0.2)
    finally:
        await replica.close()
    rows = await registry_rows(inst)
    dbs, roles = await cluster_objects(pg_url, inst.prefix)
    assert sorted(r["slug"] for r in rows) == slugs
    assert set(dbs) == {r["db_name"] for r in rows}
    assert set(roles) == {r["db_role"] for r in rows}


# --- 5. purge with open connections -----------------------------------------------------------------


async def test_purge_drops_database_and_role_despite_open_connections(
    api: Any, installation: Installation, pg_url: str
) -> None:
    created = await api.post("/admin/tenants", json={"slug": "cc-purge-busy", "name": "Busy"})
    assert created.status_code == 201, created.text
    tenant = created.json()
    name = tenant["database"]["name"]
    creds = await vend(api, installation, tenant["id"])

    idle = await asyncpg.connect(tenant_dsn(creds))
    busy = await asyncpg.connect(tenant_dsn(creds))
    tx = busy.transaction()
    await tx.start()
    await busy.execute("INSERT INTO notes (body) VALUES ('held')")
    await busy.execute("LOCK TABLE notes IN ACCESS EXCLUSIVE MODE")
    try:
        response = await api.delete(f"/admin/tenants/{tenant['id']}", params={"purge": "true"})
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "deleted"

        dbs, roles = await cluster_objects(pg_url, name)
        assert dbs == {}
        assert roles == {}
        assert (await api.get(f"/admin/tenants/{tenant['id']}")).status_code == 404
        # The open sessions were ended, not left dangling.
        for conn in (idle, busy):
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
                await conn.fetchval("SELECT 1")
        # And nobody can log in any more.
        with pytest.raises((asyncpg.PostgresError, OSError)):
            await asyncpg.connect(tenant_dsn(creds))
        gone = await api.get(
            f"/internal/v1/tenants/{tenant['id']}/database",
            headers={"Authorization": f"Bearer {installation.service_token}"},
        )
        assert gone.status_code == 404
    finally:
        for conn in (idle, busy):
            conn.terminate()


async def test_slug_is_reusable_after_purge(api: Any, installation: Installation, pg_url: str) -> None:
    first = (await api.post("/admin/tenants", json={"slug": "cc-reuse", "name": "One"})).json()
    assert (await api.delete(f"/admin/tenants/{first['id']}", params={"purge": "true"})).status_code == 200
    second = await api.post("/admin/tenants", json={"slug": "cc-reuse", "name": "Two"})
    assert second.status_code == 201, second.text
    assert second.json()["database"]["name"] != first["database"]["name"]
    dbs, roles = await cluster_objects(pg_url, tenant_name_prefix(installation, "cc-reuse"))
    assert list(dbs) == list(roles) == [second.json()["database"]["name"]]
