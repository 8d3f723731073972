"""``make dev`` (``python -m tenantry_devtools.dev``) run as a developer would, for the tests: a private
``TENANTRY_RUN_DIR`` and free ports, so it never meets the suite's servers or a developer's ``.run/``."""

from __future__ import annotations

import contextlib
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

from support.platform import ROOT, free_port

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

    def __init__(self, platform: DevPlatform, **env: str) -> None:
        self.platform = platform
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tenantry_devtools.dev", "up"],
            env={**platform.env(), **env},
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


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def live_processes_mentioning(needle: str) -> list[str]:
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


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def assert_all_gone(platform: DevPlatform) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        busy = [p for p in platform.ports if accepts(p)]
        left = live_processes_mentioning(str(platform.run_dir))
        if not busy and not left:
            return
        time.sleep(0.2)
    raise AssertionError(f"still listening: {busy}; processes left: {left}")


def run_printed(command: str, key: str = "") -> subprocess.CompletedProcess[str]:
    """A command exactly as ``make dev`` printed it, pasted into a shell (with the real key for ``tk_...``)."""
    pasted = command.replace("tk_...", key) if key else command
    return subprocess.run(["bash", "-c", pasted], capture_output=True, text=True, timeout=60, check=False)


def read_banner(dev: DevProcess) -> tuple[str, str]:
    """Wait for the banner; return the admin token and the printed curl command (continuations joined)."""
    token = dev.read_until(r"^\s*admin token\s+(\S+)\s*$", START_TIMEOUT).group(1)
    dev.read_until(r"^\s*curl -s -X POST ", 30)
    start = len(dev.lines) - 1
    dev.read_until(r"""^\s*-d '\{"slug": "acme", "name": "Acme Corp"\}'\s*$""", 10)
    command = " ".join(line.strip().removesuffix("\\").strip() for line in dev.lines[start:])
    return token, command


def dev_command(platform: DevPlatform, command: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m tenantry_devtools.dev <command>`` for ``platform`` (``stop``, ``tenantctl``, a second ``up``)."""
    return subprocess.run(
        [sys.executable, "-m", "tenantry_devtools.dev", command, *args],
        env={**platform.env(), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@contextlib.contextmanager
def dev_platform(prefix: str) -> Iterator[DevPlatform]:
    """A ``make dev`` setup in a run directory of its own, removed afterwards.

    Under /tmp and 0755: when the suite runs as root, Postgres runs as the postgres user and must reach it.
    """
    run_dir = Path(tempfile.mkdtemp(prefix=f"tenantry-{prefix}-", dir="/tmp"))
    run_dir.chmod(0o755)
    try:
        yield DevPlatform(run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
