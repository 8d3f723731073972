"""The README's quick start: ``make dev`` (``python -m tenantry_devtools.dev up``) from nothing to a working curl.

The platform runs as a developer would run it, with its own throw-away Postgres and Redis under a private
``TENANTRY_RUN_DIR`` and on free ports, so it never meets the suite's servers or a developer's ``.run/``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from support.dev_platform import (
    START_TIMEOUT,
    DevPlatform,
    DevProcess,
    alive,
    assert_all_gone,
    dev_command,
    dev_platform,
    read_banner,
    run_printed,
)

pytestmark = pytest.mark.e2e


def _assert_separate_scoped_service_tokens(dev: DevProcess, platform: DevPlatform, tenant_id: str) -> None:
    """The printed service token (the notes app's) vends but cannot read the directory; the gateway's the reverse."""
    printed = dev.output()
    app_token = re.search(r"^\s*service token\s+(\S+)", printed, re.MULTILINE)
    gateway_token = re.search(r"^\s*gateway token\s+(\S+)", printed, re.MULTILINE)
    assert app_token, printed
    assert gateway_token, printed
    assert app_token.group(1) != gateway_token.group(1)
    saved = (platform.run_dir / "dev.env").read_text()
    assert f"SERVICE_TOKEN={app_token.group(1)}\n" in saved
    assert f"GATEWAY_SERVICE_TOKEN={gateway_token.group(1)}\n" in saved
    vend, directory = f"/internal/v1/tenants/{tenant_id}/database", "/internal/v1/directory"
    with httpx.Client(base_url=f"http://127.0.0.1:{platform.service_port}", timeout=30) as client:
        app = {"Authorization": f"Bearer {app_token.group(1)}"}
        gateway = {"Authorization": f"Bearer {gateway_token.group(1)}"}
        assert client.get(vend, headers=app).status_code == 200
        assert client.get(directory, headers=app).json()["code"] == "insufficient_scope"
        assert client.get(directory, headers=gateway).status_code == 200
        assert client.get(vend, headers=gateway).json()["code"] == "insufficient_scope"


@pytest.fixture
def platform() -> Iterator[DevPlatform]:
    with dev_platform("quickstart") as made:
        yield made


def test_quick_start_runs_the_printed_curl_then_stops_and_resumes(platform: DevPlatform) -> None:
    dev = DevProcess(platform)
    try:
        token, command = read_banner(dev)
        assert f"http://127.0.0.1:{platform.service_port}/admin/tenants" in command
        assert f"Bearer {token}" in command

        # The printed command, exactly as a developer pastes it into a shell.
        curl = run_printed(command + " -w '\\n%{http_code}'")
        body, _, status = curl.stdout.rpartition("\n")
        assert status == "201", curl.stdout + curl.stderr
        tenant = json.loads(body)
        assert tenant["slug"] == "acme"
        assert tenant["status"] == "active"
        assert tenant["api_key"]["key"].startswith("tk_")
        assert tenant["database"]["name"]

        # The second printed command: exchange the new key for an access token at the gateway.
        exchange_line = dev.read_until(r"^\s*(curl -s -X POST \S+/_gateway/token .*)$", 10).group(1)
        assert f":{platform.gateway_port}/" in exchange_line
        deadline = time.monotonic() + 3  # a new tenant reaches the gateway within 2 s
        while True:
            exchange = run_printed(exchange_line, tenant["api_key"]["key"])
            if '"token_type":"Bearer"' in exchange.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert json.loads(exchange.stdout)["token_type"] == "Bearer", exchange.stdout + exchange.stderr

        # The printed notes example, through the gateway at acme.localhost, into acme's own database.
        key = tenant["api_key"]["key"]
        dev.read_until(r"^\s*curl -s -X POST http://acme\.\S+/notes ", 10)
        start = len(dev.lines) - 1
        dev.read_until(r"""-d '\{"body": "hello"\}'\s*$""", 10)
        post = " ".join(line.strip().removesuffix("\\").strip() for line in dev.lines[start:])
        assert f"acme.localhost:{platform.gateway_port}/notes" in post
        created = run_printed(post, key)
        assert json.loads(created.stdout)["body"] == "hello", created.stdout + created.stderr
        listing = dev.read_until(r"^\s*(curl -s http://acme\.\S+/notes .*)$", 10).group(1)
        listed = run_printed(listing, key)
        assert [n["body"] for n in json.loads(listed.stdout)["items"]] == ["hello"]
        whoami_line = dev.read_until(r"^\s*(curl -s http://acme\.\S+/whoami .*)$", 10).group(1)
        whoami = run_printed(whoami_line, key)
        assert json.loads(whoami.stdout)["database"] == tenant["database"]["name"]

        # The gateway and the notes app hold separate service tokens, each with only the scope it uses.
        _assert_separate_scoped_service_tokens(dev, platform, tenant["id"])

        service_pid = int((platform.run_dir / "pids" / "tenant-service.pid").read_text())
        os.kill(dev.proc.pid, signal.SIGTERM)
        assert dev.wait(60) == 0, dev.output()
        dev.drain()
        assert "[dev] stopped" in dev.output()
        assert_all_gone(platform)
        assert not alive(service_pid)
    finally:
        dev.kill()
        dev_command(platform, "stop")

    # Again, on the same run directory: the same secrets, the same data.
    dev = DevProcess(platform)
    try:
        second_token, _ = read_banner(dev)
        assert second_token == token
        with httpx.Client(
            base_url=f"http://127.0.0.1:{platform.service_port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        ) as client:
            again = client.get("/admin/tenants/acme")
            assert again.status_code == 200, again.text
            assert again.json()["id"] == tenant["id"]
            assert again.json()["status"] == "active"
            # And it still works: a second tenant provisions on the resumed platform.
            beta = client.post("/admin/tenants", json={"slug": "beta", "name": "Beta"})
            assert beta.status_code == 201, beta.text
            assert beta.json()["status"] == "active"

        # `make stop` from another shell ends everything, the foreground `make dev` included.
        stopped = dev_command(platform, "stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        dev.wait(60)
        assert_all_gone(platform)
    finally:
        dev.kill()
        dev_command(platform, "stop")

    # Interrupted half-way through start-up, it still stops what it had started.
    dev = DevProcess(platform)
    try:
        dev.read_until(r"^\[dev\] Redis on ", START_TIMEOUT)
        os.kill(dev.proc.pid, signal.SIGTERM)
        assert dev.wait(60) == 0, dev.output()
        dev.drain()
        assert "Traceback" not in dev.output()
        assert_all_gone(platform)
    finally:
        dev.kill()
        dev_command(platform, "stop")
