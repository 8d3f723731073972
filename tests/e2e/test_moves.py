"""Several PostgreSQL servers end to end (contract §11): the server registry, placement, a tenant's database moved
between two real clusters while its notes are written through the gateway, ``kill -9`` at every step of a move,
and a drain. Two throw-away clusters of this module's own (``wal_level=logical``): the registry and ``default``
live on the first, ``second`` is registered from ``EXTRA_DATABASE_SERVERS``.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from support.operations import accepted, wait_operation
from support.platform import Installation, TenantServiceProcess, registry, with_database
from support.servers import own_postgres
from support.stacks import gw, make_tenant, running_platform
from tenantry_devtools.platform import Platform, Tenant
from tenantry_devtools.servers import LocalPostgres

pytestmark = pytest.mark.e2e

FAST = {"OPERATION_POLL_SECONDS": "0.2", "RECONCILE_INTERVAL_SECONDS": "1"}
#: Limits of tenants that write continuously (the free plan's rate would answer 429).
BUSY = {"requests_per_minute": 1_000_000, "requests_per_day": 100_000_000}


@pytest.fixture(scope="module")
def first_pg() -> Iterator[LocalPostgres]:
    with own_postgres("moves-a") as server:
        yield server


@pytest.fixture(scope="module")
def second_pg() -> Iterator[LocalPostgres]:
    with own_postgres("moves-b") as server:
        yield server


@pytest.fixture(scope="module")
async def inst(first_pg: LocalPostgres, second_pg: LocalPostgres, redis_url: str) -> AsyncIterator[Installation]:
    installation = Installation.isolated(first_pg.url, redis_url, label="moves").with_settings(
        {
            "EXTRA_DATABASE_SERVERS": f"second={second_pg.url}",
            "OPERATION_WORKERS": "4",
            "DRAIN_CONCURRENCY": "2",
            "MOVE_KEEP_SECONDS": "3600",
            **FAST,
        }
    )
    await installation.create()
    return installation


@pytest.fixture(scope="module")
def platform(inst: Installation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with running_platform(inst, tmp_path_factory.mktemp("moves")) as started:
        yield started


async def _fetch(url: str, database: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(with_database(url, database), timeout=10)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close(timeout=5)


def fetch(url: str, database: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Rows of one query as the cluster's superuser."""
    return asyncio.run(_fetch(url, database, sql, *args))


def leftovers(url: str, prefix: str) -> dict[str, list[str]]:
    """A move's traces on one cluster: slots, subscriptions and stand-in roles."""
    return {
        "slots": [r[0] for r in fetch(url, "postgres", "SELECT slot_name FROM pg_replication_slots")],
        "subscriptions": [r[0] for r in fetch(url, "postgres", "SELECT subname FROM pg_subscription")],
        "stand_ins": [
            r[0]
            for r in fetch(
                url, "postgres", "SELECT rolname FROM pg_roles WHERE rolname ~ $1", f"^{prefix}mv_[0-9a-f]{{32}}(_r)?$"
            )
        ],
    }


def databases(url: str, prefix: str) -> dict[str, bool]:
    """The installation's tenant databases on one cluster, and whether each accepts connections."""
    rows = fetch(
        url, "postgres", "SELECT datname, datallowconn FROM pg_database WHERE starts_with(datname, $1)", prefix
    )
    return {r["datname"]: r["datallowconn"] for r in rows}


def move(admin: httpx.Client, slug: str, server: str, **extra: Any) -> dict[str, Any]:
    op = accepted(admin.post(f"/admin/tenants/{slug}/move", json={"server": server, **extra}))
    assert op["kind"] == "move"
    return wait_operation(admin, op["id"], timeout=180)


def test_servers_are_registered_checked_and_shown_without_passwords(
    platform: Platform, first_pg: LocalPostgres, second_pg: LocalPostgres
) -> None:
    admin = platform.admin
    listed = admin.get("/admin/servers").json()
    names = [s["name"] for s in listed["items"]]
    assert names == ["default", "second"]
    assert listed["next_cursor"] is None
    second = admin.get("/admin/servers/second").json()
    assert second["port"] == second_pg.port
    assert second["state"] == "active"
    assert second["can_move_online"] is True
    assert second["version"] >= 15
    assert second["reachable"] is True
    assert "password" not in str(listed).lower()
    # The same cluster twice, an unreachable one, a bad body.
    again = admin.post("/admin/servers", json={"name": "again", "url": second_pg.url})
    assert again.status_code == 409
    assert again.json()["code"] == "server_exists"
    dead = admin.post("/admin/servers", json={"name": "dead", "url": "postgresql://postgres@127.0.0.1:1/postgres"})
    assert dead.status_code == 422
    assert dead.json()["code"] == "server_unusable"
    bad = admin.post("/admin/servers", json={"name": "Bad Name", "url": second_pg.url})
    assert bad.status_code == 422
    assert admin.get("/admin/servers/nope").status_code == 404
    # A role without CREATEDB and CREATEROLE cannot hold tenant databases.
    fetch(second_pg.url, "postgres", "CREATE ROLE weak LOGIN")
    fetch(second_pg.url, "postgres", "GRANT CONNECT ON DATABASE postgres TO weak")
    weak_url = f"postgresql://weak@127.0.0.1:{second_pg.port}/postgres"
    weak = admin.post("/admin/servers", json={"name": "weak", "url": weak_url})
    assert weak.status_code == 422
    assert weak.json()["code"] == "server_unusable"
    assert "CREATEDB" in weak.json()["detail"]
    # The template is there at the current version.
    assert fetch(
        second_pg.url, "postgres", "SELECT 1 FROM pg_database WHERE datname = $1", platform.installation.template
    )


def test_placement_pins_labels_and_least_loaded_and_no_capacity(platform: Platform, second_pg: LocalPostgres) -> None:
    admin = platform.admin
    pinned = make_tenant(platform, "mv-pinned", server="second")
    body = admin.get(f"/admin/tenants/{pinned.slug}").json()
    assert body["database"]["server"] == "second"
    assert body["database"]["port"] == second_pg.port
    assert gw(platform, "POST", "/notes", pinned, json={"body": "on second"}).status_code == 201
    assert fetch(second_pg.url, pinned.database, "SELECT body FROM notes")[0]["body"] == "on second"

    assert admin.patch("/admin/servers/second", json={"labels": {"tier": "gold"}}).status_code == 200
    gold = make_tenant(platform, "mv-gold", placement={"labels": {"tier": "gold"}})
    assert admin.get(f"/admin/tenants/{gold.slug}").json()["database"]["server"] == "second"
    none = admin.post("/admin/tenants", json={"slug": "mv-none", "name": "x", "placement": {"labels": {"tier": "x"}}})
    assert none.status_code == 503
    assert none.json()["code"] == "no_capacity"
    unknown = admin.post("/admin/tenants", json={"slug": "mv-unknown", "name": "x", "server": "nope"})
    assert unknown.status_code == 422

    assert admin.patch("/admin/servers/second", json={"capacity": 0}).status_code == 200
    full = admin.post("/admin/tenants", json={"slug": "mv-full", "name": "x", "server": "second"})
    assert full.status_code == 503
    assert full.json()["code"] == "no_capacity"
    assert admin.patch("/admin/servers/second", json={"capacity": 2000, "labels": {}}).status_code == 200
    busy = admin.delete("/admin/servers/second")
    assert busy.status_code == 409
    assert busy.json()["code"] == "server_not_empty"


def test_a_move_under_continuous_writes_loses_nothing_and_pauses_writes_under_two_seconds(
    platform: Platform, first_pg: LocalPostgres, second_pg: LocalPostgres
) -> None:
    admin = platform.admin
    tenant = make_tenant(platform, "mv-live", server="default", limits=BUSY)
    for i in range(200):
        assert gw(platform, "POST", "/notes", tenant, json={"body": f"before-{i}"}).status_code == 201
    acked: list[tuple[float, str]] = []
    failures: list[int] = []
    stop = threading.Event()

    def writer(n: int) -> None:
        i = 0
        with httpx.Client(base_url=platform.gateway.url, headers={"X-API-Key": tenant.key}, timeout=30) as client:
            while not stop.is_set():
                body = f"w{n}-{i}"
                response = client.post("/notes", json={"body": body})
                if response.status_code == 201:
                    acked.append((time.monotonic(), body))
                else:
                    failures.append(response.status_code)
                i += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    done = move(admin, tenant.slug, "second")
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join()
    finished = time.monotonic()

    assert done["state"] == "succeeded", done
    result = done["result"]
    assert result["mode"] == "logical", result
    assert result["verified"] is True, result
    assert failures == []
    times = sorted(t for t, _ in acked)
    longest = max(b - a for a, b in itertools.pairwise(times))
    print(f"move: longest write pause {longest:.3f} s; operation's {result['write_pause_seconds']} s; {result}")
    assert longest < 2.0
    # Every acknowledged note is on the new server; the tenant is there.
    body = admin.get(f"/admin/tenants/{tenant.slug}").json()
    assert body["database"]["server"] == "second"
    assert body["database"]["port"] == second_pg.port
    moved = {r["body"] for r in fetch(second_pg.url, tenant.database, "SELECT body FROM notes")}
    assert {b for _, b in acked} <= moved
    assert {f"before-{i}" for i in range(200)} <= moved
    assert gw(platform, "GET", "/whoami", tenant).json()["database"] == tenant.database
    assert gw(platform, "POST", "/notes", tenant, json={"body": "after"}).status_code == 201
    assert "after" in {r["body"] for r in fetch(second_pg.url, tenant.database, "SELECT body FROM notes")}
    # The old database refuses connections, and holds nothing written after the switch.
    assert databases(first_pg.url, platform.installation.prefix or "")[tenant.database] is False
    fetch(first_pg.url, "postgres", f'ALTER DATABASE "{tenant.database}" ALLOW_CONNECTIONS true')
    old = {r["body"] for r in fetch(first_pg.url, tenant.database, "SELECT body FROM notes")}
    fetch(first_pg.url, "postgres", f'ALTER DATABASE "{tenant.database}" ALLOW_CONNECTIONS false')
    assert old <= moved
    assert "after" not in old
    late = {b for t, b in acked if t > finished - 1.0}
    assert late
    assert not (late & old)
    # Nothing of the move is left on either server.
    prefix = platform.installation.prefix or ""
    assert leftovers(first_pg.url, prefix) == {"slots": [], "subscriptions": [], "stand_ins": []}
    assert leftovers(second_pg.url, prefix) == {"slots": [], "subscriptions": [], "stand_ins": []}
    assert (
        fetch(first_pg.url, "postgres", "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", tenant.database)[0][0]
        is False
    )


def test_a_dump_move_and_a_move_back_keep_the_data(
    platform: Platform, first_pg: LocalPostgres, second_pg: LocalPostgres
) -> None:
    admin = platform.admin
    tenant = make_tenant(platform, "mv-dump", server="default")
    for i in range(50):
        assert gw(platform, "POST", "/notes", tenant, json={"body": f"n{i}"}).status_code == 201
    there = move(admin, tenant.slug, "second", mode="dump")
    assert there["state"] == "succeeded", there
    assert there["result"]["mode"] == "dump"
    assert there["result"]["verified"] is True
    back = move(admin, tenant.slug, "default")
    assert back["state"] == "succeeded", back
    assert back["result"]["mode"] == "logical"
    notes = {r["body"] for r in fetch(first_pg.url, tenant.database, "SELECT body FROM notes")}
    assert notes == {f"n{i}" for i in range(50)}
    assert gw(platform, "POST", "/notes", tenant, json={"body": "home"}).status_code == 201
    # Moving back dropped the copy kept on the first server; the second keeps its own, closed.
    assert databases(first_pg.url, platform.installation.prefix or "")[tenant.database] is True
    assert databases(second_pg.url, platform.installation.prefix or "")[tenant.database] is False
    same = admin.post(f"/admin/tenants/{tenant.slug}/move", json={"server": "default"})
    assert same.status_code == 409
    assert same.json()["code"] == "already_on_server"
    # Each finished move was announced (contract §13), in the transaction that recorded its end.
    events = asyncio.run(
        registry(
            platform.installation,
            "SELECT body->'data'->>'id' AS op, body->'data'->>'slug' AS slug FROM event_outbox"
            " WHERE type = 'move.completed' AND tenant_id = $1 ORDER BY seq",
            uuid.UUID(tenant.id),
        )
    )
    assert [(e["op"], e["slug"]) for e in events] == [(there["id"], tenant.slug), (back["id"], tenant.slug)]


def test_tables_without_a_primary_key_move_correctly_online(
    platform: Platform, first_pg: LocalPostgres, second_pg: LocalPostgres
) -> None:
    tenant = make_tenant(platform, "mv-nopk", server="default")
    password = fetch_credentials(platform, tenant)
    asyncio.run(_as_tenant(first_pg.port, tenant, password, [
        "CREATE TABLE log (at int, what text)",
        "INSERT INTO log SELECT g, 'x' || g FROM generate_series(1, 1000) g",
    ]))  # fmt: skip
    done = move(platform.admin, tenant.slug, "second")
    assert done["state"] == "succeeded", done
    assert done["result"]["mode"] == "logical"
    rows = fetch(second_pg.url, tenant.database, "SELECT count(*), sum(at) FROM log")[0]
    assert (rows[0], rows[1]) == (1000, 500500)
    identity = fetch(second_pg.url, tenant.database, "SELECT relreplident::text FROM pg_class WHERE relname = 'log'")
    assert identity[0][0] == "d"


def fetch_credentials(platform: Platform, tenant: Tenant) -> str:
    response = httpx.get(
        f"{platform.service.url}/internal/v1/tenants/{tenant.id}/database",
        headers={"Authorization": f"Bearer {platform.installation.service_token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["password"])


async def _as_tenant(port: int, tenant: Tenant, password: str, statements: list[str]) -> None:
    conn = await asyncpg.connect(
        host="127.0.0.1", port=port, user=tenant.database, password=password, database=tenant.database
    )
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


MOVE_POINTS = (
    "move.after_target",
    "move.after_publication",
    "move.after_subscription",
    "move.after_copy",
    "move.before_cutover",
    "move.frozen",
    "move.before_registry",
    "move.after_switch",
)


@pytest.mark.parametrize("point", MOVE_POINTS)
def test_kill_9_at_each_step_of_a_move_leaves_nothing_behind(
    platform: Platform,
    inst: Installation,
    first_pg: LocalPostgres,
    second_pg: LocalPostgres,
    tmp_path: Path,
    point: str,
) -> None:
    tenant = make_tenant(platform, f"mv-k{MOVE_POINTS.index(point)}", server="default")
    for i in range(20):
        assert gw(platform, "POST", "/notes", tenant, json={"body": f"k{i}"}).status_code == 201
    platform.service.stop()
    try:
        doomed = TenantServiceProcess(
            inst, tmp_path / "killed.log", env={"TENANTRY_FAILPOINTS": f"{point}=kill"}, port=platform.service.port
        )
        doomed.start()
        try:
            with doomed.client() as client:
                response = client.post(f"/admin/tenants/{tenant.slug}/move", json={"server": "second"})
                assert response.status_code == 202, response.text
                op_id = str(response.json()["id"])
            assert doomed.wait_exit(timeout=90) == -signal.SIGKILL, doomed.log()[-3000:]
        finally:
            doomed.kill()
    finally:
        platform.service.start()
    done = wait_operation(platform.admin, op_id, timeout=180)
    assert done["state"] in ("succeeded", "failed"), done
    server = platform.admin.get(f"/admin/tenants/{tenant.slug}").json()["database"]["server"]
    if point in ("move.before_registry", "move.after_switch"):
        assert done["state"] == "succeeded", done
        assert server == "second"
    here, there = (second_pg, first_pg) if server == "second" else (first_pg, second_pg)
    notes = {r["body"] for r in fetch(here.url, tenant.database, "SELECT body FROM notes")}
    assert notes == {f"k{i}" for i in range(20)}
    wait_until_served(platform, tenant)
    prefix = inst.prefix or ""

    def clean() -> bool:
        return leftovers(first_pg.url, prefix) == leftovers(second_pg.url, prefix) == {
            "slots": [], "subscriptions": [], "stand_ins": []
        }  # fmt: skip

    deadline = time.monotonic() + 30
    while not clean():
        assert time.monotonic() < deadline, (leftovers(first_pg.url, prefix), leftovers(second_pg.url, prefix))
        time.sleep(0.5)
    elsewhere = databases(there.url, prefix).get(tenant.database)
    if server == "second":
        assert elsewhere is False  # kept, closed
    else:
        assert elsewhere is None  # nothing on the target
        assert not fetch(there.url, "postgres", "SELECT 1 FROM pg_roles WHERE rolname = $1", tenant.database)


def wait_until_served(platform: Platform, tenant: Tenant) -> None:
    deadline = time.monotonic() + 30
    while True:
        response = gw(platform, "POST", "/notes", tenant, json={"body": "served"})
        if response.status_code == 201:
            return
        assert time.monotonic() < deadline, response.text
        time.sleep(0.3)


def test_a_drain_moves_twenty_tenants_under_light_traffic_and_disables_the_server(
    platform: Platform, inst: Installation, second_pg: LocalPostgres
) -> None:
    admin = platform.admin
    assert admin.post("/admin/servers", json={"name": "third", "url": second_pg.url}).status_code == 409
    tenants = [make_tenant(platform, f"mv-dr{i}", server="second", limits=BUSY) for i in range(20)]
    failures: list[int] = []
    served = [0]
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=platform.gateway.url, timeout=30) as client:
            i = 0
            while not stop.is_set():
                tenant = tenants[i % len(tenants)]
                response = client.post("/notes", json={"body": f"d{i}"}, headers={"X-API-Key": tenant.key})
                if response.status_code == 201:
                    served[0] += 1
                else:
                    failures.append(response.status_code)
                i += 1
                time.sleep(0.02)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        op = accepted(admin.post("/admin/servers/second/drain"))
        assert op["kind"] == "drain"
        done = wait_operation(admin, op["id"], timeout=600)
    finally:
        stop.set()
        thread.join()
    print(f"drain: {served[0]} requests served, {len(failures)} failed: {failures[:10]}")
    assert done["state"] == "succeeded", done
    assert failures == []
    second = admin.get("/admin/servers/second").json()
    assert second["state"] == "disabled"
    assert second["tenants"] == 0
    for tenant in tenants:
        assert admin.get(f"/admin/tenants/{tenant.slug}").json()["database"]["server"] == "default"
    query = "SELECT count(*) FROM operations WHERE kind = 'move' AND state = 'succeeded' AND params->>'drain' = $1"
    assert asyncio.run(registry(inst, query, op["id"]))[0][0] >= 20
