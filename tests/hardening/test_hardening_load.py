"""Hardening, load: the full gateway pipeline under wrk, and the tenant-service under a burst of creates.

About 30 s of wrk in ``make test`` (a warm-up, then the measured run); ``make soak`` runs the same checks for
``SOAK_SECONDS`` (tests/soak/). wrk is required: a missing wrk fails the test with the fix, it never skips.
"""

from __future__ import annotations

import secrets
import socket
import time

import httpx
import pytest

from support.load import (
    PROBE_BOUND_SECONDS,
    assert_healthy_under_load,
    create_burst,
    pipeline_headers,
    pipeline_under_load,
    purge_all,
)
from support.platform import Installation, Tenant, cluster_objects
from support.stacks import GatewayStack

WARMUP_SECONDS = 6
LOAD_SECONDS = 24
CONNECTIONS = 128
BURST = 50
STALLED = 300
#: Whatever the gateway's header timeout is, a stalled connection still open after this long is never closed.
HANG_BOUND_SECONDS = 60

# A generous Redis timeout: an unmetered request (failed open) must not hide among the load.
pytestmark = pytest.mark.stack(gateway_env={"REDIS_TIMEOUT": "5"})


def test_wrk_on_the_full_pipeline_gives_no_5xx_no_socket_errors_flat_memory_and_no_fd_growth(
    stack: GatewayStack, load_tenant: Tenant
) -> None:
    report = pipeline_under_load(
        stack, load_tenant, seconds=LOAD_SECONDS, warmup_seconds=WARMUP_SECONDS, connections=CONNECTIONS
    )
    print(report.describe())
    assert_healthy_under_load(report)
    assert stack.gateway.proc is not None
    assert stack.gateway.proc.poll() is None, "the gateway died under load"


async def test_tenant_service_keeps_answering_during_a_burst_of_50_concurrent_creates_and_purges_leave_nothing(
    stack: GatewayStack, installation: Installation
) -> None:
    stem = secrets.token_hex(2)
    slugs = [f"burst-{stem}-{i:02d}" for i in range(BURST)]
    report = await create_burst(stack.service, slugs)
    print(report.describe())
    assert report.errors == [], report.errors
    assert sorted(report.created.values()) == [201] * (BURST // 2) + [202] * (BURST - BURST // 2)
    assert report.final_status == dict.fromkeys(slugs, "active"), {
        slug: status for slug, status in report.final_status.items() if status != "active"
    }
    answered = {p.path for p in report.probes if p.outcome == 200}
    assert answered == {"/healthz", "/admin/tenants?limit=5"}, report.probes
    assert report.bad_probes(PROBE_BOUND_SECONDS) == []
    listed = stack.admin.get("/admin/tenants", params={"q": f"burst-{stem}", "limit": 200}).json()["items"]
    assert sorted(t["slug"] for t in listed) == slugs
    assert {t["status"] for t in listed} == {"active"}
    # And the same burst of purges leaves nothing behind (this also keeps the session installation small).
    assert await purge_all(stack.service, slugs) == dict.fromkeys(slugs, 200)
    databases, roles = await cluster_objects(installation.pg_url, installation.prefix)
    created = {t["database"]["name"] for t in listed}
    assert created.isdisjoint(databases)
    assert created.isdisjoint(roles)


def test_stalled_connections_neither_starve_another_client_nor_stay_open(
    stack: GatewayStack, load_tenant: Tenant
) -> None:
    """Slowloris: many connections that start a request head and never finish it."""
    stalled: list[socket.socket] = []
    try:
        for _ in range(STALLED):
            sock = socket.create_connection(("127.0.0.1", stack.gateway.port), timeout=10)
            sock.sendall(b"GET /stalled HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Never: ends")
            stalled.append(sock)
        response = httpx.get(stack.gateway.url + "/meanwhile", headers=pipeline_headers(load_tenant), timeout=15)
        assert response.status_code == 200
        deadline = time.monotonic() + HANG_BOUND_SECONDS
        for sock in stalled:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            answer = b""
            try:
                while chunk := sock.recv(65536):
                    answer += chunk
            except TimeoutError:
                raise AssertionError(f"a stalled connection was still open after {HANG_BOUND_SECONDS}s") from None
            except ConnectionResetError:
                pass
            assert answer == b"" or answer.startswith((b"HTTP/1.1 408", b"HTTP/1.1 400")), answer[:200]
    finally:
        for sock in stalled:
            sock.close()
