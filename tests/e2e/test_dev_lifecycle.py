"""``make dev`` as a new user meets it beyond the quick start: a second one while one runs, ``make stop`` on
non-default ports, ``.run/dev.env`` holding the values in force, the banner only once the example app answers,
and ``make tenantctl`` against the running platform, exactly as printed."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from support.dev_platform import (
    START_TIMEOUT,
    DevPlatform,
    DevProcess,
    accepts,
    alive,
    assert_all_gone,
    dev_command,
    dev_platform,
    read_banner,
)
from support.platform import ROOT, free_port

pytestmark = pytest.mark.e2e


@pytest.fixture
def platform() -> Iterator[DevPlatform]:
    with dev_platform("devlife") as made:
        yield made


def _pids(platform: DevPlatform) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in (platform.run_dir / "pids").glob("*.pid")}


def test_a_second_make_dev_refuses_and_leaves_the_first_untouched_then_plain_stop_ends_all(
    platform: DevPlatform,
) -> None:
    exported_admin = "adm_exported_" + "x" * 24
    dev = DevProcess(platform, ADMIN_TOKEN=exported_admin)
    try:
        token, _ = read_banner(dev)
        assert token == exported_admin
        # The banner came only once the example app answers: a tenant's first request through the gateway is 200.
        service = f"http://127.0.0.1:{platform.service_port}"
        headers = {"Authorization": f"Bearer {token}"}
        created = httpx.post(f"{service}/admin/tenants", json={"slug": "first", "name": "First"}, headers=headers)
        assert created.status_code == 201, created.text
        key = created.json()["api_key"]["key"]
        gateway = f"http://127.0.0.1:{platform.gateway_port}"
        whoami = httpx.get(f"{gateway}/whoami", headers={"X-API-Key": key, "Host": "first.localhost"}, timeout=30)
        assert whoami.status_code == 200, whoami.text

        # dev.env records the values in force: the exported token, the ports and URLs it really used.
        recorded = dict(
            line.split("=", 1) for line in (platform.run_dir / "dev.env").read_text().splitlines() if "=" in line
        )
        assert recorded["ADMIN_TOKEN"] == exported_admin
        assert recorded["GATEWAY_PORT"] == str(platform.gateway_port)
        assert recorded["REDIS_URL"].endswith(f":{platform.redis_port}/0")

        # A second `make dev` on the same run directory refuses at once and changes nothing.
        before = _pids(platform)
        second = dev_command(platform, "up")
        assert second.returncode != 0
        assert "already running" in second.stderr + second.stdout
        assert "Traceback" not in second.stderr
        assert _pids(platform) == before
        assert all(alive(pid) for pid in before.values())
        assert dev.proc.poll() is None
        assert httpx.get(f"{gateway}/whoami", headers={"X-API-Key": key, "Host": "first.localhost"}).status_code == 200

        # `make tenantctl`, pasted as the banner printed it, reaches this platform.
        printed = dev.read_until(r'^\s*(make tenantctl ARGS="tenants list")\s*$', 10)
        listed = subprocess.run(
            ["bash", "-c", printed.group(1)],
            env=platform.env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert "first" in listed.stdout

        # Plain `make stop`, without the DEV_*_PORT variables `make dev` ran with, still stops everything.
        stopped = dev_command(platform, "stop", DEV_PG_PORT="", DEV_REDIS_PORT="")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        dev.wait(60)
        assert_all_gone(platform)
        assert not accepts(platform.redis_port)
    finally:
        dev.kill()
        dev_command(platform, "stop")


def test_make_tenantctl_before_make_dev_says_what_to_do(platform: DevPlatform) -> None:
    result = dev_command(platform, "tenantctl", "tenants", "list")
    assert result.returncode != 0
    assert "run `make dev` first" in result.stderr
    assert "Traceback" not in result.stderr


def test_stop_with_nothing_running_is_quiet(platform: DevPlatform) -> None:
    started = time.monotonic()
    result = dev_command(platform, "stop")
    assert result.returncode == 0, result.stderr
    assert "stopped" in result.stdout
    assert time.monotonic() - started < START_TIMEOUT


def _show(port: int, setting: str) -> str:
    async def fetch() -> str:
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", timeout=10)
        try:
            return str(await conn.fetchval(f"SHOW {setting}"))
        finally:
            await conn.close()

    return asyncio.run(fetch())


def test_dev_servers_2_runs_a_second_postgres_for_the_tenant_service_and_stop_ends_it(platform: DevPlatform) -> None:
    second_port = free_port()
    second_url = f"postgresql://postgres@127.0.0.1:{second_port}/postgres"
    dev = DevProcess(platform, DEV_SERVERS="2", DEV_PG2_PORT=str(second_port))
    try:
        read_banner(dev)
        summary = next(line for line in dev.lines if line.strip().startswith("database servers"))
        assert f"default 127.0.0.1:{platform.pg_port}, second 127.0.0.1:{second_port}" in summary
        # Both throw-away servers can take part in online moves.
        assert _show(second_port, "wal_level") == _show(platform.pg_port, "wal_level") == "logical"
        # The tenant-service is told to register it as `second` (and dev.env records it for `make tenantctl`).
        service_pid = _pids(platform)["tenant-service"]
        environ = Path(f"/proc/{service_pid}/environ").read_bytes().split(b"\0")
        assert f"EXTRA_DATABASE_SERVERS=second={second_url}".encode() in environ
        assert f"EXTRA_DATABASE_SERVERS=second={second_url}" in (platform.run_dir / "dev.env").read_text()

        stopped = dev_command(platform, "stop", DEV_PG2_PORT="")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        dev.wait(60)
        assert_all_gone(platform)
        assert not accepts(second_port)

        # It holds data now (tenants may live on it): the next `make dev` starts it too, without DEV_SERVERS=2.
        again = DevProcess(platform, DEV_PG2_PORT=str(second_port))
        try:
            read_banner(again)
            assert accepts(second_port)
        finally:
            dev_command(platform, "stop")
            again.wait(60)
        assert not accepts(second_port)
    finally:
        dev.kill()
        dev_command(platform, "stop")
