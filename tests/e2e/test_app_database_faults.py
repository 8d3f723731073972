"""tenantry-app around PostgreSQL restarts and outages: a restart costs no request, an outage is a clean 503, and a
handler is run again after a lost connection only when it had committed nothing.

The tests stop and restart Postgres, so this module runs its whole platform (registry, template and tenant
databases) on a throw-away server of its own: tests running alongside on the session server are unaffected.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from support.gateway_support import ServerProcess
from support.platform import Installation, Tenant, free_port, wait_until, with_database
from support.servers import PostgresServer, own_postgres
from support.stacks import gw, make_tenant, running_platform
from tenantry_devtools.platform import Platform

pytestmark = pytest.mark.e2e

FAULT_APP = Path(__file__).parents[1] / "support" / "fault_app.py"


class FaultAppProcess(ServerProcess):
    """``support/fault_app.py``: a TenantryPlugin app whose handlers lose their connection on purpose."""

    def __init__(self, installation: Installation, tenant_service_url: str, gateway_url: str, log_path: Path) -> None:
        port = free_port()
        super().__init__(
            "fault-app",
            [sys.executable, "-P", str(FAULT_APP), str(port)],
            log_path,
            env={
                "TENANT_SERVICE_URL": tenant_service_url,
                "SERVICE_TOKEN": installation.service_token,
                "REDIS_URL": installation.redis_url,
                "GATEWAY_JWKS_URL": gateway_url + "/_gateway/jwks.json",
                "FAULT_SUPERUSER_URL": installation.pg_url,
            },
            port=port,
        )


@pytest.fixture(scope="module")
def own_pg() -> Iterator[PostgresServer]:
    """A Postgres of this module's own, which its tests stop and restart."""
    with own_postgres("appdb") as local:
        yield PostgresServer(local.url, source="local", local=local)


@pytest.fixture(scope="module")
async def own_installation(own_pg: PostgresServer, redis_url: str) -> Installation:
    installation = Installation.isolated(own_pg.url, redis_url)
    await installation.create()
    return installation  # no drop: the server is thrown away with everything on it


@pytest.fixture(scope="module")
def platform(own_installation: Installation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with running_platform(own_installation, tmp_path_factory.mktemp("appdb")) as started:
        yield started


@pytest.fixture(scope="module")
def faults(platform: Platform) -> Iterator[FaultAppProcess]:
    process = FaultAppProcess(
        platform.installation,
        platform.service.url,
        platform.gateway.url,
        platform.notes.log_path.with_name("faults.log"),
    ).start()
    yield process
    process.stop()


def fault_tenant(platform: Platform, faults: FaultAppProcess, slug: str) -> Tenant:
    """A tenant whose upstream is the fault app, once the gateway forwards to it."""
    tenant = make_tenant(platform, slug)
    patched = platform.admin.patch(f"/admin/tenants/{tenant.id}", json={"upstream_url": faults.url})
    assert patched.status_code == 200, patched.text
    wait_until(lambda: gw(platform, "GET", "/runs/none", tenant).status_code == 200)
    return tenant


def superuser(platform: Platform, query: str, *args: object, database: str | None = None) -> Any:
    """One value from a superuser connection straight to Postgres."""

    async def fetch() -> Any:
        pg_url = platform.installation.pg_url
        url = pg_url if database is None else with_database(pg_url, database)
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
def test_every_tenants_first_request_after_a_postgres_restart_succeeds(
    platform: Platform, own_pg: PostgresServer, mode: str
) -> None:
    tenants = [make_tenant(platform, f"restart-{mode}-{i}") for i in range(4)]
    for tenant in tenants:
        assert gw(platform, "POST", "/notes", tenant, json={"body": "before"}).status_code == 201
    assert platform.notes.engines() >= len(tenants)  # each one holds a pooled connection now
    # The throw-away server runs with synchronous_commit=off: flush, so that a crash keeps the notes.
    superuser(platform, "CHECKPOINT")

    own_pg.restart(mode)

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
    platform: Platform, own_pg: PostgresServer
) -> None:
    tenant = make_tenant(platform, "outage")
    assert gw(platform, "POST", "/notes", tenant, json={"body": "before"}).status_code == 201

    with own_pg.outage():
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


def test_a_handler_whose_connection_broke_before_it_committed_runs_again_and_writes_once(
    platform: Platform, faults: FaultAppProcess
) -> None:
    tenant = fault_tenant(platform, faults, "lost-before")
    key = uuid.uuid4().hex

    response = gw(platform, "POST", "/lost-before-commit", tenant, headers={"X-Fault-Key": key}, json={"body": key})

    assert response.status_code == 201, response.text
    assert response.json() == {"runs": 2}  # the second run read the same request body
    assert notes_with_body(platform, tenant, key) == 1  # the first run's insert went with its connection


def test_a_handler_that_committed_and_then_lost_its_connection_is_not_run_again(
    platform: Platform, faults: FaultAppProcess
) -> None:
    tenant = fault_tenant(platform, faults, "lost-after")
    key = uuid.uuid4().hex

    response = gw(platform, "POST", "/lost-after-commit", tenant, headers={"X-Fault-Key": key})

    assert_database_unavailable(response)
    assert "committed" in response.json()["detail"]
    assert gw(platform, "GET", f"/runs/{key}", tenant).json() == {"runs": 1}
    assert notes_with_body(platform, tenant, key) == 1  # written once, not duplicated by a second run
    assert "Traceback" not in faults.log()


def test_a_streamed_response_that_loses_its_connection_is_not_run_again(
    platform: Platform, faults: FaultAppProcess
) -> None:
    tenant = fault_tenant(platform, faults, "lost-stream")
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
