"""The gateway when Redis or the tenant-service misbehaves, and behind (or not behind) a trusted proxy."""

from __future__ import annotations

import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.gateway_support import EchoUpstream, GatewayProcess
from support.platform import Installation, TenantServiceProcess, wait_until
from tenantry_common.jwt_keys import generate_signing_key
from tenantry_common.problems import PROBLEM_MEDIA_TYPE
from tenantry_devtools.servers import LocalRedis


@pytest.fixture(scope="module")
def backend(installation: Installation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    folder = tmp_path_factory.mktemp("faults")
    service = TenantServiceProcess(installation, folder / "tenant-service.log").start()
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
        ready = httpx.get(gateway.url + "/_gateway/readyz")
        assert ready.status_code == 503
        assert ready.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
        assert ready.json()["code"] == "redis_unavailable"
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


#: The staleness bound of the test's gateway, and its sync period (GatewayProcess sets 0.5 s).
MAX_STALENESS = 2.0
REFRESH = 0.5


def test_a_gateway_cut_off_from_the_tenant_service_turns_unready_but_keeps_serving(
    backend: tuple, installation: Installation, tmp_path: Path
) -> None:
    """A gateway whose directory cannot sync says so: ``/_gateway/readyz`` is 503 ``directory_stale`` within
    ``DIRECTORY_MAX_STALENESS_SECONDS`` plus one sync period of the tenant-service stopping, so an orchestrator
    takes it out of rotation; meanwhile it serves known tenants from the last directory it had (an outage of the
    tenant-service alone takes no tenant down); once the tenant-service is back it is ready again."""
    _, echo, _, keys = backend
    service = TenantServiceProcess(
        installation, tmp_path / "tenant-service.log"
    ).start()  # this test's own: it stops it
    gateway = GatewayProcess(
        installation, service.url, echo.url, tmp_path / "gw.log", keys,
        DIRECTORY_MAX_STALENESS_SECONDS=str(MAX_STALENESS), DIRECTORY_REFRESH_SECONDS=str(REFRESH),
    ).start()  # fmt: skip
    try:
        with service.client() as admin:
            tenant = _tenant(admin, "gw-stale")
        key = {"X-API-Key": tenant["api_key"]["key"]}
        wait_until(lambda: httpx.get(gateway.url + "/x", headers=key).status_code == 200, timeout=10)
        ready = httpx.get(gateway.url + "/_gateway/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"]["directory"] == "ok"

        service.stop()
        stopped = time.monotonic()
        wait_until(lambda: httpx.get(gateway.url + "/_gateway/readyz").status_code == 503, timeout=15)
        took = time.monotonic() - stopped
        # The last successful sync was at most one period before the stop; slack for a loaded machine.
        assert MAX_STALENESS - REFRESH - 0.25 <= took <= MAX_STALENESS + REFRESH + 2.0, took
        stale = httpx.get(gateway.url + "/_gateway/readyz")
        assert stale.status_code == 503
        assert stale.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
        problem = stale.json()
        assert problem["code"] == "directory_stale"
        assert problem["checks"]["directory"].startswith("stale")
        assert problem["checks"]["redis"] == "ok"
        assert httpx.get(gateway.url + "/_gateway/healthz").status_code == 200  # alive, only not ready
        # Traffic meanwhile: the last known directory still serves the tenant.
        assert httpx.get(gateway.url + "/x", headers=key).status_code == 200
        assert '"directory_stale"' in gateway.log()

        service.start()
        restarted = time.monotonic()
        wait_until(lambda: httpx.get(gateway.url + "/_gateway/readyz").status_code == 200, timeout=15)
        assert time.monotonic() - restarted <= REFRESH + 5.0
        assert httpx.get(gateway.url + "/x", headers=key).status_code == 200
        metrics = httpx.get(gateway.url + "/_gateway/metrics").text
        age = next(line for line in metrics.splitlines() if line.startswith("tenantry_gateway_directory_age_seconds"))
        assert 0 <= float(age.split()[1]) < MAX_STALENESS, age
    finally:
        gateway.stop()
        service.stop()
