"""The cutover hold's parts against real Postgres and Redis: the registry and the directory feed on the
tenant-service's side, a gateway worker's in-flight counting, acknowledgements and heartbeat on the other."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as redis

from gateway.directory import Directory
from gateway.errors import GatewayError
from gateway.hold import Holds
from support.platform import Installation, directory_page
from tenant_service.context import AppContext
from tenant_service.cutover import (
    PROPAGATION_FALLBACK_SECONDS,
    HoldInProgressError,
    cutover_hold,
    place_hold,
    release_hold,
)
from tenantry_common.directory import DirectoryPage, DirectoryTenant
from tenantry_common.holds import LIVE_SECONDS
from tenantry_common.redis_keys import gateways_key, hold_acks_key
from tenantry_devtools.processes import free_port

TENANT = "00000000-0000-0000-0000-0000000000c1"


async def make_tenant(api: httpx.AsyncClient, stem: str) -> dict[str, str]:
    response = await api.post("/admin/tenants", json={"slug": f"hp-{stem}-{secrets.token_hex(3)}", "name": stem})
    assert response.status_code == 201, response.text
    created: dict[str, str] = response.json()
    return created


async def feed_entry(api: httpx.AsyncClient, installation: Installation, tenant_id: str) -> dict[str, object]:
    """The tenant's entry in the directory feed (what a gateway fetches on the tenant's change event)."""
    response = await api.get(
        f"/internal/v1/directory/tenants/{tenant_id}",
        headers={"Authorization": f"Bearer {installation.gateway_token}"},
    )
    assert response.status_code == 200, response.text
    [entry] = response.json()["tenants"]
    return dict(entry)


@pytest.fixture
async def ctx_with(ctx: AppContext) -> AsyncIterator[list[AppContext]]:
    """Contexts built from the session's settings with changes (closed afterwards)."""
    built: list[AppContext] = []
    yield built
    for each in built:
        await each.close()


def variant(
    ctx: AppContext, built: list[AppContext], *, hold_seconds: float | None = None, **changes: object
) -> AppContext:
    settings = ctx.settings
    if hold_seconds is not None:
        settings = dataclasses.replace(
            settings, lifecycle=dataclasses.replace(settings.lifecycle, cutover_hold_seconds=hold_seconds)
        )
    built.append(AppContext.build(dataclasses.replace(settings, **changes)))  # type: ignore[arg-type]
    return built[-1]


# --- the tenant-service's side -----------------------------------------------------------------------------


async def test_the_directory_feed_shows_a_hold_only_while_it_lasts(
    api: httpx.AsyncClient, installation: Installation, ctx: AppContext, ctx_with: list[AppContext]
) -> None:
    created = await make_tenant(api, "feed")
    page = await directory_page(api, installation)
    assert page["installation"] == str(await ctx.installation_id())
    before = await feed_entry(api, installation, created["id"])
    assert before["hold"] is None
    hold = await place_hold(variant(ctx, ctx_with, hold_seconds=0.5), uuid.UUID(created["id"]))
    held = await feed_entry(api, installation, created["id"])
    assert held["hold"] == hold.id
    assert int(str(held["revision"])) > int(str(before["revision"]))
    await asyncio.sleep(0.6)
    assert (await feed_entry(api, installation, created["id"]))["hold"] is None  # ran out, not yet cleared
    await release_hold(ctx, hold)
    released = await feed_entry(api, installation, created["id"])
    assert released["hold"] is None
    assert int(str(released["revision"])) > int(str(held["revision"]))


async def test_a_tenant_already_held_cannot_be_held_twice(api: httpx.AsyncClient, ctx: AppContext) -> None:
    created = await make_tenant(api, "twice")
    hold = await place_hold(ctx, uuid.UUID(created["id"]))
    try:
        with pytest.raises(HoldInProgressError):
            await place_hold(ctx, uuid.UUID(created["id"]))
    finally:
        await release_hold(ctx, hold)
    again = await place_hold(ctx, uuid.UUID(created["id"]))
    await release_hold(ctx, again)


@pytest.mark.parametrize("redis_setting", ["unset", "unreachable"])
async def test_without_redis_a_hold_waits_the_propagation_delay_instead_of_acknowledgements(
    api: httpx.AsyncClient, ctx: AppContext, ctx_with: list[AppContext], redis_setting: str
) -> None:
    created = await make_tenant(api, "noredis")
    url = None if redis_setting == "unset" else f"redis://127.0.0.1:{free_port()}/0"
    no_redis = variant(ctx, ctx_with, redis_url=url)
    started = time.monotonic()
    async with cutover_hold(no_redis, uuid.UUID(created["id"])) as hold:
        waited = time.monotonic() - started
        assert hold.remaining() > 0
    assert PROPAGATION_FALLBACK_SECONDS - 0.05 <= waited < PROPAGATION_FALLBACK_SECONDS + 1.5


async def test_a_hold_is_released_when_the_switch_fails(api: httpx.AsyncClient, installation: Installation,
                                                        ctx: AppContext) -> None:  # fmt: skip
    created = await make_tenant(api, "fails")
    with pytest.raises(RuntimeError, match="switch failed"):
        async with cutover_hold(ctx, uuid.UUID(created["id"])):
            raise RuntimeError("switch failed")
    assert (await feed_entry(api, installation, created["id"]))["hold"] is None


# --- a gateway worker's side -------------------------------------------------------------------------------


def held_page(revision: int, hold: str | None, installation: str) -> DirectoryPage:
    entry = DirectoryTenant(
        id=TENANT, slug="hold-parts", status="active", plan="free", limits={}, upstream_url=None, domains=[],
        keys=[], revision=revision, hold=hold,
    )  # fmt: skip
    return DirectoryPage(revision=revision, tenants=[entry], removed=[], full=False, installation=installation)


@pytest.fixture
async def worker(redis_url: str) -> AsyncIterator[tuple[Holds, Directory, redis.Redis]]:
    """A gateway worker's holds on a directory of its own, following an installation of its own."""
    client = redis.Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)
    directory = Directory()
    directory.apply_page(held_page(1, None, f"parts-{secrets.token_hex(4)}"))
    holds = Holds(directory, client, hold_seconds=2.0, redis_timeout=1.0)
    yield holds, directory, client
    await holds.stop()
    await client.aclose()


def hold_on(directory: Directory, holds: Holds, revision: int, hold: str | None) -> None:
    """What a directory sync does: apply the page, then let the holds compare."""
    directory.apply_page(held_page(revision, hold, directory.installation or ""))
    holds.observe()


async def test_a_worker_acknowledges_a_hold_once_its_requests_in_flight_are_done(
    worker: tuple[Holds, Directory, redis.Redis],
) -> None:
    holds, directory, client = worker
    hold = secrets.token_hex(8)
    holds.enter(TENANT)
    holds.enter(TENANT)
    hold_on(directory, holds, 2, hold)
    await asyncio.sleep(0.3)
    assert not await client.hexists(hold_acks_key(hold), holds.instance)
    holds.leave(TENANT)
    await asyncio.sleep(0.1)
    assert not await client.hexists(hold_acks_key(hold), holds.instance)
    holds.leave(TENANT)
    assert holds.in_flight == {}
    deadline = time.monotonic() + 1.0
    while not await client.hexists(hold_acks_key(hold), holds.instance):
        assert time.monotonic() < deadline, "no acknowledgement after the last request was done"
        await asyncio.sleep(0.01)
    assert 0 < await client.ttl(hold_acks_key(hold)) <= 120


async def test_a_held_request_goes_on_when_the_directory_lifts_the_hold(
    worker: tuple[Holds, Directory, redis.Redis],
) -> None:
    holds, directory, _ = worker
    hold_on(directory, holds, 2, "h-lift")
    waiting = asyncio.create_task(holds.wait(directory.by_id[TENANT]))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    lifted = time.monotonic()
    hold_on(directory, holds, 3, None)
    entry = await waiting
    assert time.monotonic() - lifted < 0.1
    assert entry.hold is None


async def test_a_held_request_gets_503_once_the_hold_outlives_the_setting(
    worker: tuple[Holds, Directory, redis.Redis],
) -> None:
    holds, directory, _ = worker
    hold_on(directory, holds, 2, "h-long")
    started = time.monotonic()
    with pytest.raises(GatewayError) as refused:
        await holds.wait(directory.by_id[TENANT])
    assert 1.9 <= time.monotonic() - started < 2.5
    assert (refused.value.status, refused.value.code) == (503, "tenant_unavailable")
    assert refused.value.headers["retry-after"] == "1"
    # A request arriving later is refused at once: the hold is measured from when the worker first saw it.
    with pytest.raises(GatewayError):
        await asyncio.wait_for(holds.wait(directory.by_id[TENANT]), 0.1)


async def test_a_worker_heartbeats_under_its_installation_and_leaves_when_it_stops(
    worker: tuple[Holds, Directory, redis.Redis],
) -> None:
    holds, directory, client = worker
    assert directory.installation is not None
    key = gateways_key(directory.installation)
    holds.start()
    deadline = time.monotonic() + 2.0
    while await client.zscore(key, holds.instance) is None:
        assert time.monotonic() < deadline, "no heartbeat"
        await asyncio.sleep(0.02)
    seconds, micros = await client.time()
    beat = await client.zscore(key, holds.instance)
    assert beat is not None
    assert abs(seconds + micros / 1e6 - beat) < LIVE_SECONDS
    await holds.stop()
    assert await client.zscore(key, holds.instance) is None
