"""The running platforms the end-to-end suites share, each built in one place.

* :class:`GatewayStack` (the ``stack`` fixture of tests/conftest.py, built by :func:`running_stack`): the
  tenant-service, an echo upstream and a gateway as real processes, an admin client, and any further gateways.
  :meth:`GatewayStack.tenant` creates a tenant and waits until the gateways know its key.
* :func:`running_platform`: the tenant-service, a gateway and the notes example app behind it
  (:class:`tenantry_devtools.platform.Platform`); :func:`make_tenant` and :func:`gw` create a tenant there and
  call the app through the gateway.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from support.gateway_support import EchoUpstream, GatewayProcess
from tenantry_devtools.platform import Installation, Platform, Tenant, TenantServiceProcess
from tenantry_devtools.platform_secrets import new_secret
from tenantry_devtools.processes import wait_until

#: An ``X-Tenant-ID`` that names no tenant: with a known key the gateway answers 404, with an unknown one 401.
NO_SUCH_TENANT = "no-such-tenant-ref"


@dataclass
class GatewayStack:
    """tenant-service + echo upstream + gateway, as real processes, and an admin client."""

    installation: Installation
    folder: Path
    service: TenantServiceProcess
    echo: EchoUpstream
    gateway: GatewayProcess
    signing_keys: str
    admin: httpx.Client
    extra: list[GatewayProcess] = field(default_factory=list)
    """Further gateways on the same tenant-service (:meth:`start_gateway`)."""

    def tenant(self, stem: str, *, gateways: list[GatewayProcess] | None = None, **body: Any) -> Tenant:
        """Create a tenant (slug ``h-<stem>-<hex>``) and wait until every gateway in ``gateways`` (default: the
        stack's) knows its key, without sending a request to its upstream."""
        slug = f"h-{stem}-{secrets.token_hex(3)}"
        response = self.admin.post("/admin/tenants", json={"slug": slug, "name": slug, **body})
        assert response.status_code == 201, response.text
        tenant = Tenant.from_created(response.json())
        for gateway in gateways or [self.gateway]:
            wait_known(gateway, tenant.key)
        return tenant

    def start_gateway(self, name: str, upstream: str | None = None, **env: str) -> GatewayProcess:
        """Another gateway on the same tenant-service (stopped with the stack)."""
        gateway = GatewayProcess(
            self.installation, self.service.url, upstream or self.echo.url, self.folder / f"{name}.log",
            self.signing_keys, **{"REDIS_TIMEOUT": "2", **env},
        ).start()  # fmt: skip
        self.extra.append(gateway)
        return gateway

    @property
    def gateway_pid(self) -> int:
        return self.gateway.pid

    @property
    def service_pid(self) -> int:
        return self.service.pid

    def pooled_ports(self) -> tuple[int, ...]:
        """Ports of the gateway's backends: Redis and the echo upstream."""
        redis_port = urlsplit(self.installation.redis_url).port or 6379
        assert self.echo.port is not None
        return (redis_port, self.echo.port)

    def service_backend_ports(self) -> tuple[int, ...]:
        """Ports of the tenant-service's backends: Postgres and Redis."""
        return (urlsplit(self.installation.pg_url).port or 5432, urlsplit(self.installation.redis_url).port or 6379)


def wait_known(gateway: GatewayProcess, key: str, timeout: float = 10.0) -> None:
    """Wait until ``gateway`` knows ``key``: with an X-Tenant-ID naming nobody it then answers 404, not 401."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.get(
            gateway.url + "/_known", headers={"X-API-Key": key, "X-Tenant-ID": NO_SUCH_TENANT}, timeout=5
        )
        if response.status_code == 404:
            # Known, but maybe still as `provisioning` (a periodic sync can catch the create's first revision): give
            # the activation's change event a moment to land, then check the settled status, which the token
            # endpoint reports without reaching the upstream (a 503 there would count in the gateway's metrics).
            time.sleep(0.2)
            token = httpx.post(gateway.url + "/_gateway/token", headers={"X-API-Key": key}, timeout=5)
            if token.status_code != 503:
                return
        time.sleep(0.05)
    raise AssertionError(f"gateway {gateway.url} did not learn the key within {timeout:.0f}s")


@contextlib.contextmanager
def running_stack(
    installation: Installation,
    folder: Path,
    service_env: dict[str, str] | None = None,
    gateway_env: dict[str, str] | None = None,
) -> Iterator[GatewayStack]:
    """Start the three processes (meant for a module-scoped fixture) and stop them afterwards.

    The gateway gets a generous ``REDIS_TIMEOUT`` (a loaded CI machine must not fail quotas open by accident)
    unless ``gateway_env`` says otherwise.
    """
    service = TenantServiceProcess(installation, folder / "tenant-service.log", env=service_env).start()
    echo: EchoUpstream | None = None
    gateway: GatewayProcess | None = None
    admin = service.client()
    stack: GatewayStack | None = None
    try:
        echo = EchoUpstream(folder / "echo.log").start()
        keys = new_secret("JWT_SIGNING_KEYS")
        gateway = GatewayProcess(
            installation, service.url, echo.url, folder / "gateway.log", keys,
            **{"REDIS_TIMEOUT": "2", **(gateway_env or {})},
        ).start()  # fmt: skip
        stack = GatewayStack(installation, folder, service, echo, gateway, keys, admin)
        yield stack
    finally:
        admin.close()
        for extra in stack.extra if stack else []:
            extra.stop()
        for process in (gateway, echo):
            if process is not None:
                process.stop()
        service.stop()


def seen_headers(echoed: dict[str, Any]) -> dict[str, list[str]]:
    """The headers the echo upstream received (its JSON ``headers`` list), by lowercase name."""
    headers: dict[str, list[str]] = {}
    for name, value in echoed["headers"]:
        headers.setdefault(name.lower(), []).append(value)
    return headers


def echo_hits(stack: GatewayStack, path: str) -> int:
    """How many requests for ``path`` the echo upstream has served, asked directly (not through the gateway)."""
    response = httpx.get(stack.echo.url + path, timeout=5)
    return int(response.json()["count"]) - 1


# --- the platform with the notes app ----------------------------------------------------------------------


@contextlib.contextmanager
def running_platform(installation: Installation, folder: Path, **notes_env: str) -> Iterator[Platform]:
    """The tenant-service, a gateway (directory polled every 0.5 s) and the notes app behind it, stopped afterwards.

    The app is named after ``folder`` (``platform.notes.app_name``), so a test can count its Postgres connections.
    """
    platform = Platform.launch(
        installation,
        folder,
        app_name=f"notes-{folder.name}"[:60],
        gateway_env={"DIRECTORY_REFRESH_SECONDS": "0.5"},
        notes_env=notes_env,
    )
    try:
        yield platform
    finally:
        platform.stop()


def gw(platform: Platform, method: str, path: str, tenant: Tenant, **kwargs: Any) -> httpx.Response:
    """A request of ``tenant`` (its API key) to the app, through the platform's gateway."""
    headers = {"X-API-Key": tenant.key, **kwargs.pop("headers", {})}
    return httpx.request(method, platform.gateway.url + path, headers=headers, timeout=30, **kwargs)


def make_tenant(platform: Platform, slug: str, **body: Any) -> Tenant:
    """Create a tenant and wait until the app serves it through the gateway."""
    response = platform.admin.post("/admin/tenants", json={"slug": slug, "name": slug, **body})
    assert response.status_code == 201, response.text
    tenant = Tenant.from_created(response.json())
    wait_until(lambda: gw(platform, "GET", "/notes", tenant).status_code == 200)
    return tenant
