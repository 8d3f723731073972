"""The cutover hold end to end (contract §11, "Move"; §10, "Restore"): while a tenant's database is switched, every
gateway holds the tenant's new requests — they wait, they are not refused — for at most CUTOVER_HOLD_SECONDS,
requests in flight finish first, and then the held ones go on.

The hold is taken the way a restore takes it, in-process with ``cutover_hold`` on the stack's installation; the
tenant-service, the gateways and the echo upstream are real processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.gateway_support import GatewayProcess
from support.platform import Installation, Tenant
from support.stacks import GatewayStack, wait_known
from tenant_service.context import AppContext
from tenant_service.cutover import HoldNotDrainedError, cutover_hold, place_hold
from tenant_service.provisioning.reconciler import Reconciler
from tenantry_common.redis_keys import hold_acks_key

# The stack's gateway holds for the default 5 s; "brief" gives up after 1 s.
pytestmark = pytest.mark.stack(gateways={"brief": {"CUTOVER_HOLD_SECONDS": "1"}})


@pytest.fixture
async def short_ctx(ctx: AppContext) -> AsyncIterator[AppContext]:
    """The tenant-service's context with CUTOVER_HOLD_SECONDS=1."""
    lifecycle = dataclasses.replace(ctx.settings.lifecycle, cutover_hold_seconds=1.0)
    short = AppContext.build(dataclasses.replace(ctx.settings, lifecycle=lifecycle))
    yield short
    await short.close()


def held_tenant(stack: GatewayStack, stem: str) -> Tenant:
    """A tenant every gateway of the stack serves."""
    return stack.tenant(stem, gateways=[stack.gateway, *stack.extra])


def held_requests(gateway: GatewayProcess, outcome: str) -> float:
    """The gateway's ``tenantry_gateway_held_requests_total{outcome}``."""
    text = httpx.get(gateway.url + "/_gateway/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tenantry_gateway_held_requests_total" and sample.labels.get("outcome") == outcome:
                return sample.value
    return 0.0


async def send(client: httpx.AsyncClient, path: str) -> tuple[float, float, httpx.Response]:
    """One request: when it was sent, when its answer was complete, the answer."""
    sent = time.monotonic()
    response = await client.get(path)
    return sent, time.monotonic(), response


def tenant_client(gateway: GatewayProcess, tenant: Tenant) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway.url, headers={"X-API-Key": tenant.key}, timeout=20)


async def test_requests_sent_across_a_hold_all_succeed_and_the_held_ones_complete_after_the_release(
    stack: GatewayStack, ctx: AppContext
) -> None:
    tenant = held_tenant(stack, "across")
    released_before = held_requests(stack.gateway, "released")
    stop = asyncio.Event()

    async def keep_sending(client: httpx.AsyncClient) -> list[tuple[float, float, httpx.Response]]:
        """A request every 50 ms, whether or not the earlier ones have been answered."""
        sending: list[asyncio.Task[tuple[float, float, httpx.Response]]] = []
        while not stop.is_set():
            sending.append(asyncio.create_task(send(client, "/hello")))
            await asyncio.sleep(0.05)
        return list(await asyncio.gather(*sending))

    async with tenant_client(stack.gateway, tenant) as client:
        sender = asyncio.create_task(keep_sending(client))
        await asyncio.sleep(0.5)
        placed = time.monotonic()
        async with cutover_hold(ctx, uuid.UUID(tenant.id)):
            drained = time.monotonic()
            await asyncio.sleep(1.0)
            releasing = time.monotonic()
        await asyncio.sleep(0.5)
        stop.set()
        results = await sender

    assert [r.status_code for _, _, r in results if r.status_code != 200] == []
    during = [(sent, done) for sent, done, _ in results if drained <= sent < releasing]
    assert len(during) >= 10, "requests were sent while the tenant was held"
    assert all(done >= releasing for _, done in during), "a request sent during the hold completed before it ended"
    assert any(sent < placed for sent, _, _ in results)
    assert any(sent > releasing for sent, _, _ in results)
    assert held_requests(stack.gateway, "released") >= released_before + len(during)


async def test_a_request_in_flight_when_the_hold_starts_finishes_before_the_tenant_service_sees_it_drained(
    stack: GatewayStack, ctx: AppContext
) -> None:
    tenant = held_tenant(stack, "inflight")
    async with tenant_client(stack.gateway, tenant) as client:
        slow = asyncio.create_task(send(client, "/slow?seconds=1.5"))
        await asyncio.sleep(0.3)  # at the upstream by now
        placed = time.monotonic()
        async with cutover_hold(ctx, uuid.UUID(tenant.id)):
            drained = time.monotonic()
            assert slow.done(), "the tenant-service saw the gateways drained while a request was in flight"
        _, finished, response = await slow
    assert response.status_code == 200
    assert finished <= drained
    assert drained - placed >= 1.0


async def test_a_hold_that_outlives_cutover_hold_seconds_gets_503_tenant_unavailable_with_retry_after(
    stack: GatewayStack, ctx: AppContext
) -> None:
    tenant = held_tenant(stack, "outlive")
    brief = stack.extra[0]
    async with tenant_client(brief, tenant) as on_brief, tenant_client(stack.gateway, tenant) as on_default:
        async with cutover_hold(ctx, uuid.UUID(tenant.id)):
            started = time.monotonic()
            waiting = asyncio.create_task(send(on_default, "/hello"))
            refused, _ = await asyncio.gather(send(on_brief, "/hello"), asyncio.sleep(2.0))
            releasing = time.monotonic()
        waited = await waiting
    _, refused_at, response = refused
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "tenant_unavailable"
    assert int(response.headers["retry-after"]) >= 1
    assert 0.8 <= refused_at - started < 2.0, "held for about CUTOVER_HOLD_SECONDS (1 s) on that gateway"
    # The gateway with the default 5 s kept its request waiting until the release.
    _, done, answer = waited
    assert answer.status_code == 200
    assert done >= releasing
    assert held_requests(brief, "timed_out") >= 1


async def test_another_tenant_is_not_held(stack: GatewayStack, ctx: AppContext) -> None:
    held, other = held_tenant(stack, "held"), held_tenant(stack, "other")
    async with tenant_client(stack.gateway, held) as held_client, tenant_client(stack.gateway, other) as client:
        async with cutover_hold(ctx, uuid.UUID(held.id)):
            waiting = asyncio.create_task(send(held_client, "/hello"))
            answers = [await send(client, "/hello") for _ in range(5)]
            assert not waiting.done()
        _, _, held_answer = await waiting
    assert held_answer.status_code == 200
    assert [r.status_code for _, _, r in answers] == [200] * 5
    assert max(done - sent for sent, done, _ in answers) < 0.5


async def test_a_cutover_whose_requests_do_not_drain_within_the_hold_is_refused_and_released(
    stack: GatewayStack, short_ctx: AppContext
) -> None:
    tenant = held_tenant(stack, "nodrain")
    async with tenant_client(stack.gateway, tenant) as client:
        slow = asyncio.create_task(send(client, "/slow?seconds=2.5"))
        await asyncio.sleep(0.3)
        with pytest.raises(HoldNotDrainedError):
            async with cutover_hold(short_ctx, uuid.UUID(tenant.id)):
                pytest.fail("the switch ran although a request was still in flight")
        _, _, after = await send(client, "/hello")
        _, _, response = await slow
    assert after.status_code == 200
    assert response.status_code == 200
    page = directory_entry(stack, tenant)
    assert page["hold"] is None


def directory_entry(stack: GatewayStack, tenant: Tenant) -> dict[str, object]:
    """The tenant's entry in the directory feed, as gateways read it."""
    response = httpx.get(
        f"{stack.service.url}/internal/v1/directory/tenants/{tenant.id}",
        headers={"Authorization": f"Bearer {stack.installation.gateway_token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    [entry] = response.json()["tenants"]
    return dict(entry)


async def test_the_reconciler_clears_a_hold_whose_holder_died(
    stack: GatewayStack, ctx: AppContext, short_ctx: AppContext
) -> None:
    tenant = held_tenant(stack, "orphan")
    hold = await place_hold(short_ctx, uuid.UUID(tenant.id))  # and never released: its holder "died"
    assert directory_entry(stack, tenant)["hold"] == hold.id
    async with tenant_client(stack.gateway, tenant) as client:
        waiting = asyncio.create_task(send(client, "/hello"))
        await asyncio.sleep(1.2)  # the hold has run out in the registry
        assert directory_entry(stack, tenant)["hold"] is None
        assert not waiting.done(), "the gateway keeps holding until the registry's revision says otherwise"
        report = await Reconciler(ctx).run_once()
        cleared = time.monotonic()
        assert tenant.id in report.holds_cleared
        _, done, response = await waiting
    assert response.status_code == 200
    assert done - cleared < 1.0
    async with tenant_client(stack.gateway, tenant) as client:
        _, _, again = await send(client, "/hello")
    assert again.status_code == 200


async def test_gateways_learn_of_a_hold_from_its_event_not_from_their_poll(
    stack: GatewayStack, ctx: AppContext, installation: Installation, tmp_path: Path
) -> None:
    # A gateway that polls every 5 s: only the change event can make it acknowledge within a second.
    slow_poll = GatewayProcess(
        installation, stack.service.url, stack.echo.url, tmp_path / "slow-poll.log", stack.signing_keys,
        DIRECTORY_REFRESH_SECONDS="5",
    ).start()  # fmt: skip
    try:
        tenant = held_tenant(stack, "event")
        wait_known(slow_poll, tenant.key, timeout=15)
        placed = time.monotonic()
        async with cutover_hold(ctx, uuid.UUID(tenant.id)) as hold:
            drained = time.monotonic()
            assert ctx.redis is not None
            acknowledged = [a.decode() for a in await ctx.redis.hkeys(hold_acks_key(hold.id))]
    finally:
        slow_poll.stop()
    assert any(f":{slow_poll.pid}:" in instance for instance in acknowledged), acknowledged
    assert drained - placed < 1.0, f"acknowledged after {drained - placed:.3f} s"
