"""Root conftest: environment defaults and the session-wide PostgreSQL/Redis servers.

Server fixtures (all session scoped):

* ``pg_server`` / ``redis_server``: a :class:`support.servers.PostgresServer` /
  :class:`support.servers.RedisServer` with ``.url``, ``.source`` and ``.restartable``;
  fault tests use ``.stop()``/``.start()``/``.restart()``/``.outage()`` (Redis also
  ``.kill()``), which fail the test when the server is not owned by the suite.
* ``pg_url`` / ``redis_url``: just the URLs of the above.
* ``s3_server``: a :class:`support.s3.S3Server`, moto's S3 server as a real process on 127.0.0.1 with a bucket.

Platform fixtures: ``installation`` (session) and ``fresh_installation`` (a test's own), ``service`` (the
tenant-service as a process), ``api`` (in-process), and ``stack`` (module scoped: tenant-service, echo upstream and
gateway as processes, see :func:`stack`) with ``load_tenant`` for the load checks.

Where the servers come from: ``TEST_DATABASE_URL`` / ``TEST_REDIS_URL`` if set, else
testcontainers if a Docker engine answers (opt out with ``TENANTRY_TEST_DOCKER=0``),
else throw-away local servers started from the installed binaries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from support.load import require_wrk, unthrottled_tenant
from support.platform import Installation, Tenant, TenantServiceProcess
from support.s3 import S3Server, running_s3_server
from support.servers import PostgresServer, RedisServer, provide_postgres, provide_redis
from support.stacks import GatewayStack, running_stack
from tenantry_devtools.processes import use_bytecode_cache

# Nothing above this line may import application code: app modules may read the
# environment at import time, and the defaults below must already be in place.


def set_test_env_defaults() -> None:
    """Set environment defaults for the whole test run.

    Runs when pytest loads this conftest, i.e. before any test module (and thus any
    application module) is imported. Whatever the developer or CI exported wins.
    """
    # Child processes (tenantctl, the services) start fast from a shared bytecode cache outside the tree.
    use_bytecode_cache("/tmp/tenantry-test-pycache")


set_test_env_defaults()

from tenant_service.app import create_app  # noqa: E402 - after the environment defaults
from tenant_service.context import AppContext  # noqa: E402


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """Session PostgreSQL (superuser); see the module docstring for where it comes from."""
    with provide_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def pg_url(pg_server: PostgresServer) -> str:
    """Superuser URL ``postgresql://user[:pw]@host:port/dbname`` of ``pg_server``."""
    return pg_server.url


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """Session Redis; see the module docstring for where it comes from."""
    with provide_redis() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """URL ``redis://host:port/0`` of ``redis_server``."""
    return redis_server.url


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """Session S3-compatible server (moto's, a child process) with a bucket; fails with the fix when it can't start."""
    with running_s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="session")
async def installation(pg_url: str, redis_url: str) -> AsyncIterator[Installation]:
    """One migrated tenant-service installation shared by the session (own registry, template, prefix)."""
    inst = Installation.isolated(pg_url, redis_url)
    await inst.create()
    yield inst
    await inst.drop()


@pytest.fixture(scope="session")
async def ctx(installation: Installation) -> AsyncIterator[AppContext]:
    """An in-process :class:`AppContext` on the session installation."""
    context = AppContext.build(installation.settings())
    yield context
    await context.close()


@pytest.fixture
async def fresh_installation(pg_url: str, redis_url: str) -> AsyncIterator[Installation]:
    """A migrated installation of its own, for tests that count or crash things."""
    inst = Installation.isolated(pg_url, redis_url)
    await inst.create()
    yield inst
    await inst.drop()


@pytest.fixture
def service(installation: Installation, tmp_path: Path) -> Iterator[TenantServiceProcess]:
    """The tenant-service as a real process on the session installation."""
    proc = TenantServiceProcess(installation, tmp_path / "tenant-service.log").start()
    yield proc
    proc.stop()


@pytest.fixture
async def api(ctx: AppContext) -> AsyncIterator[httpx.AsyncClient]:
    """The tenant-service app in-process (no background reconciler), with the admin token set.

    It runs on the test's own event loop (``httpx.ASGITransport``), like the session ``ctx`` and its pools, so
    requests may be gathered concurrently.
    """
    app = create_app(ctx, run_background=False)
    token = next(iter(ctx.settings.security.admin_tokens.values()))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver.local", headers={"Authorization": f"Bearer {token}"}
    ) as client:
        yield client


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, installation: Installation, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayStack]:
    """The tenant-service, an echo upstream and a gateway as real processes, shared by the module's tests.

    A module tunes it with ``pytestmark = pytest.mark.stack(service_env={...}, gateway_env={...},
    gateways={"name": {...}})``: settings of the tenant-service and of the gateway, and further gateways on the same
    tenant-service (``stack.extra``, in that order), each with settings of its own.
    """
    marker = request.node.get_closest_marker("stack")
    options = marker.kwargs if marker else {}
    folder = tmp_path_factory.mktemp(request.node.name.removesuffix(".py"))
    with running_stack(installation, folder, options.get("service_env"), options.get("gateway_env")) as started:
        for name, env in options.get("gateways", {}).items():
            started.start_gateway(name, **env)
        yield started


@pytest.fixture(scope="module")
def load_tenant(stack: GatewayStack) -> Tenant:
    """A tenant on an unthrottled plan that the stack's gateway serves, for wrk (which must be installed)."""
    require_wrk()
    return unthrottled_tenant(stack)


# Reports a test records with record_property("containers_report", ...) (image sizes, phase times), shown at
# the end of the run: under xdist a passing test's output is not, but its properties reach this process.
_CONTAINER_REPORTS: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _CONTAINER_REPORTS.extend(str(v) for name, v in report.user_properties if name == "containers_report")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for text in _CONTAINER_REPORTS:
        terminalreporter.section("container images")
        terminalreporter.write_line(text)
