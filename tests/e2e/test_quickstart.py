"""The README's quick start: ``make dev`` (``python -m tenantry_devtools.dev up``) from nothing to a working curl.

The platform runs as a developer would run it, with its own throw-away Postgres and Redis under a private
``TENANTRY_RUN_DIR`` and on free ports, so it never meets the suite's servers or a developer's ``.run/``.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from support.platform import ROOT, free_port

pytestmark = pytest.mark.e2e

#: What `make dev` must work without: it starts its own servers and generates its own secrets.
NOT_INHERITED = (
    "DATABASE_URL", "REDIS_URL", "TENANT_DATABASE_URL", "ADMIN_TOKEN", "ADMIN_TOKENS", "SERVICE_TOKEN",
    "SERVICE_TOKENS", "GATEWAY_SERVICE_TOKEN", "SERVICE_TOKEN_SCOPES", "ENCRYPTION_KEYS", "API_KEY_HASH_SECRET",
    "TEMPLATE_DATABASE", "TENANT_DB_PREFIX", "TENANT_MIGRATIONS_DIR", "GATEWAY_PORT", "APP_PORT",
)  # fmt: skip
START_TIMEOUT = 180  # the first start runs initdb


@dataclass
class DevPlatform:
    """One ``make dev`` setup: its run directory and ports."""

    run_dir: Path
    pg_port: int = field(default_factory=free_port)
    redis_port: int = field(default_factory=free_port)
    service_port: int = field(default_factory=free_port)
    gateway_port: int = field(default_factory=free_port)
    app_port: int = field(default_factory=free_port)

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.pg_port, self.redis_port, self.service_port, self.gateway_port, self.app_port)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
        env.update(
            TENANTRY_RUN_DIR=str(self.run_dir),
            DEV_PG_PORT=str(self.pg_port),
            DEV_REDIS_PORT=str(self.redis_port),
            TENANT_SERVICE_PORT=str(self.service_port),
            GATEWAY_PORT=str(self.gateway_port),
            APP_PORT=str(self.app_port),
        )
        return env


class DevProcess:
    """``python -m tenantry_devtools.dev up`` running in the foreground, its output read line by line."""

    def __init__(self, platform: DevPlatform) -> None:
        self.platform = platform
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tenantry_devtools.dev", "up"],
            env=platform.env(),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def read_until(self, pattern: str, timeout: float) -> re.Match[str]:
        """Lines up to the first one matching ``pattern``; fails with the output so far."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n{self.output()}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"dev exited ({self.proc.wait()}) before {pattern!r}:\n{self.output()}")
            self.lines.append(line)
            if match := regex.search(line):
                return match

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"dev did not exit within {timeout}s:\n{self.output()}") from None

    def drain(self) -> None:
        while True:
            try:
                line = self._queue.get(timeout=5)
            except queue.Empty:
                return
            if line is None:
                return
            self.lines.append(line)

    def output(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _live_processes_mentioning(needle: str) -> list[str]:
    """Command lines of live (non-zombie) processes whose command line or environment mentions ``needle``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes()
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X") and (needle in cmdline or needle.encode() in environ):
            found.append(f"{proc.name}: {cmdline}")
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _assert_all_gone(platform: DevPlatform) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        busy = [p for p in platform.ports if _accepts(p)]
        left = _live_processes_mentioning(str(platform.run_dir))
        if not busy and not left:
            return
        time.sleep(0.2)
    raise AssertionError(f"still listening: {busy}; processes left: {left}")


def _run_printed(command: str, key: str = "") -> subprocess.CompletedProcess[str]:
    """A command exactly as ``make dev`` printed it, pasted into a shell (with the real key for ``tk_...``)."""
    pasted = command.replace("tk_...", key) if key else command
    return subprocess.run(["bash", "-c", pasted], capture_output=True, text=True, timeout=60, check=False)


def _read_banner(dev: DevProcess) -> tuple[str, str]:
    """Wait for the banner; return the admin token and the printed curl command (continuations joined)."""
    token = dev.read_until(r"^\s*admin token\s+(\S+)\s*$", START_TIMEOUT).group(1)
    dev.read_until(r"^\s*curl -s -X POST ", 30)
    start = len(dev.lines) - 1
    dev.read_until(r"""^\s*-d '\{"slug": "acme", "name": "Acme Corp"\}'\s*$""", 10)
    command = " ".join(line.strip().removesuffix("\\").strip() for line in dev.lines[start:])
    return token, command


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
    # Under /tmp and 0755: when the suite runs as root, Postgres runs as the postgres user and must reach it.
    run_dir = Path(tempfile.mkdtemp(prefix="tenantry-quickstart-", dir="/tmp"))
    run_dir.chmod(0o755)
    yield DevPlatform(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)


def test_quick_start_runs_the_printed_curl_then_stops_and_resumes(platform: DevPlatform) -> None:
    dev = DevProcess(platform)
    try:
        token, command = _read_banner(dev)
        assert f"http://127.0.0.1:{platform.service_port}/admin/tenants" in command
        assert f"Bearer {token}" in command

        # The printed command, exactly as a developer pastes it into a shell.
        curl = _run_printed(command + " -w '\\n%{http_code}'")
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
            exchange = _run_printed(exchange_line, tenant["api_key"]["key"])
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
        created = _run_printed(post, key)
        assert json.loads(created.stdout)["body"] == "hello", created.stdout + created.stderr
        listing = dev.read_until(r"^\s*(curl -s http://acme\.\S+/notes .*)$", 10).group(1)
        listed = _run_printed(listing, key)
        assert [n["body"] for n in json.loads(listed.stdout)["items"]] == ["hello"]
        whoami_line = dev.read_until(r"^\s*(curl -s http://acme\.\S+/whoami .*)$", 10).group(1)
        whoami = _run_printed(whoami_line, key)
        assert json.loads(whoami.stdout)["database"] == tenant["database"]["name"]

        # The gateway and the notes app hold separate service tokens, each with only the scope it uses.
        _assert_separate_scoped_service_tokens(dev, platform, tenant["id"])

        service_pid = int((platform.run_dir / "pids" / "tenant-service.pid").read_text())
        os.kill(dev.proc.pid, signal.SIGTERM)
        assert dev.wait(60) == 0, dev.output()
        dev.drain()
        assert "[dev] stopped" in dev.output()
        _assert_all_gone(platform)
        assert not _alive(service_pid)
    finally:
        dev.kill()
        subprocess.run(
            [sys.executable, "-m", "tenantry_devtools.dev", "stop"],
            env=platform.env(),
            cwd=ROOT,
            capture_output=True,
            timeout=120,
            check=False,
        )

    # Again, on the same run directory: the same secrets, the same data.
    dev = DevProcess(platform)
    try:
        second_token, _ = _read_banner(dev)
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
        stopped = subprocess.run(
            [sys.executable, "-m", "tenantry_devtools.dev", "stop"],
            env=platform.env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        dev.wait(60)
        _assert_all_gone(platform)
    finally:
        dev.kill()
        subprocess.run(
            [sys.executable, "-m", "tenantry_devtools.dev", "stop"],
            env=platform.env(),
            cwd=ROOT,
            capture_output=True,
            timeout=120,
            check=False,
        )

    # Interrupted half-way through start-up, it still stops what it had started.
    dev = DevProcess(platform)
    try:
        dev.read_until(r"^\[dev\] Redis on ", START_TIMEOUT)
        os.kill(dev.proc.pid, signal.SIGTERM)
        assert dev.wait(60) == 0, dev.output()
        dev.drain()
        assert "Traceback" not in dev.output()
        _assert_all_gone(platform)
    finally:
        dev.kill()
        subprocess.run(
            [sys.executable, "-m", "tenantry_devtools.dev", "stop"],
            env=platform.env(),
            cwd=ROOT,
            capture_output=True,
            timeout=120,
            check=False,
        )
