"""Real processes around the gateway for end-to-end tests: the gateway itself and an echo upstream."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

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


class EchoUpstream:
    """The echo upstream as a real process."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EchoUpstream:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-P", str(ECHO), str(self.port)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
            )
        wait_http(self.url + "/ready", self.proc, self.log_path)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class GatewayProcess:
    """``python -m gateway`` as a real process."""

    def __init__(self, installation: Installation, tenant_service_url: str, upstream_url: str, log_path: Path,
                 signing_keys: str, **env: str) -> None:  # fmt: skip
        self.port = free_port()
        self.log_path = log_path
        self.env = {
            **os.environ,
            "GATEWAY_PORT": str(self.port),
            "TENANT_SERVICE_URL": tenant_service_url,
            "GATEWAY_SERVICE_TOKEN": installation.service_token,
            "REDIS_URL": installation.redis_url,
            "API_KEY_HASH_SECRET": installation.api_key_hash_secret,
            "JWT_SIGNING_KEYS": signing_keys,
            "DEFAULT_UPSTREAM": upstream_url,
            "BASE_DOMAIN": "localhost",
            "DIRECTORY_REFRESH_SECONDS": "0.5",
            "LOG_FORMAT": "json",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_path: str = "/_gateway/readyz") -> GatewayProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway"], env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                start_new_session=True,
            )  # fmt: skip
        wait_http(self.url + ready_path, self.proc, self.log_path)
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


class NotesProcess:
    """The example notes app (``python -m notes_app``) as a real process."""

    def __init__(self, installation: Installation, tenant_service_url: str, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.env = {
            **os.environ,
            "APP_PORT": str(self.port),
            "TENANT_SERVICE_URL": tenant_service_url,
            "SERVICE_TOKEN": installation.service_token,
            "REDIS_URL": installation.redis_url,
            "LOG_FORMAT": "json",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> NotesProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "notes_app"], env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                start_new_session=True,
            )  # fmt: skip
        wait_http(self.url + "/healthz", self.proc, self.log_path)
        return self

    def engines(self) -> int:
        return int(httpx.get(self.url + "/healthz", timeout=5).json()["engines"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
