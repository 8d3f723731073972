"""Tests for the throw-away server harness (tenantry_devtools.servers) and its fixtures."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from support.servers import PostgresServer, RedisServer, normalise_pg_url
from tenantry_devtools import servers
from tenantry_devtools.servers import (
    LocalPostgres,
    LocalRedis,
    docker_available,
    ensure_binaries,
    find_pg_bindir,
    free_port,
)


@pytest.fixture
def server_dir() -> Iterator[Path]:
    # Under /tmp and 0755 so the postgres user can reach it when we run as root.
    base = Path(tempfile.mkdtemp(prefix="tenantry-devtools-test-", dir="/tmp" if os.geteuid() == 0 else None))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def _port_bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _refuses(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return False
    except OSError:
        return True


def _redis(host: str, port: int, *args: str) -> bytes:
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection((host, port), timeout=2) as sock:
        sock.sendall(payload.encode())
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(1024)
            if not chunk:
                break
            reply += chunk
        return reply


def _postmaster_pid(pg: LocalPostgres) -> int:
    return int((pg.data_dir / "postmaster.pid").read_text().split()[0])


def _redis_pid(redis: LocalRedis) -> int:
    return int((redis.data_dir / "redis.pid").read_text().strip())


async def _pg_fetch(url: str, query: str) -> object:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


# --------------------------------------------------------------------------- helpers


def test_free_port_is_bindable_and_not_a_system_port() -> None:
    port = free_port()
    assert port not in (5432, 6379)
    assert _port_bindable(port)


def test_find_pg_bindir_has_server_binaries() -> None:
    bindir = find_pg_bindir()
    assert bindir is not None
    for tool in ("initdb", "pg_ctl", "postgres"):
        assert os.access(bindir / tool, os.X_OK)


def test_find_pg_bindir_respects_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(servers.PG_BINDIR_ENV, str(tmp_path))
    assert find_pg_bindir() is None


def test_ensure_binaries_passes_when_installed() -> None:
    assert find_pg_bindir() is not None
    assert servers.find_redis_server() is not None
    assert ensure_binaries(install=False) is None  # nothing missing: no error, nothing installed


def test_ensure_binaries_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "find_pg_bindir", lambda: None)
    monkeypatch.setattr(servers, "find_redis_server", lambda: None)
    with pytest.raises(RuntimeError, match="apt-get install -y postgresql redis-server"):
        ensure_binaries(install=False)
    # Only the requested server is checked.
    with pytest.raises(RuntimeError, match="Missing redis-server") as excinfo:
        ensure_binaries(install=False, postgres=False)
    assert "postgresql" not in str(excinfo.value)


def test_ensure_binaries_checks_wrk_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = servers.shutil.which
    monkeypatch.setattr(servers.shutil, "which", lambda name: None if name == "wrk" else real_which(name))
    ensure_binaries(install=False)  # the servers are there; wrk is not asked for
    with pytest.raises(RuntimeError, match="apt-get install -y wrk"):
        ensure_binaries(install=False, wrk=True)


# --------------------------------------------------------------------------- docker probe


def test_docker_available_false_without_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/missing.sock")
    started = time.monotonic()
    assert docker_available(timeout=1) is False
    assert time.monotonic() - started < 2


def _fake_docker(path: Path, reply: bytes) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                request = conn.recv(4096)
                assert request.startswith(b"GET /_ping ")
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK", True),
        (b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n", False),
    ],
)
def test_docker_available_pings_engine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, reply: bytes, expected: bool
) -> None:
    sock_path = tmp_path / "docker.sock"
    thread = _fake_docker(sock_path, reply)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock_path}")
    assert docker_available(timeout=2) is expected
    thread.join(2)


# --------------------------------------------------------------------------- PostgreSQL


async def test_local_postgres_lifecycle(server_dir: Path) -> None:
    pg = LocalPostgres(server_dir / "pg")
    try:
        pg.start()
        port = pg.port
        assert pg.is_running()
        assert pg.url == f"postgresql://postgres@127.0.0.1:{port}/postgres"
        assert "PostgreSQL" in str(await _pg_fetch(pg.url, "select version()"))
        assert await _pg_fetch(pg.url, "show fsync") == "off"
        assert await _pg_fetch(pg.url, "show max_connections") == "300"
        assert await _pg_fetch(pg.url, "select rolsuper from pg_roles where rolname = current_user")
        await _pg_fetch(pg.url, "create table survives_restart (id int)")

        # A second start(), on this or a fresh instance for the same dir, reuses the cluster.
        pid = _postmaster_pid(pg)
        pg.start()
        other = LocalPostgres(server_dir / "pg")
        assert other.port == port
        other.start()
        assert _postmaster_pid(other) == pid

        # The fixture wrapper's outage() stops it for real and brings it back on the same port.
        wrapper = PostgresServer(pg.url, source="local", local=pg)
        assert wrapper.restartable
        with wrapper.outage():
            assert not pg.is_running()
            assert not other.is_running()
            assert _refuses("127.0.0.1", port)
            assert _port_bindable(port)
        assert pg.port == port
        assert pg.is_running()
        assert _postmaster_pid(pg) != pid
        assert await _pg_fetch(pg.url, "select count(*) from survives_restart") == 0

        pg.stop()
        assert not pg.is_running()
        assert _port_bindable(port)
        pg.stop()  # stopping a stopped cluster is a no-op
    finally:
        pg.stop("immediate")


def test_local_postgres_taken_fixed_port_fails_before_initdb(server_dir: Path, busy_port: int) -> None:
    pg = LocalPostgres(server_dir / "pg", port=busy_port)
    with pytest.raises(RuntimeError, match=f"Port {busy_port} .* already in use"):
        pg.start()
    assert not (server_dir / "pg").exists()


def test_local_postgres_refuses_foreign_directory(server_dir: Path) -> None:
    data = server_dir / "not-a-cluster"
    data.mkdir()
    (data / "precious.txt").write_text("keep me")
    with pytest.raises(RuntimeError, match="neither empty nor a PostgreSQL data directory"):
        LocalPostgres(data).start()
    assert (data / "precious.txt").read_text() == "keep me"


def test_local_postgres_validates_arguments(server_dir: Path) -> None:
    with pytest.raises(ValueError, match="port"):
        LocalPostgres(server_dir / "pg", port=70000)
    pg = LocalPostgres(server_dir / "pg")
    with pytest.raises(RuntimeError, match="no port yet"):
        _ = pg.port
    with pytest.raises(ValueError, match="mode"):
        pg.stop("gentle")


async def test_an_existing_cluster_restarted_with_the_defaults_replicates_logically(server_dir: Path) -> None:
    # A cluster made before the logical-replication defaults: wal_level=replica, as PostgreSQL's own default.
    source = LocalPostgres(server_dir / "source", extra_settings={"wal_level": "replica", "work_mem": "8MB"})
    target = LocalPostgres(server_dir / "target")
    try:
        source.start()
        assert (await _pg_fetch(source.url, "show wal_level"), await _pg_fetch(source.url, "show work_mem")) == (
            "replica",
            "8MB",
        )
        await _pg_fetch(source.url, "create table moved (id int primary key, body text)")
        await _pg_fetch(source.url, "insert into moved values (1, 'before the restart')")
        source.stop()

        source = LocalPostgres(server_dir / "source")  # the same data directory, today's defaults
        source.start()
        target.start()
        for pg in (source, target):
            settings = {
                name: await _pg_fetch(pg.url, f"show {name}")
                for name in (
                    "wal_level",
                    "max_replication_slots",
                    "max_wal_senders",
                    "max_logical_replication_workers",
                    "max_worker_processes",
                    "max_sync_workers_per_subscription",
                )
            }
            assert settings == {
                "wal_level": "logical",
                "max_replication_slots": "32",
                "max_wal_senders": "32",
                "max_logical_replication_workers": "16",
                "max_worker_processes": "24",
                "max_sync_workers_per_subscription": "2",
            }
        assert await _pg_fetch(source.url, "show work_mem") == "4MB"  # extra settings last only for their instance

        # What a move does: publish on the source, subscribe on the target (initial copy, then changes).
        await _pg_fetch(source.url, "create publication moving for table moved")
        await _pg_fetch(target.url, "create table moved (id int primary key, body text)")
        conninfo = f"host=127.0.0.1 port={source.port} user=postgres dbname=postgres"
        await _pg_fetch(target.url, f"create subscription moving connection '{conninfo}' publication moving")
        await _pg_fetch(source.url, "insert into moved values (2, 'after the restart')")
        deadline = time.monotonic() + 30
        while await _pg_fetch(target.url, "select count(*) from moved") != 2:
            assert time.monotonic() < deadline, "the subscription did not catch up"
            await asyncio.sleep(0.1)
        await _pg_fetch(target.url, "drop subscription moving")  # drops its slot on the source too
        assert await _pg_fetch(source.url, "select count(*) from pg_replication_slots") == 0
    finally:
        target.stop("immediate")
        source.stop("immediate")


def test_extra_settings_cannot_move_the_server_off_its_address_or_port(server_dir: Path) -> None:
    pg = LocalPostgres(server_dir / "pg", extra_settings={"listen_addresses": "*", "port": "1", "work_mem": "8MB"})
    options = pg._server_options(54321)
    assert "-c listen_addresses=127.0.0.1" in options
    assert "-c port=54321" in options
    assert "-c work_mem=8MB" in options
    assert "-c wal_level=logical" in options


# --------------------------------------------------------------------------- Redis


def test_local_redis_lifecycle(server_dir: Path) -> None:
    redis = LocalRedis(server_dir / "redis")
    try:
        redis.start()
        port = redis.port
        assert redis.url == f"redis://127.0.0.1:{port}/0"
        assert redis.is_running()
        assert _redis("127.0.0.1", port, "PING") == b"+PONG\r\n"
        assert _redis("127.0.0.1", port, "SET", "k", "v") == b"+OK\r\n"
        assert _redis("127.0.0.1", port, "CONFIG", "GET", "bind").count(b"127.0.0.1") == 1

        # Reuse from this and from a fresh instance for the same dir.
        pid = _redis_pid(redis)
        redis.start()
        other = LocalRedis(server_dir / "redis")
        assert other.port == port
        other.start()
        assert _redis_pid(other) == pid

        # kill() is a crash: nothing persisted, start() returns on the same port.
        wrapper = RedisServer(redis.url, source="local", local=redis)
        with wrapper.outage(kill=True):
            assert not redis.is_running()
            assert not other.is_running()
            assert _refuses("127.0.0.1", port)
        assert redis.port == port
        assert redis.is_running()
        assert _redis("127.0.0.1", port, "GET", "k") == b"$-1\r\n"

        redis.stop()
        assert not redis.is_running()
        assert _port_bindable(port)
        redis.stop()  # stopping a stopped server is a no-op
    finally:
        redis.kill()


def test_local_redis_taken_fixed_port_fails(server_dir: Path, busy_port: int) -> None:
    with pytest.raises(RuntimeError, match=f"Port {busy_port} .* already in use"):
        LocalRedis(server_dir / "redis", port=busy_port).start()


# --------------------------------------------------------------------------- fixtures


def test_normalise_pg_url() -> None:
    assert normalise_pg_url("postgres://u:p@h:1/d") == "postgresql://u:p@h:1/d"
    assert normalise_pg_url("postgresql+asyncpg://u@h:1/d") == "postgresql://u@h:1/d"
    assert normalise_pg_url("postgresql://u@h:1/d") == "postgresql://u@h:1/d"


def test_foreign_servers_are_not_restartable() -> None:
    pg = PostgresServer("postgresql://u@db:5432/d", source="env")
    redis = RedisServer("redis://cache:6379/0", source="testcontainers")
    assert not pg.restartable
    assert not redis.restartable
    with pytest.raises(pytest.fail.Exception, match="TEST_DATABASE_URL"):
        pg.restart()
    with pytest.raises(pytest.fail.Exception, match="TEST_REDIS_URL"):
        redis.kill()


async def test_pg_url_fixture_is_a_superuser(pg_server: PostgresServer, pg_url: str) -> None:
    assert pg_url == pg_server.url
    assert pg_url.startswith("postgresql://")
    assert pg_server.restartable == (pg_server.source == "local")
    assert await _pg_fetch(pg_url, "select rolsuper from pg_roles where rolname = current_user")


def test_redis_url_fixture_answers(redis_server: RedisServer, redis_url: str) -> None:
    assert redis_url == redis_server.url
    assert redis_server.restartable == (redis_server.source == "local")
    parts = urlsplit(redis_url)
    assert parts.scheme == "redis"
    assert parts.hostname is not None
    assert parts.port is not None
    assert _redis(parts.hostname, parts.port, "PING") == b"+PONG\r\n"
