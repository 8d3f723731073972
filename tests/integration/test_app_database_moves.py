"""tenantry-app follows a tenant's database to another server without a restart (contract §11): real PostgreSQL on
two servers, the app in-process with ``TenantryPlugin``, and a stand-in for the tenant-service's credential vending
(and the gateway's JWKS) whose answer a test switches, as the registry switches at a move's cutover.

A cutover is played as the tenant-service plays it: the old role made NOLOGIN (or the old database closed to
connections), the old database's sessions terminated, the vended credentials switched to the new server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import jwt
import msgspec
import pytest
import redis.asyncio as redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm
from litestar import Litestar, get, post
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from support.platform import with_database
from support.servers import own_postgres
from tenantry_app import AppSettings, CredentialClient, DatabaseCredentials, TenantDatabases, TenantryPlugin
from tenantry_common.events import EVENTS_CHANNEL, encode_event
from tenantry_common.litestar_problems import problem_exception_handlers

_PG_TIMEOUT = 10.0
_KID = "moves-test"


@pytest.fixture(scope="module")
def target_url() -> Iterator[str]:
    """A second PostgreSQL server, the target of the moves (the session server is the source)."""
    with own_postgres("moves") as server:
        yield server.url


@dataclass
class TenantDatabase:
    """One tenant database with its own login role, as provisioning leaves it (here with a ``notes`` table)."""

    server_url: str
    """Superuser URL of its server."""
    database: str
    role: str
    password: str

    @property
    def port(self) -> int:
        return int(urlsplit(self.server_url).port or 5432)

    def credentials(self) -> DatabaseCredentials:
        host = urlsplit(self.server_url).hostname or "127.0.0.1"
        return DatabaseCredentials(
            host=host, port=self.port, database=self.database, user=self.role, password=self.password
        )

    async def superuser(self, query: str, *args: object, in_database: bool = False) -> Any:
        url = with_database(self.server_url, self.database) if in_database else self.server_url
        conn = await asyncpg.connect(url, timeout=_PG_TIMEOUT)
        try:
            return await conn.fetchval(query, *args, timeout=_PG_TIMEOUT)
        finally:
            await conn.close()

    async def notes(self, body: str) -> int:
        """How many notes with this body the database holds, asked of the server directly."""
        return int(await self.superuser("SELECT count(*) FROM notes WHERE body = $1", body, in_database=True))

    async def app_connections(self) -> int:
        """Open connections of the app (its ``application_name``) to this database."""
        return int(
            await self.superuser(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
                self.database,
                APP_NAME,
            )
        )


async def _create_database(server_url: str, role: str) -> TenantDatabase:
    tenant_db = TenantDatabase(server_url, f"moves_{uuid.uuid4().hex[:12]}", role, uuid.uuid4().hex)
    conn = await asyncpg.connect(server_url, timeout=_PG_TIMEOUT)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
            await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{tenant_db.password}'")
        else:
            await conn.execute(f"ALTER ROLE {role} LOGIN PASSWORD '{tenant_db.password}'")
        await conn.execute(f"CREATE DATABASE {tenant_db.database} OWNER {role}")
    finally:
        await conn.close()
    owner = await asyncpg.connect(
        with_database(server_url, tenant_db.database), user=role, password=tenant_db.password, timeout=_PG_TIMEOUT
    )
    try:
        await owner.execute("CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL)")
    finally:
        await owner.close()
    return tenant_db


async def _drop_database(tenant_db: TenantDatabase) -> None:
    conn = await asyncpg.connect(tenant_db.server_url, timeout=_PG_TIMEOUT)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {tenant_db.database} WITH (FORCE)")
        await conn.execute(f"DROP ROLE IF EXISTS {tenant_db.role}")
    finally:
        await conn.close()


@dataclass
class Move:
    """A tenant with a database on the source server and an empty copy of it on the target."""

    tenant_id: str
    source: TenantDatabase
    target: TenantDatabase


@pytest.fixture
async def move(pg_url: str, target_url: str) -> AsyncIterator[Move]:
    role = f"moves_{uuid.uuid4().hex[:12]}"
    source = await _create_database(pg_url, role)
    target = await _create_database(target_url, role)
    yield Move(str(uuid.uuid4()), source, target)
    await _drop_database(source)
    await _drop_database(target)


class PlatformStandIn:
    """What a tenant app talks to besides its databases: the gateway's JWKS and the tenant-service's credential
    vending, as one small HTTP server whose vended credentials a test switches."""

    def __init__(self) -> None:
        self.vended: dict[str, DatabaseCredentials] = {}
        self.vends = 0
        self._key = Ed25519PrivateKey.generate()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def token(self, tenant_id: str) -> str:
        now = int(time.time())
        claims = {
            "iss": "tenantry-gateway",
            "aud": "tenantry-upstream",
            "iat": now,
            "exp": now + 60,
            "tid": tenant_id,
            "sub": "key",
            "slug": "moved",
        }
        return jwt.encode(claims, self._key, algorithm="EdDSA", headers={"kid": _KID})

    def _answer(self, path: str) -> tuple[int, bytes]:
        if path == "/jwks.json":
            jwk = json.loads(OKPAlgorithm.to_jwk(self._key.public_key()))
            return 200, json.dumps({"keys": [{**jwk, "kid": _KID, "alg": "EdDSA"}]}).encode()
        parts = path.strip("/").split("/")
        if parts[:3] == ["internal", "v1", "tenants"] and parts[4:] == ["database"] and parts[3] in self.vended:
            self.vends += 1
            return 200, msgspec.json.encode(self.vended[parts[3]])
        return 404, b"{}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while request_line := await reader.readline():
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass
                status, body = self._answer(request_line.split()[1].decode())
                writer.write(
                    b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
                    % (status, len(body), body)
                )
                await writer.drain()
        writer.close()

    async def __aenter__(self) -> PlatformStandIn:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()


APP_NAME = "moves-test"
#: Called by a handler in its first run only, between its writes and its commit (or after its commit), with the
#: driver connection the handler's session uses.
Hook = Callable[[Any], Awaitable[None]]


@dataclass
class MovesApp:
    """A tenant app built on ``TenantryPlugin``, in-process, and the runs of its handlers."""

    client: httpx.AsyncClient
    plugin: TenantryPlugin
    platform: PlatformStandIn
    runs: dict[str, int] = field(default_factory=dict)
    hooks: dict[str, Hook] = field(default_factory=dict)

    async def call(self, method: str, path: str, tenant_id: str, **kwargs: Any) -> httpx.Response:
        headers = {"X-Tenant-Token": self.platform.token(tenant_id)}
        return await self.client.request(method, path, headers=headers, timeout=30, **kwargs)


def _build_app(platform: PlatformStandIn, redis_url: str | None) -> tuple[Litestar, MovesApp]:
    settings = AppSettings(
        jwks_url=platform.url + "/jwks.json", tenant_service_url=platform.url, service_token="moves",
        redis_url=redis_url, connection_budget=4, connections_per_tenant=1, engine_idle_seconds=60,
        application_name=APP_NAME,
    )  # fmt: skip
    plugin = TenantryPlugin(settings)
    runs: dict[str, int] = {}
    hooks: dict[str, Hook] = {}

    def count_run(key: str) -> int:
        runs[key] = runs.get(key, 0) + 1
        return runs[key]

    async def driver(session: AsyncSession) -> Any:
        return (await (await session.connection()).get_raw_connection()).driver_connection

    async def where(session: AsyncSession) -> dict[str, Any]:
        row = (await session.execute(text("SELECT current_database() AS db, inet_server_port() AS port"))).one()
        return {"database": row.db, "port": row.port}

    @get("/where")
    async def where_am_i(db_session: AsyncSession) -> dict[str, Any]:
        return await where(db_session)

    @post("/notes/{key:str}", status_code=201)
    async def write_then_commit(key: str, db_session: AsyncSession) -> dict[str, Any]:
        """Inserts the note ``key``; in the first run the hook (a cutover) comes before the commit."""
        run = count_run(key)
        await db_session.execute(text("INSERT INTO notes (body) VALUES (:body)"), {"body": key})
        if run == 1 and key in hooks:
            await hooks[key](await driver(db_session))
        await db_session.commit()
        return {"runs": run, **await where(db_session)}

    @post("/committed/{key:str}", status_code=201)
    async def commit_then_read(key: str, db_session: AsyncSession) -> dict[str, Any]:
        """Inserts and commits the note ``key``; in the first run the hook (a cutover) comes after the commit."""
        run = count_run(key)
        await db_session.execute(text("INSERT INTO notes (body) VALUES (:body)"), {"body": key})
        await db_session.commit()
        if run == 1 and key in hooks:
            await hooks[key](await driver(db_session))
        return {"runs": run, **await where(db_session)}

    app = Litestar(
        route_handlers=[where_am_i, write_then_commit, commit_then_read],
        plugins=[plugin],
        exception_handlers=problem_exception_handlers(),
        logging_config=None,
    )
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app.test")
    return app, MovesApp(client=client, plugin=plugin, platform=platform, runs=runs, hooks=hooks)


@contextlib.asynccontextmanager
async def running_app(redis_url: str | None = None) -> AsyncIterator[MovesApp]:
    async with PlatformStandIn() as platform:
        app, moves_app = _build_app(platform, redis_url)
        started, stopping = asyncio.Event(), asyncio.Event()

        async def lifespan() -> None:
            # Entered and left in one task (anyio's rule), while fixtures set up and tear down in different ones.
            async with app.lifespan():
                started.set()
                await stopping.wait()

        task = asyncio.create_task(lifespan())
        await asyncio.wait([task, asyncio.create_task(started.wait())], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        try:
            async with moves_app.client:
                yield moves_app
        finally:
            stopping.set()
            await task


@pytest.fixture
async def tenant_app() -> AsyncIterator[MovesApp]:
    async with running_app() as started:
        yield started


async def cutover(app: MovesApp, move: Move, *, close: str = "nologin", switch: bool = True) -> None:
    """The source stops taking the tenant's connections and ends its sessions; the registry switches to the target.

    ``close``: ``"nologin"`` (the old role may not log in: SQLSTATE 28000) or ``"database"`` (the old database takes
    no connections: 55000). ``switch=False`` leaves the vended credentials on the source (a request that comes
    before the registry switch).
    """
    source = move.source
    if close == "nologin":
        await source.superuser(f"ALTER ROLE {source.role} NOLOGIN")
    else:
        await source.superuser(f"ALTER DATABASE {source.database} ALLOW_CONNECTIONS false")
    await source.superuser(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1", source.database
    )
    if switch:
        app.platform.vended[move.tenant_id] = move.target.credentials()


async def seen_closed(driver: Any) -> None:
    """Wait until the app's driver has seen the server end its connection.

    A COMMIT sent before that counts as possibly applied, and the request is then not run again (right: with
    synchronous replication, a terminated backend may have committed locally); the tests that want a second run
    make sure the driver knew.
    """
    for _ in range(500):
        if driver.is_closed():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the terminated connection still looks open")


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = response.json()
    assert problem["code"] == code
    assert 1 <= int(response.headers["retry-after"]) <= 10
    for leak in ("Traceback", "asyncpg", "sqlalchemy", "SQL", "127.0.0.1", "password"):
        assert leak not in response.text
    return problem


@pytest.mark.parametrize("close", ["nologin", "database"])
async def test_the_first_request_after_a_cutover_is_served_by_the_new_server(
    tenant_app: MovesApp, move: Move, close: str
) -> None:
    tenant_app.platform.vended[move.tenant_id] = move.source.credentials()
    before = await tenant_app.call("GET", "/where", move.tenant_id)
    assert before.json() == {"database": move.source.database, "port": move.source.port}

    await cutover(tenant_app, move, close=close)  # no tenant.database_changed event reaches this app

    key = uuid.uuid4().hex
    response = await tenant_app.call("POST", f"/notes/{key}", move.tenant_id)
    assert response.status_code == 201, response.text
    # The pooled connection was gone and the source refused the old credentials: run again on fresh ones.
    assert response.json() == {"runs": 2, "database": move.target.database, "port": move.target.port}
    assert await move.target.notes(key) == 1
    assert tenant_app.platform.vends == 2


async def test_a_request_whose_connection_the_cutover_ended_before_its_commit_runs_again_on_the_new_server(
    tenant_app: MovesApp, move: Move
) -> None:
    tenant_app.platform.vended[move.tenant_id] = move.source.credentials()
    key = uuid.uuid4().hex

    async def raced_cutover(driver: Any) -> None:
        await cutover(tenant_app, move)
        await seen_closed(driver)

    tenant_app.hooks[key] = raced_cutover

    response = await tenant_app.call("POST", f"/notes/{key}", move.tenant_id)

    assert response.status_code == 201, response.text
    assert response.json() == {"runs": 2, "database": move.target.database, "port": move.target.port}
    assert (await move.source.notes(key), await move.target.notes(key)) == (0, 1)  # written once, on the target


async def test_a_request_that_committed_before_the_cutover_ended_its_connection_is_not_run_again(
    tenant_app: MovesApp, move: Move
) -> None:
    tenant_app.platform.vended[move.tenant_id] = move.source.credentials()
    key = uuid.uuid4().hex

    async def late_cutover(driver: Any) -> None:
        await cutover(tenant_app, move)
        await seen_closed(driver)

    tenant_app.hooks[key] = late_cutover

    response = await tenant_app.call("POST", f"/committed/{key}", move.tenant_id)

    problem = assert_problem(response, 503, "database_unavailable")
    assert "committed" in problem["detail"]
    assert tenant_app.runs[key] == 1
    assert await move.source.notes(key) == 1  # what it committed stays, once
    # The failed session dropped the tenant's engine: the next request is served by the target at once.
    after = await tenant_app.call("GET", "/where", move.tenant_id)
    assert after.json() == {"database": move.target.database, "port": move.target.port}


async def test_a_database_that_still_refuses_after_the_second_run_is_a_503_tenant_unavailable(
    tenant_app: MovesApp, move: Move
) -> None:
    tenant_app.platform.vended[move.tenant_id] = move.source.credentials()
    assert (await tenant_app.call("GET", "/where", move.tenant_id)).status_code == 200

    await cutover(tenant_app, move, switch=False)  # the registry has not switched yet
    key = uuid.uuid4().hex
    response = await tenant_app.call("POST", f"/notes/{key}", move.tenant_id)

    assert_problem(response, 503, "tenant_unavailable")
    assert tenant_app.runs[key] == 2  # run once more on re-vended credentials, not more
    assert tenant_app.platform.vends == 2

    tenant_app.platform.vended[move.tenant_id] = move.target.credentials()
    retried = await tenant_app.call("POST", f"/notes/{key}", move.tenant_id)
    assert retried.status_code == 201, retried.text
    assert retried.json()["port"] == move.target.port


async def test_a_pooled_connection_terminated_between_requests_costs_no_request(
    tenant_app: MovesApp, move: Move
) -> None:
    tenant_app.platform.vended[move.tenant_id] = move.source.credentials()
    assert (await tenant_app.call("GET", "/where", move.tenant_id)).status_code == 200
    assert await move.source.app_connections() == 1

    await move.source.superuser(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1", move.source.database
    )

    key = uuid.uuid4().hex
    response = await tenant_app.call("POST", f"/notes/{key}", move.tenant_id)
    assert response.status_code == 201, response.text
    assert response.json()["database"] == move.source.database
    assert await move.source.notes(key) == 1


async def test_the_database_changed_event_drops_the_engine_and_the_next_request_uses_the_new_server(
    move: Move, redis_url: str
) -> None:
    async with running_app(redis_url) as tenant_app:
        tenant_app.platform.vended[move.tenant_id] = move.source.credentials()
        assert (await tenant_app.call("GET", "/where", move.tenant_id)).status_code == 200
        databases = tenant_app.plugin.runtime.databases
        assert databases.active_tenants() == [move.tenant_id]

        tenant_app.platform.vended[move.tenant_id] = move.target.credentials()
        publisher = redis.Redis.from_url(redis_url, socket_timeout=2.0)
        try:
            deadline = time.monotonic() + 10
            # Published until heard: the app subscribes in the background after its start.
            while move.tenant_id in databases.active_tenants():
                assert time.monotonic() < deadline, "the app never dropped the engine"
                await publisher.publish(
                    EVENTS_CHANNEL, encode_event("tenant.database_changed", tenant_id=move.tenant_id)
                )
                await asyncio.sleep(0.05)
        finally:
            await publisher.aclose()

        assert await move.source.app_connections() == 0  # the old engine is closed, not only forgotten
        key = uuid.uuid4().hex
        response = await tenant_app.call("POST", f"/notes/{key}", move.tenant_id)
        assert response.status_code == 201, response.text
        assert response.json() == {"runs": 1, "database": move.target.database, "port": move.target.port}


class _Vending(CredentialClient):
    """The real client with the answers of a dict instead of the tenant-service's."""

    def __init__(self, vended: dict[str, DatabaseCredentials]) -> None:
        super().__init__("http://127.0.0.1:9", "unused")
        self.vended = vended

    async def get(self, tenant_id: str) -> DatabaseCredentials:
        if tenant_id not in self._cache:
            self._cache[tenant_id] = self.vended[tenant_id]
        return self._cache[tenant_id]


async def test_forgetting_a_tenant_whose_session_is_in_use_gives_new_sessions_the_new_database(move: Move) -> None:
    vended = {move.tenant_id: move.source.credentials()}
    credentials = _Vending(vended)
    databases = TenantDatabases(credentials, budget=2, application_name=APP_NAME)
    current = text("SELECT current_database()")
    try:
        async with databases.session(move.tenant_id) as in_flight:
            assert await in_flight.scalar(current) == move.source.database
            vended[move.tenant_id] = move.target.credentials()

            await databases.forget(move.tenant_id)  # what the tenant.database_changed event does

            async with databases.session(move.tenant_id) as fresh:
                assert await fresh.scalar(current) == move.target.database
            assert await in_flight.scalar(current) == move.source.database  # not cut off mid-request
        for _ in range(100):  # the old engine closes in the background once its last session ended
            if await move.source.app_connections() == 0:
                break
            await asyncio.sleep(0.05)
        assert await move.source.app_connections() == 0
    finally:
        await databases.close()
        await credentials.close()
