"""PostgreSQL and Redis provisioning for the test suite.

Each provider tries, in order: a URL from the environment, a testcontainers container
(only when a Docker engine actually answers), and a throw-away local server from
:mod:`tenantry_devtools.servers`. When nothing works the fixture fails (never skips)
with a message naming the fixes.

Environment:
    TEST_DATABASE_URL: use this PostgreSQL (superuser URL) instead of starting one.
    TEST_REDIS_URL: use this Redis instead of starting one.
    TENANTRY_TEST_DOCKER: set to ``0`` to never try testcontainers.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tenantry_devtools.servers import (
    LocalPostgres,
    LocalRedis,
    docker_available,
    ensure_binaries,
)

PG_URL_ENV = "TEST_DATABASE_URL"
REDIS_URL_ENV = "TEST_REDIS_URL"
DOCKER_OPT_OUT_ENV = "TENANTRY_TEST_DOCKER"
PG_IMAGE = "postgres:16-alpine"
REDIS_IMAGE = "redis:7-alpine"

_PG_FIXES = (
    "Fix one of: set TEST_DATABASE_URL=postgresql://user:pw@host:port/db (superuser); "
    f"start a Docker engine (testcontainers runs {PG_IMAGE}); "
    "or install the PostgreSQL server binaries (apt-get install -y postgresql)."
)
_REDIS_FIXES = (
    "Fix one of: set TEST_REDIS_URL=redis://host:port/0; "
    f"start a Docker engine (testcontainers runs {REDIS_IMAGE}); "
    "or install redis-server (apt-get install -y redis-server)."
)


def _not_restartable(what: str, source: str, action: str) -> NoReturn:
    pytest.fail(
        f"This test needs to {action} the {what} server, but it comes from {source}, which the "
        f"suite does not control. Unset {PG_URL_ENV if what == 'PostgreSQL' else REDIS_URL_ENV} "
        f"and stop Docker (or set {DOCKER_OPT_OUT_ENV}=0) so a local throw-away server is used.",
        pytrace=False,
    )


class PostgresServer:
    """What the ``pg_server`` fixture yields.

    Attributes:
        url: Superuser URL, ``postgresql://user[:pw]@host:port/dbname``.
        source: ``"env"``, ``"testcontainers"`` or ``"local"``.
        restartable: True when the suite owns the server process, i.e. ``stop()``,
            ``start()``, ``restart()`` and ``outage()`` work. Otherwise they fail the
            calling test.
    """

    def __init__(self, url: str, source: str, local: LocalPostgres | None = None) -> None:
        self.url = url
        self.source = source
        self.local = local

    def __repr__(self) -> str:
        return f"PostgresServer(url={self.url!r}, source={self.source!r})"

    @property
    def restartable(self) -> bool:
        return self.local is not None

    def _require_local(self, action: str) -> LocalPostgres:
        if self.local is None:
            _not_restartable("PostgreSQL", self.source, action)
        return self.local

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (pg_ctl ``mode``); the URL stays valid for a later start()."""
        self._require_local("stop").stop(mode)

    def start(self) -> None:
        """Start the server again, on the same port."""
        self._require_local("start").start()

    def restart(self, mode: str = "fast") -> None:
        local = self._require_local("restart")
        local.stop(mode)
        local.start()

    @contextlib.contextmanager
    def outage(self, mode: str = "fast") -> Iterator[None]:
        """Stop the server for the ``with`` body and always start it again afterwards.

        Session-scoped, so a fault test must not leave it down for later tests.
        """
        local = self._require_local("stop")
        local.stop(mode)
        try:
            yield
        finally:
            local.start()


class RedisServer:
    """What the ``redis_server`` fixture yields.

    Attributes:
        url: ``redis://host:port/0``.
        source: ``"env"``, ``"testcontainers"`` or ``"local"``.
        restartable: True when the suite owns the server process, i.e. ``kill()``,
            ``stop()``, ``start()``, ``restart()`` and ``outage()`` work. Otherwise
            they fail the calling test.
    """

    def __init__(self, url: str, source: str, local: LocalRedis | None = None) -> None:
        self.url = url
        self.source = source
        self.local = local

    def __repr__(self) -> str:
        return f"RedisServer(url={self.url!r}, source={self.source!r})"

    @property
    def restartable(self) -> bool:
        return self.local is not None

    def _require_local(self, action: str) -> LocalRedis:
        if self.local is None:
            _not_restartable("Redis", self.source, action)
        return self.local

    def kill(self) -> None:
        """SIGKILL the server, like a crash; all data is lost (nothing is persisted)."""
        self._require_local("kill").kill()

    def stop(self) -> None:
        self._require_local("stop").stop()

    def start(self) -> None:
        """Start the server again, on the same port."""
        self._require_local("start").start()

    def restart(self) -> None:
        local = self._require_local("restart")
        local.stop()
        local.start()

    @contextlib.contextmanager
    def outage(self, *, kill: bool = True) -> Iterator[None]:
        """Take the server down (SIGKILL by default) for the ``with`` body, then start it again."""
        local = self._require_local("kill" if kill else "stop")
        if kill:
            local.kill()
        else:
            local.stop()
        try:
            yield
        finally:
            local.start()


def _docker_wanted() -> bool:
    return os.environ.get(DOCKER_OPT_OUT_ENV, "").strip().lower() not in ("0", "false", "no", "off")


def normalise_pg_url(url: str) -> str:
    """Turn ``postgres://`` and ``postgresql+driver://`` into plain ``postgresql://``."""
    scheme, sep, rest = url.partition("://")
    if sep and (scheme == "postgres" or scheme.startswith("postgresql+")):
        return f"postgresql://{rest}"
    return url


def _server_tmpdir(prefix: str) -> Path:
    # pytest's tmp_path_factory lives under /tmp/pytest-of-root (0700), which the
    # postgres user cannot traverse when we are root; use a world-traversable dir.
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp" if os.geteuid() == 0 else None))
    base.chmod(0o755)
    return base


def _start_container(module: str, cls_name: str, *args: Any, **kwargs: Any) -> Any:
    # testcontainers >= 4.10 moved the modules to testcontainers.community and
    # deprecated the old paths.
    try:
        mod = importlib.import_module(f"testcontainers.community.{module}")
    except ImportError:
        mod = importlib.import_module(f"testcontainers.{module}")
    container = getattr(mod, cls_name)(*args, **kwargs)
    container.start()
    return container


def _try_container(errors: list[str], start: Callable[[], tuple[Any, str]]) -> tuple[Any, str] | None:
    if not _docker_wanted():
        errors.append(f"testcontainers: disabled by {DOCKER_OPT_OUT_ENV}")
        return None
    if not docker_available():
        errors.append("testcontainers: no Docker engine answers")
        return None
    try:
        return start()
    except Exception as exc:
        errors.append(f"testcontainers: {exc!r}")
        return None


def _missing_binaries(*, postgres: bool, redis: bool) -> str | None:
    try:
        ensure_binaries(install=False, postgres=postgres, redis=redis)
    except RuntimeError as exc:
        return str(exc)
    return None


def _fail(what: str, fixes: str, errors: list[str]) -> NoReturn:
    pytest.fail(
        f"No {what} server for the tests. {fixes}\nAttempts:\n"
        + "\n".join("  - " + e.replace("\n", "\n    ") for e in errors),
        pytrace=False,
    )


@contextlib.contextmanager
def provide_postgres() -> Iterator[PostgresServer]:
    """Yield a superuser PostgreSQL for the session and clean it up afterwards."""
    env_url = os.environ.get(PG_URL_ENV, "").strip()
    if env_url:
        yield PostgresServer(normalise_pg_url(env_url), source="env")
        return

    errors: list[str] = []

    def start_pg() -> tuple[Any, str]:
        container = _start_container("postgres", "PostgresContainer", PG_IMAGE, driver=None)
        return container, normalise_pg_url(container.get_connection_url())

    started = _try_container(errors, start_pg)
    if started is not None:
        container, url = started
        try:
            yield PostgresServer(url, source="testcontainers")
        finally:
            container.stop()
        return

    missing = _missing_binaries(postgres=True, redis=False)
    if missing is not None:
        errors.append(f"local: {missing}")
        _fail("PostgreSQL", _PG_FIXES, errors)

    base = _server_tmpdir("tenantry-pg-")
    local = LocalPostgres(base / "data", log_file=base / "postgres.log")
    try:
        start_error: str | None = None
        try:
            local.start()
        except Exception as exc:
            start_error = str(exc)
        if start_error is not None:
            # Failing outside the except block keeps the report free of a chained traceback.
            errors.append(f"local: {start_error}")
            _fail("PostgreSQL", _PG_FIXES, errors)
        yield PostgresServer(local.url, source="local", local=local)
    finally:
        with contextlib.suppress(Exception):
            local.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def provide_redis() -> Iterator[RedisServer]:
    """Yield a Redis for the session and clean it up afterwards."""
    env_url = os.environ.get(REDIS_URL_ENV, "").strip()
    if env_url:
        yield RedisServer(env_url, source="env")
        return

    errors: list[str] = []

    def start_redis() -> tuple[Any, str]:
        container = _start_container("redis", "RedisContainer", REDIS_IMAGE)
        host = container.get_container_host_ip()
        return container, f"redis://{host}:{container.get_exposed_port(6379)}/0"

    started = _try_container(errors, start_redis)
    if started is not None:
        container, url = started
        try:
            yield RedisServer(url, source="testcontainers")
        finally:
            container.stop()
        return

    missing = _missing_binaries(postgres=False, redis=True)
    if missing is not None:
        errors.append(f"local: {missing}")
        _fail("Redis", _REDIS_FIXES, errors)

    base = _server_tmpdir("tenantry-redis-")
    local = LocalRedis(base / "data", log_file=base / "redis.log")
    try:
        start_error: str | None = None
        try:
            local.start()
        except Exception as exc:
            start_error = str(exc)
        if start_error is not None:
            # Failing outside the except block keeps the report free of a chained traceback.
            errors.append(f"local: {start_error}")
            _fail("Redis", _REDIS_FIXES, errors)
        yield RedisServer(local.url, source="local", local=local)
    finally:
        with contextlib.suppress(Exception):
            local.kill()
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def own_postgres(prefix: str) -> Iterator[LocalPostgres]:
    """A throw-away cluster of one test module's own (which it may stop, crash or reconfigure), removed after.

    Under /tmp and 0755: when the suite runs as root, Postgres runs as the postgres user and must reach it.
    """
    base = Path(tempfile.mkdtemp(prefix=f"tenantry-{prefix}-pg-", dir="/tmp"))
    base.chmod(0o755)
    server = LocalPostgres(base / "data", log_file=base / "postgres.log")
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)
