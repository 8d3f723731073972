"""tenantry-app around PostgreSQL restarts and outages: a restart costs no request, an outage is a clean 503, and a
handler is run again after a lost connection only when it had committed nothing.

The tests stop and restart Postgres, so this module runs its whole platform (registry, template and tenant
databases) on a throw-away server of its own: tests running alongside on the session server are unaffected.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from support.gateway_support import GatewayProcess, ManagedProcess, NotesProcess
from support.platform import Installation, ServiceProcess, free_port, wait_until, with_database
from support.servers import PostgresServer, own_postgres
from tenantry_common.jwt_keys import generate_signing_key

pytestmark = pytest.mark.e2e

FAULT_APP = Path(__file__).parents[1] / "support" / "fault_app.py"


class FaultAppProcess(ManagedProcess):
    """``support/fault_app.py``: a TenantryPlugin app whose handlers lose their connection on purpose."""

    def __init__(self, installation: Installation, tenant_service_url: str, log_path: Path, **env: str) -> None:
        port = free_port()
        super().__init__(
            ["-P", str(FAULT_APP), str(port)],
            log_path,
            {
                "TENANT_SERVICE_URL": tenant_service_url,
                "SERVICE_TOKEN": installation.service_token,
                "REDIS_URL": installation.redis_url,
                "FAULT_SUPERUSER_URL": installation.pg_url,
                **env,
            },
            port=port,
        )


@dataclass
class Platform:
    pg: PostgresServer
    installation: Installation
    service: ServiceProcess
    gateway: GatewayProcess
    notes: NotesProcess
    faults: FaultAppProcess
    admin: httpx.Client


@dataclass
class Tenant:
    id: str
    slug: str
    key: str
    database: str


@pytest.fixture(scope="module")
def own_pg() -> Iterator[PostgresServer]:
    """A Postgres of this module's own, which its tests stop and restart."""
    with own_postgres("appdb") as local:
        yield PostgresServer(local.url, source="local", local=local)


@pytest.fixture(scope="module")
async def own_installation(own_pg: PostgresServer, redis_url: str) -> Installation:
    installation = Installation(pg_url=own_pg.url, redis_url=redis_url)
    await installation.create()
    return installation  # no drop: the server is thrown away with everything on it


@pytest.fixture(scope="module")
def platform(
    own_pg: PostgresServer, own_installation: Installation, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    folder = tmp_path_factory.mktemp("appdb")
    service = ServiceProcess(own_installation, folder / "tenant-service.log").start()
    notes_port = free_port()
    gateway = GatewayProcess(
        own_installation, service.url, f"http://127.0.0.1:{notes_port}", folder / "gateway.log",
        "k1:" + generate_signing_key(),
    ).start()  # fmt: skip
    gateway_jwks = gateway.url + "/_gateway/jwks.json"
    notes = NotesProcess(
        own_installation, service.url, folder / "notes.log", port=notes_port, GATEWAY_JWKS_URL=gateway_jwks
    ).start()
    faults = FaultAppProcess(own_installation, service.url, folder / "faults.log", GATEWAY_JWKS_URL=gateway_jwks)
    faults.start()
    started = Platform(own_pg, own_installation, service, gateway, notes, faults, service.client())
    yield started
    started.admin.close()
    for process in (faults, notes, gateway):
        process.stop()
    service.stop()


def gw(platform: Platform, method: str, path: str, tenant: Tenant, **kwargs: object) -> httpx.Response:
    headers = {"X-API-Key": tenant.key, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    return httpx.request(method, platform.gateway.url + path, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


def make_tenant(platform: Platform, slug: str, *, faults: bool = False) -> Tenant:
    response = platform.admin.post("/admin/tenants", json={"slug": slug, "name": slug})
    assert response.status_code == 201, response.text
    data = response.json()
    tenant = Tenant(data["id"], slug, data["api_key"]["key"], data["database"]["name"])
    if faults:
        patched = platform.admin.patch(f"/admin/tenants/{tenant.id}", json={"upstream_url": platform.faults.url})
        assert patched.status_code == 200, patched.text
        wait_until(lambda: gw(platform, "GET", "/runs/none", tenant).status_code == 200)
    else:
        wait_until(lambda: gw(platform, "GET", "/notes", tenant).status_code == 200)
    return tenant


def superuser(platform: Platform, query: str, *args: object, database: str | None = None) -> Any:
    """One value from a superuser connection straight to Postgres."""

    async def fetch() -> Any:
        url = platform.pg.url if database is None else with_database(platform.pg.url, database)
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    return asyncio.run(fetch())


def notes_with_body(platform: Platform, tenant: Tenant, body: str) -> int:
    """How many of the tenant's notes have this body, asked of Postgres directly."""
    return int(superuser(platform, "SELECT count(*) FROM notes WHERE body = $1", body, database=tenant.database))


def assert_database_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["code"] == "database_unavailable"
    assert problem["status"] == 503
    assert 1 <= int(response.headers["retry-after"]) <= 10
    for leak in ("Traceback", "asyncpg", "sqlalchemy", "SQL", "127.0.0.1"):
        assert leak not in response.text


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_every_tenants_first_request_after_a_postgres_restart_succeeds(platform: Platform, mode: str) -> None:
    tenants = [make_tenant(platform, f"restart-{mode}-{i}") for i in range(4)]
    for tenant in tenants:
        assert gw(platform, "POST", "/notes", tenant, json={"body": "before"}).status_code == 201
    assert platform.notes.engines() >= len(tenants)  # each one holds a pooled connection now
    # The throw-away server runs with synchronous_commit=off: flush, so that a crash keeps the notes.
    superuser(platform, "CHECKPOINT")

    platform.pg.restart(mode)

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(tenants)) as pool:
        first = list(pool.map(lambda t: gw(platform, "GET", "/notes", t), tenants))
    for tenant, response in zip(tenants, first, strict=True):
        assert response.status_code == 200, (tenant.slug, response.text)
        assert [n["body"] for n in response.json()["items"]] == ["before"]
    for tenant in tenants:
        assert gw(platform, "POST", "/notes", tenant, json={"body": "after"}).status_code == 201
        assert gw(platform, "GET", "/whoami", tenant).json()["database"] == tenant.database
    log = platform.notes.log()
    assert "Traceback" not in log
    # The closed connections were replaced when taken from the pool: no handler had to run a second time.
    assert "handler_run_again" not in log


def test_while_postgres_is_down_requests_get_503_database_unavailable_and_200_once_it_is_back(
    platform: Platform,
) -> None:
    tenant = make_tenant(platform, "outage")
    assert gw(platform, "POST", "/notes", tenant, json={"body": "before"}).status_code == 201

    with platform.pg.outage():
        for method, path, body in (
            ("GET", "/notes", None),
            ("POST", "/notes", {"body": "lost"}),
            ("GET", "/whoami", None),
        ):
            assert_database_unavailable(gw(platform, method, path, tenant, json=body))

    response = gw(platform, "GET", "/notes", tenant)
    assert response.status_code == 200, response.text
    assert [n["body"] for n in response.json()["items"]] == ["before"]
    assert "Traceback" not in platform.notes.log()


def test_a_handler_whose_connection_broke_before_it_committed_runs_again_and_writes_once(platform: Platform) -> None:
    tenant = make_tenant(platform, "lost-before", faults=True)
    key = uuid.uuid4().hex

    response = gw(platform, "POST", "/lost-before-commit", tenant, headers={"X-Fault-Key": key}, json={"body": key})

    assert response.status_code == 201, response.text
    assert response.json() == {"runs": 2}  # the second run read the same request body
    assert notes_with_body(platform, tenant, key) == 1  # the first run's insert went with its connection


def test_a_handler_that_committed_and_then_lost_its_connection_is_not_run_again(platform: Platform) -> None:
    tenant = make_tenant(platform, "lost-after", faults=True)
    key = uuid.uuid4().hex

    response = gw(platform, "POST", "/lost-after-commit", tenant, headers={"X-Fault-Key": key})

    assert_database_unavailable(response)
    assert "committed" in response.json()["detail"]
    assert gw(platform, "GET", f"/runs/{key}", tenant).json() == {"runs": 1}
    assert notes_with_body(platform, tenant, key) == 1  # written once, not duplicated by a second run
    assert "Traceback" not in platform.faults.log()


def test_a_streamed_response_that_loses_its_connection_is_not_run_again(platform: Platform) -> None:
    tenant = make_tenant(platform, "lost-stream", faults=True)
    key = uuid.uuid4().hex

    received = b""
    headers = {"X-API-Key": tenant.key, "X-Fault-Key": key}
    # The stream is cut: the client sees an error, never a complete response.
    with (
        contextlib.suppress(httpx.HTTPError),
        httpx.stream("GET", platform.gateway.url + "/stream-then-lose", headers=headers, timeout=30) as response,
    ):
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            received += chunk

    assert received.startswith(b"first")
    assert b"second" not in received
    assert gw(platform, "GET", f"/runs/{key}", tenant).json() == {"runs": 1}
