"""The gateway when Redis misbehaves, and behind (or not behind) a trusted proxy."""

from __future__ import annotations

import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.gateway_support import EchoUpstream, GatewayProcess
from support.platform import Installation, ServiceProcess, wait_until
from tenantry_common.jwt_keys import generate_signing_key
from tenantry_devtools.servers import LocalRedis


@pytest.fixture(scope="module")
def backend(installation: Installation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    folder = tmp_path_factory.mktemp("faults")
    service = ServiceProcess(installation, folder / "tenant-service.log").start()
    echo = EchoUpstream(folder / "echo.log").start()
    admin = service.client()
    yield service, echo, admin, "k1:" + generate_signing_key()
    admin.close()
    echo.stop()
    service.stop()


def _tenant(admin: httpx.Client, slug: str) -> dict:
    response = admin.post("/admin/tenants", json={"slug": slug, "name": slug})
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A 'Redis' that accepts connections and never answers: every call can only time out."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1024)
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    server.close()


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_unresponsive_redis_applies_the_failure_mode_within_the_timeout(
    backend: tuple, installation: Installation, blackhole: str, tmp_path: Path, mode: str
) -> None:
    service, echo, admin, keys = backend
    tenant = _tenant(admin, f"gw-fault-{mode}")
    gateway = GatewayProcess(
        installation, service.url, echo.url, tmp_path / "gw.log", keys,
        REDIS_URL=blackhole, REDIS_TIMEOUT="0.2", QUOTA_FAILURE_MODE=mode,
    ).start(ready_path="/_gateway/healthz")  # fmt: skip
    try:
        key = {"X-API-Key": tenant["api_key"]["key"]}
        wait_until(lambda: httpx.get(gateway.url + "/x", headers=key).status_code != 401, timeout=10)
        assert httpx.get(gateway.url + "/_gateway/readyz").status_code == 503
        for _ in range(10):
            started = time.monotonic()
            response = httpx.get(gateway.url + "/x", headers=key, timeout=10)
            # The Redis timeout plus slack for a loaded CI machine; a hang would last a TCP timeout (many seconds).
            assert time.monotonic() - started < 0.2 + 1.5
            if mode == "open":
                assert response.status_code == 200
                assert "ratelimit-limit" not in response.headers
            else:
                assert response.status_code == 503
                assert response.json()["code"] == "quota_unavailable"
                assert response.headers["retry-after"]
    finally:
        gateway.stop()


def test_redis_killed_mid_run_fails_open_then_recovers(
    backend: tuple, installation: Installation, tmp_path: Path
) -> None:
    service, echo, admin, keys = backend
    folder = Path(tempfile.mkdtemp(prefix="tenantry-redis-", dir="/tmp"))
    redis = LocalRedis(folder / "data")
    redis.start()
    tenant = _tenant(admin, "gw-fault-kill")
    gateway = GatewayProcess(
        installation, service.url, echo.url, tmp_path / "gw.log", keys, REDIS_URL=redis.url, REDIS_TIMEOUT="0.2"
    ).start()
    try:
        key = {"X-API-Key": tenant["api_key"]["key"]}
        wait_until(lambda: httpx.get(gateway.url + "/x", headers=key).status_code == 200, timeout=10)
        assert "ratelimit-limit" in httpx.get(gateway.url + "/x", headers=key).headers
        redis.kill()
        for _ in range(10):
            started = time.monotonic()
            response = httpx.get(gateway.url + "/x", headers=key, timeout=10)
            assert response.status_code == 200
            assert time.monotonic() - started < 0.2 + 1.5
        redis.start()
        wait_until(lambda: "ratelimit-limit" in httpx.get(gateway.url + "/x", headers=key).headers, timeout=10)
    finally:
        gateway.stop()
        redis.stop()


def test_forwarded_headers_are_believed_only_from_trusted_proxies(
    backend: tuple, installation: Installation, tmp_path: Path
) -> None:
    service, echo, admin, keys = backend
    tenant = _tenant(admin, "gw-proxy")
    other = _tenant(admin, "gw-proxy-other")
    key = {"X-API-Key": tenant["api_key"]["key"]}
    untrusted = GatewayProcess(installation, service.url, echo.url, tmp_path / "a.log", keys).start()
    trusted = GatewayProcess(
        installation, service.url, echo.url, tmp_path / "b.log", keys, TRUSTED_PROXIES="127.0.0.1/32"
    ).start()
    try:
        headers = {**key, "X-Forwarded-Host": "gw-proxy-other.localhost", "X-Forwarded-For": "203.0.113.7"}
        wait_until(lambda: httpx.get(untrusted.url + "/x", headers=key).status_code == 200, timeout=10)
        wait_until(lambda: httpx.get(trusted.url + "/x", headers=key).status_code == 200, timeout=10)
        # Untrusted peer: X-Forwarded-Host is ignored, so no conflict with the credential's tenant.
        response = httpx.get(untrusted.url + "/x", headers=headers)
        assert response.status_code == 200
        seen = dict(response.json()["headers"])
        assert seen["x-forwarded-for"] == "127.0.0.1"
        # Trusted proxy: X-Forwarded-Host names the other tenant, so this key is refused there ...
        assert httpx.get(trusted.url + "/x", headers=headers).status_code == 403
        # ... and with the right key it routes there, with the client address appended.
        other_key = {"X-API-Key": other["api_key"]["key"]}
        response = httpx.get(trusted.url + "/x", headers={**headers, **other_key})
        assert response.status_code == 200
        seen = dict(response.json()["headers"])
        assert seen["x-tenant-slug"] == "gw-proxy-other"
        assert seen["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
        assert seen["x-forwarded-host"] == "gw-proxy-other.localhost"
    finally:
        untrusted.stop()
        trusted.stop()
