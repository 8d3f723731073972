"""A tenant or key made a moment ago works on the very first request (gateway.directory: catch-up).

The gateway under test polls the directory once a minute, so only the change event the tenant-service publishes
before it answers can teach it a tenant made after its start; and every directory answer is 0.3 s slow (a failpoint),
so a request sent right after the admin API's answer always arrives while that event's fetch is under way: it waits
for it instead of being refused. Refusals never wait when nothing is pending.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from support.gateway_support import GatewayProcess
from support.platform import Tenant
from support.stacks import GatewayStack
from tenantry_common.apikeys import generate_api_key

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.stack(service_env={"TENANTRY_FAILPOINTS": "directory.before_answer=sleep:0.3"}),
]

TIMEOUT = 10.0


#: Gateways that poll once a minute: only change events teach them anything during a test.
SLOW_POLL = {
    "DIRECTORY_REFRESH_SECONDS": "60",
    "DIRECTORY_FULL_SYNC_SECONDS": "600",
    "DIRECTORY_MAX_STALENESS_SECONDS": "0",
}


@pytest.fixture(scope="module")
def slow(stack: GatewayStack) -> Iterator[GatewayProcess]:
    gateway = stack.start_gateway("slow-poll", **SLOW_POLL)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def slow_passthrough(stack: GatewayStack) -> Iterator[GatewayProcess]:
    gateway = stack.start_gateway("slow-passthrough", GATEWAY_MODE="passthrough", **SLOW_POLL)
    yield gateway
    gateway.stop()


def created(stack: GatewayStack, stem: str) -> Tenant:
    """A tenant made through the admin API, with no wait for any gateway to learn it."""
    slug = f"h-{stem}-{time.monotonic_ns() % 10**9}"
    response = stack.admin.post("/admin/tenants", json={"slug": slug, "name": slug})
    assert response.status_code == 201, response.text
    return Tenant.from_created(response.json())


def waited(gateway: GatewayProcess) -> float:
    """Refused requests that waited for a pending event's fetch, so far."""
    text = httpx.get(gateway.url + "/_gateway/metrics", timeout=TIMEOUT).text
    found = re.findall(r'^tenantry_gateway_directory_catch_ups_total\{outcome="\w+"\} (\S+)$', text, re.MULTILINE)
    return sum(float(v) for v in found)


def test_a_tenant_made_just_now_is_served_on_its_first_request(stack: GatewayStack, slow: GatewayProcess) -> None:
    for stem in ("first", "second", "third", "fourth", "fifth"):
        tenant = created(stack, stem)
        answer = httpx.get(
            slow.url + "/hello", headers={"Host": f"{tenant.slug}.localhost", "X-API-Key": tenant.key}, timeout=TIMEOUT
        )
        assert answer.status_code == 200, answer.text
        assert ["x-tenant-id", tenant.id] in answer.json()["headers"]


def test_pass_through_mode_serves_a_tenant_made_just_now_on_its_first_request(
    stack: GatewayStack, slow_passthrough: GatewayProcess
) -> None:
    for stem in ("pt-one", "pt-two"):
        tenant = created(stack, stem)
        answer = httpx.get(
            slow_passthrough.url + "/hello", headers={"Host": f"{tenant.slug}.localhost"}, timeout=TIMEOUT
        )
        assert answer.status_code == 200, answer.text
        assert ["x-tenant-id", tenant.id] in answer.json()["headers"]


def test_a_key_made_just_now_works_at_once_everywhere_a_key_is_taken(stack: GatewayStack, slow: GatewayProcess) -> None:
    tenant = created(stack, "keys")
    for use in ("proxy", "token", "me"):
        made = stack.admin.post(f"/admin/tenants/{tenant.id}/api-keys", json={"name": use})
        assert made.status_code == 201, made.text
        key = made.json()["key"]
        if use == "proxy":
            answer = httpx.get(slow.url + "/x", headers={"X-Tenant-ID": tenant.id, "X-API-Key": key}, timeout=TIMEOUT)
        elif use == "token":
            answer = httpx.post(slow.url + "/_gateway/token", headers={"X-API-Key": key}, timeout=TIMEOUT)
        else:
            answer = httpx.get(slow.url + "/_gateway/tenant", headers={"X-Tenant-ID": tenant.id, "X-API-Key": key},
                               timeout=TIMEOUT)  # fmt: skip
        assert answer.status_code == 200, (use, answer.text)


def test_refusals_do_not_wait_when_no_change_is_pending(stack: GatewayStack, slow: GatewayProcess) -> None:
    tenant = created(stack, "quiet")
    # Its event's fetch has long ended once the gateway serves it.
    deadline = time.monotonic() + TIMEOUT
    while httpx.get(slow.url + "/x", headers={"X-Tenant-ID": tenant.id, "X-API-Key": tenant.key},
                    timeout=TIMEOUT).status_code != 200:  # fmt: skip
        assert time.monotonic() < deadline
        time.sleep(0.05)
    before = waited(slow)
    refused = (
        {"X-API-Key": generate_api_key()},
        {"X-API-Key": tenant.key[:-1] + ("A" if tenant.key[-1] != "A" else "B")},
        {"X-Tenant-ID": "no-such-tenant", "X-API-Key": tenant.key},
        {"X-Tenant-ID": tenant.id},
    )
    for _ in range(5):
        for headers in refused:
            assert httpx.get(slow.url + "/x", headers=headers, timeout=TIMEOUT).status_code in (401, 403, 404)
    assert waited(slow) == before
