"""Real processes around the gateway for end-to-end tests: the gateway itself and an echo upstream."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import httpx

from support.platform import ROOT, Installation, free_port

ECHO = Path(__file__).with_name("echo_upstream.py")


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    """Poll ``url`` until it answers 200, failing early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited early:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not become ready:\n{log.read_text(errors='replace')[-3000:]}")


class ManagedProcess:
    """A server started as a real child process on its own port, ready once ``ready_path`` answers 200."""

    ready_path = "/healthz"

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None, port: int | None = None):
        self.port = port or free_port()
        self.args = args
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_path: str | None = None) -> Self:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *self.args], env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                start_new_session=True,
            )  # fmt: skip
        wait_http(self.url + (ready_path or self.ready_path), self.proc, self.log_path)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


class EchoUpstream(ManagedProcess):
    """The echo upstream; ``-P`` keeps tests/support (which has a platform.py) off its import path."""

    ready_path = "/ready"

    def __init__(self, log_path: Path) -> None:
        port = free_port()
        super().__init__(["-P", str(ECHO), str(port)], log_path, port=port)


class GatewayProcess(ManagedProcess):
    """``python -m gateway``."""

    ready_path = "/_gateway/readyz"

    def __init__(self, installation: Installation, tenant_service_url: str, upstream_url: str, log_path: Path,
                 signing_keys: str, **env: str) -> None:  # fmt: skip
        port = free_port()
        super().__init__(
            ["-m", "gateway"],
            log_path,
            {
                "GATEWAY_PORT": str(port),
                "TENANT_SERVICE_URL": tenant_service_url,
                "GATEWAY_SERVICE_TOKEN": installation.gateway_token,
                "REDIS_URL": installation.redis_url,
                "API_KEY_HASH_SECRET": installation.api_key_hash_secret,
                "JWT_SIGNING_KEYS": signing_keys,
                "DEFAULT_UPSTREAM": upstream_url,
                "BASE_DOMAIN": "localhost",
                "DIRECTORY_REFRESH_SECONDS": "0.5",
                "LOG_FORMAT": "json",
                **env,
            },
            port=port,
        )


class NotesProcess(ManagedProcess):
    """The example notes app, ``python -m notes_app``."""

    def __init__(
        self, installation: Installation, tenant_service_url: str, log_path: Path, port: int | None = None, **env: str
    ) -> None:
        port = port or free_port()
        super().__init__(
            ["-m", "notes_app"],
            log_path,
            {
                "APP_PORT": str(port),
                "TENANT_SERVICE_URL": tenant_service_url,
                "SERVICE_TOKEN": installation.service_token,
                "REDIS_URL": installation.redis_url,
                "LOG_FORMAT": "json",
                **env,
            },
            port=port,
        )

    def engines(self) -> int:
        """How many tenant engines the app holds (its /healthz reports the count)."""
        return int(httpx.get(self.url + "/healthz", timeout=5).json()["engines"])
