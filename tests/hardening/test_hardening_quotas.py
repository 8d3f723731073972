"""Hardening, quotas: a noisy or hostile tenant can neither exceed its limit nor spend another tenant's.

Real processes: the tenant-service and two gateways share a Redis of this module's own (so every key in it was
written by the platform and can be audited); each failure-mode test has a gateway on a Redis of its own, which
it kills with SIGKILL or fills up (every write refused) in the middle of the traffic.

Minute boundaries: the per-minute counter key is per clock minute, so a burst that straddles a boundary is
legitimately counted in two windows. Every exact count here therefore starts only when enough of the current
minute is left (:func:`minute_with_margin`: at most 45 s into it for the big burst), and the burst is repeated
once on a fresh tenant if it still crossed a boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from support.assertions import assert_problem
from support.gateway_support import GatewayProcess
from support.platform import Installation, Tenant
from support.stacks import GatewayStack, echo_hits, running_stack, wait_known
from tenantry_common.redis_keys import day_counter_key, minute_counter_key
from tenantry_devtools.servers import LocalRedis

BURST = 500
BURST_LIMIT = 100
#: The longest a per-minute counter may live: its minute, plus slack for a loaded machine's clock reads.
MINUTE_TTL_MAX = 120
#: The longest a per-day counter (or any other tenant key) may live: about a day.
DAY_TTL_MAX = 86400 + 3600


@contextlib.contextmanager
def own_redis(stem: str) -> Iterator[LocalRedis]:
    """A throw-away Redis of the caller's own, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix=f"tenantry-{stem}-", dir="/tmp"))
    folder.chmod(0o755)
    server = LocalRedis(folder / "data", log_file=folder / "redis.log")
    server.start()
    try:
        yield server
    finally:
        server.kill()
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class QuotaStack:
    processes: GatewayStack
    second: GatewayProcess
    redis_server: LocalRedis
    redis: redis.Redis
    per_minute: dict[str, int] = field(default_factory=dict)

    @property
    def gateways(self) -> list[GatewayProcess]:
        return [self.processes.gateway, self.second]

    def plan(self, requests_per_minute: int, requests_per_day: int = 10**9) -> str:
        name = f"hq-{secrets.token_hex(4)}"
        limits = {"requests_per_minute": requests_per_minute, "requests_per_day": requests_per_day}
        response = self.processes.admin.put(f"/admin/plans/{name}", json={"limits": limits})
        assert response.status_code == 200, response.text
        self.per_minute[name] = requests_per_minute
        return name

    def tenant(self, stem: str, plan: str, gateways: list[GatewayProcess] | None = None) -> Tenant:
        """A tenant on ``plan`` that ``gateways`` (default: both) serve, with its counters back at zero.

        A gateway may know a key while it still sees the tenant as ``provisioning`` (503), so readiness is a
        forwarded request with the plan's limit; the counters those probes moved are then deleted, which is what
        a fresh minute would do.
        """
        gateways = gateways or self.gateways
        tenant = self.processes.tenant(stem, gateways=gateways, plan=plan)
        for gateway in gateways:
            deadline = time.monotonic() + 10
            while True:
                probe = httpx.get(gateway.url + "/ready", headers={"X-API-Key": tenant.key}, timeout=10)
                if probe.status_code == 200 and probe.headers.get("ratelimit-limit") == str(self.per_minute[plan]):
                    break
                assert time.monotonic() < deadline, f"{gateway.url} does not serve {tenant.slug}: {probe.text}"
                time.sleep(0.05)
        self.reset(tenant.id)
        return tenant

    def reset(self, tenant_id: str) -> None:
        """Delete the tenant's keys in the shared Redis."""
        keys = list(self.redis.scan_iter(match=f"t:{{{tenant_id}}}:*", count=1000))
        if keys:
            self.redis.delete(*keys)

    def counters(self, tenant_id: str) -> dict[str, int]:
        """Every key in the tenant's namespace, with its value."""
        keys = sorted(k.decode() for k in self.redis.scan_iter(match=f"t:{{{tenant_id}}}:*", count=1000))
        return {key: int(self.redis.get(key) or 0) for key in keys}


@pytest.fixture(scope="module")
def quota(installation: Installation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuotaStack]:
    folder = tmp_path_factory.mktemp("quotas")
    # A generous Redis timeout: the exact counts below must not be spoilt by a call that (correctly) failed open
    # because the machine was busy. The failure modes have their own tests, with their own Redis.
    with own_redis("quota-redis") as server:
        env = {"REDIS_URL": server.url, "REDIS_TIMEOUT": "5"}
        with running_stack(installation, folder, service_env={"REDIS_URL": server.url}, gateway_env=env) as stack:
            second = stack.start_gateway("gateway-2", **env)
            client = redis.Redis.from_url(server.url, socket_timeout=10)
            yield QuotaStack(stack, second, server, client)
            client.close()


def minute_with_margin(seconds_needed: float) -> int:
    """Wait, if need be, until at least ``seconds_needed`` of the current minute are left; return its number."""
    into = time.time() % 60
    if into > 60 - seconds_needed:
        time.sleep(60 - into + 0.2)
    return int(time.time() // 60)


def current_minute() -> int:
    return int(time.time() // 60)


async def send_all(requests: list[tuple[str, dict[str, str]]]) -> list[httpx.Response]:
    """Send every ``(url, headers)`` GET at once, each over a connection of its own."""
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=len(requests))
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return list(await asyncio.gather(*(client.get(url, headers=headers) for url, headers in requests)))


def statuses(responses: list[httpx.Response]) -> Counter[int]:
    return Counter(r.status_code for r in responses)


def assert_counted_exactly(passed: list[httpx.Response], limit: int) -> None:
    """Every forwarded request was metered, and the counter handed out each remaining value exactly once."""
    unmetered = [r for r in passed if "ratelimit-limit" not in r.headers]
    assert not unmetered, f"{len(unmetered)} requests passed without RateLimit headers: the quota failed open"
    assert {r.headers["ratelimit-limit"] for r in passed} == {str(limit)}
    assert sorted(int(r.headers["ratelimit-remaining"]) for r in passed) == list(range(limit))


def assert_rate_limited(response: httpx.Response, limit: int) -> None:
    assert_problem(response, 429, "rate_limited")
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["ratelimit-limit"] == str(limit)
    assert response.headers["ratelimit-remaining"] == "0"


# --- exact limits under concurrency ------------------------------------------------------------------------


async def test_500_concurrent_requests_across_two_gateways_forward_exactly_the_limit(quota: QuotaStack) -> None:
    plan = quota.plan(requests_per_minute=BURST_LIMIT)
    for _attempt in range(2):
        tenant = quota.tenant("burst", plan)
        path = f"/burst-{secrets.token_hex(4)}"
        window = minute_with_margin(15)
        requests = [(gateway.url + path, {"X-API-Key": tenant.key}) for gateway in quota.gateways] * (BURST // 2)
        responses = await send_all(requests)
        if current_minute() == window:
            break
    else:
        pytest.fail("two bursts in a row crossed a minute boundary: the machine is too slow for an exact count")
    assert statuses(responses) == {200: BURST_LIMIT, 429: BURST - BURST_LIMIT}, statuses(responses)
    assert_counted_exactly([r for r in responses if r.status_code == 200], BURST_LIMIT)
    for refused in (r for r in responses if r.status_code == 429):
        assert_rate_limited(refused, BURST_LIMIT)
    # Refused requests are neither counted nor forwarded: both counters stop at the limit, and so does the upstream.
    assert quota.counters(tenant.id) == {
        minute_counter_key(tenant.id, window): BURST_LIMIT,
        day_counter_key(tenant.id, int(time.time() // 86400)): BURST_LIMIT,
    }
    assert echo_hits(quota.processes, path) == BURST_LIMIT


async def test_a_limit_lowered_to_zero_refuses_everything_and_forwards_nothing(quota: QuotaStack) -> None:
    tenant = quota.tenant("zero", quota.plan(requests_per_minute=1000))
    admin = quota.processes.admin
    for body, code in (
        ({"requests_per_minute": 0, "requests_per_day": 1000}, "rate_limited"),
        ({"requests_per_minute": 1000, "requests_per_day": 0}, "quota_exceeded"),
    ):
        zero = quota.plan(**body)
        assert admin.patch(f"/admin/tenants/{tenant.id}", json={"plan": zero}).status_code == 200
        for gateway in quota.gateways:
            deadline = time.monotonic() + 10
            while True:
                probe = httpx.get(gateway.url + "/probe", headers={"X-API-Key": tenant.key}, timeout=10)
                if probe.status_code == 429 and probe.json()["code"] == code:
                    break
                assert time.monotonic() < deadline, f"{gateway.url} never applied the plan {zero}: {probe.text}"
                time.sleep(0.05)
        quota.reset(tenant.id)
        path = f"/zero-{secrets.token_hex(4)}"
        responses = await send_all([(gw.url + path, {"X-API-Key": tenant.key}) for gw in quota.gateways] * 20)
        assert statuses(responses) == {429: 40}
        for response in responses:
            assert_problem(response, 429, code)
            assert int(response.headers["retry-after"]) >= 1
            assert response.headers["ratelimit-remaining"] == "0"
        assert echo_hits(quota.processes, path) == 0
        assert set(quota.counters(tenant.id).values()) <= {0}


async def test_an_exhausted_limit_holds_for_every_credential_route_and_gateway_of_the_tenant(
    quota: QuotaStack,
) -> None:
    limit = 10
    tenant = quota.tenant("bypass", quota.plan(requests_per_minute=limit))
    admin = quota.processes.admin
    second_key = admin.post(f"/admin/tenants/{tenant.id}/api-keys", json={"name": "second"}).json()["key"]
    for gateway in quota.gateways:
        wait_known(gateway, second_key)
    token = httpx.post(quota.gateways[0].url + "/_gateway/token", headers={"X-API-Key": tenant.key}, timeout=10)
    assert token.status_code == 200, token.text
    jwt = token.json()["access_token"]
    ways = [
        ("/x", {"X-API-Key": tenant.key}),
        ("/x", {"Authorization": f"Bearer {tenant.key}"}),
        ("/x", {"X-API-Key": second_key}),
        ("/x", {"Authorization": f"Bearer {jwt}"}),
        (f"/t/{tenant.slug}/x", {"X-API-Key": tenant.key}),
        ("/x", {"X-API-Key": tenant.key, "Host": f"{tenant.slug.upper()}.localhost.:8080"}),
        ("/x", {"X-API-Key": second_key, "X-Tenant-ID": tenant.id}),
        ("/x", {"Authorization": f"Bearer {jwt}", "X-Tenant-ID": tenant.slug}),
    ]
    for _attempt in range(2):
        window = minute_with_margin(20)
        before = quota.counters(tenant.id).get(minute_counter_key(tenant.id, window), 0)
        mixed = [(gw.url + path, headers) for gw in quota.gateways for path, headers in ways] * 4
        responses = await send_all(mixed)
        if current_minute() == window:
            break
    else:
        pytest.fail("two bursts in a row crossed a minute boundary")
    # However it is addressed, through whichever gateway, the tenant gets its limit once.
    assert statuses(responses) == {200: limit - before, 429: len(mixed) - (limit - before)}, statuses(responses)
    assert all(r.status_code == 200 or r.json()["code"] == "rate_limited" for r in responses)
    for url, headers in [(gw.url + path, headers) for gw in quota.gateways for path, headers in ways]:
        assert_rate_limited(httpx.get(url, headers=headers, timeout=10), limit)
    assert quota.counters(tenant.id)[minute_counter_key(tenant.id, window)] == limit


async def test_a_tenant_exhausting_its_limit_never_throttles_another_on_the_same_plan(quota: QuotaStack) -> None:
    limit = 20
    plan = quota.plan(requests_per_minute=limit)
    noisy, quiet = quota.tenant("noisy", plan), quota.tenant("quiet", plan)
    noisy_jwt = httpx.post(
        quota.gateways[0].url + "/_gateway/token", headers={"X-API-Key": noisy.key}, timeout=10
    ).json()["access_token"]
    window = minute_with_margin(20)
    quiet_before = quota.counters(quiet.id)
    # The noisy tenant floods both gateways ...
    flood = [(f"{gw.url}/flood", {"X-API-Key": noisy.key}) for gw in quota.gateways] * 60
    responses = await send_all(flood)
    noisy_passed = statuses(responses)[200]
    # ... and tries to spend the quiet tenant's quota with its own credentials, or with none that work.
    hostile = [
        ({"X-API-Key": noisy.key, "X-Tenant-ID": quiet.id}, 403),
        ({"X-API-Key": noisy.key, "Host": f"{quiet.slug}.localhost"}, 403),
        ({"Authorization": f"Bearer {noisy_jwt}", "X-Tenant-ID": quiet.slug}, 403),
        ({"X-API-Key": "tk_" + "A" * 38, "X-Tenant-ID": quiet.id}, 401),
        ({"X-Tenant-ID": quiet.id}, 401),
    ]
    for gateway in quota.gateways:
        for headers, status in hostile:
            for _ in range(3):
                assert httpx.get(gateway.url + "/steal", headers=headers, timeout=10).status_code == status, headers
            path = httpx.get(f"{gateway.url}/t/{quiet.slug}/steal", headers={"X-API-Key": noisy.key}, timeout=10)
            assert path.status_code == 403
    assert quota.counters(quiet.id) == quiet_before, "the quiet tenant's counters moved"
    # The quiet tenant still has its whole limit, on both gateways.
    quiet_responses = [
        httpx.get(f"{gw.url}/calm", headers={"X-API-Key": quiet.key}, timeout=10)
        for gw in quota.gateways
        for _ in range(limit // 2)
    ]
    if current_minute() != window:
        pytest.fail("the test crossed a minute boundary despite its margin: the machine is far too slow")
    assert noisy_passed == limit, statuses(responses)
    assert statuses(quiet_responses) == {200: limit}
    assert_counted_exactly(quiet_responses, limit)
    assert quota.counters(quiet.id)[minute_counter_key(quiet.id, window)] == limit
    assert quota.counters(noisy.id)[minute_counter_key(noisy.id, window)] == limit


# --- what the counters leave in Redis ----------------------------------------------------------------------

_TENANT_KEY = re.compile(r"^t:\{([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\}:(.+)$")


def audit_keys(client: redis.Redis, known: set[str]) -> dict[str, list[str]]:
    """Every key in ``client`` by kind; fails on a key outside the two namespaces, of a tenant not in ``known``,
    or without a bounded TTL."""
    now_minute = current_minute()
    kinds: dict[str, list[str]] = {}
    for raw in client.scan_iter(match="*", count=1000):
        key = raw.decode()
        # PTTL, not TTL: a counter in its last second shows TTL 0 although it carries an expiry.
        pttl = client.pttl(key)
        if pttl == -2:  # expired between SCAN and PTTL
            continue
        ttl = pttl if pttl < 0 else max(1, pttl // 1000)
        if key.startswith("tenantry:"):
            kinds.setdefault("platform", []).append(key)
            continue
        match = _TENANT_KEY.match(key)
        assert match, f"key outside the t:{{<tenant id>}}: and tenantry: namespaces: {key!r}"
        assert match.group(1) in known, f"key of a tenant that does not exist: {key!r}"
        assert ttl > 0, f"key without a TTL: {key!r} (TTL {ttl})"
        rest = match.group(2)
        if rest.startswith("rl:m:"):
            assert ttl <= MINUTE_TTL_MAX, f"minute counter kept for {ttl}s: {key!r}"
            assert now_minute - 2 <= int(rest.removeprefix("rl:m:")) <= now_minute, key
            kinds.setdefault("minute", []).append(key)
        elif rest.startswith("rl:d:"):
            assert ttl <= DAY_TTL_MAX, f"day counter kept for {ttl}s: {key!r}"
            kinds.setdefault("day", []).append(key)
        else:
            assert ttl <= DAY_TTL_MAX, f"tenant key kept for {ttl}s: {key!r}"
            kinds.setdefault("other", []).append(key)
    return kinds


def tenant_ids(stack: GatewayStack) -> set[str]:
    ids: set[str] = set()
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        page = stack.admin.get("/admin/tenants", params=params).json()
        ids.update(t["id"] for t in page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return ids


async def test_every_counter_carries_a_ttl_and_lives_in_its_tenant_namespace(quota: QuotaStack) -> None:
    daily = quota.tenant("daily", quota.plan(requests_per_minute=100, requests_per_day=3))
    minutely = quota.tenant("minutely", quota.plan(requests_per_minute=2))
    unmetered_plan = quota.plan(requests_per_minute=10**9, requests_per_day=10**12)
    busy = quota.tenant("busy", unmetered_plan)
    traffic = [(f"{gw.url}/ttl", {"X-API-Key": t.key}) for gw in quota.gateways for t in (daily, minutely, busy)]
    responses = await send_all(traffic * 5)
    codes = Counter(r.json()["code"] for r in responses if r.status_code == 429)
    assert set(codes) <= {"rate_limited", "quota_exceeded"}
    assert codes["quota_exceeded"] > 0, codes
    assert codes["rate_limited"] > 0, codes
    assert set(statuses(responses)) == {200, 429}, statuses(responses)
    kinds = audit_keys(quota.redis, tenant_ids(quota.processes))
    for tenant in (daily, minutely, busy):
        assert any(key.startswith(f"t:{{{tenant.id}}}:rl:m:") for key in kinds["minute"]), tenant
        assert any(key.startswith(f"t:{{{tenant.id}}}:rl:d:") for key in kinds["day"]), tenant


async def test_a_counter_that_lost_its_ttl_gets_it_back_within_a_hundred_requests(quota: QuotaStack) -> None:
    # The script gives a counter its TTL when it creates it, and checks it again every 100th increment.
    tenant = quota.tenant("heal", quota.plan(requests_per_minute=10**9, requests_per_day=10**12))
    request = (f"{quota.gateways[0].url}/heal", {"X-API-Key": tenant.key})
    assert statuses(await send_all([request])) == {200: 1}
    minute_keys = list(quota.redis.scan_iter(f"t:{{{tenant.id}}}:rl:m:*"))
    day_keys = list(quota.redis.scan_iter(f"t:{{{tenant.id}}}:rl:d:*"))
    assert minute_keys, "no minute counter"
    assert day_keys, "no day counter"
    for key in (*minute_keys, *day_keys):
        assert quota.redis.ttl(key) > 0, key  # set when created
        quota.redis.persist(key)
    for _ in range(3):
        assert statuses(await send_all([request] * 50)) == {200: 50}
    for key in day_keys:
        assert quota.redis.ttl(key) > 0, f"{key!r} still has no TTL after 150 increments"
    minute_now = list(quota.redis.scan_iter(f"t:{{{tenant.id}}}:rl:m:*"))
    for key in minute_keys:
        # Healed, unless the minute rolled over meanwhile (then the old counter gets no more increments).
        assert quota.redis.ttl(key) > 0 or len(minute_now) > len(minute_keys), key
        quota.redis.delete(key)


# --- Redis failing mid-run ---------------------------------------------------------------------------------

#: The failure-mode gateways' Redis timeout (seconds).
REDIS_TIMEOUT = 1.0


@dataclass(frozen=True)
class Sample:
    started: float
    ended: float
    status: int
    metered: bool
    code: str | None

    @classmethod
    def of(cls, started: float, response: httpx.Response) -> Sample:
        code = response.json().get("code") if response.status_code >= 400 else None
        return cls(started, time.monotonic(), response.status_code, "ratelimit-limit" in response.headers, code)

    def healthy(self) -> bool:
        """Forwarded and metered."""
        return self.status == 200 and self.metered

    def failure_mode(self, mode: str) -> bool:
        """What ``QUOTA_FAILURE_MODE`` promises while Redis is unavailable."""
        if mode == "open":
            return self.status == 200 and not self.metered
        return self.status == 503 and self.code == "quota_unavailable"


async def traffic(url: str, headers: dict[str, str], stop: asyncio.Event, workers: int = 6) -> list[Sample]:
    """Keep ``workers`` requests in flight until ``stop`` is set; record every outcome."""
    samples: list[Sample] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                samples.append(Sample.of(started, await client.get(url, headers=headers)))
            except httpx.HTTPError as exc:
                samples.append(Sample(started, time.monotonic(), 0, False, repr(exc)))

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=workers)) as client:
        await asyncio.gather(*(worker(client) for _ in range(workers)))
    return samples


@dataclass(frozen=True)
class FaultySetup:
    """A Redis of the test's own, a gateway on it, and a tenant that gateway serves."""

    redis_server: LocalRedis
    gateway: GatewayProcess
    tenant: Tenant

    @property
    def url(self) -> str:
        return self.gateway.url + "/during"

    @property
    def key(self) -> dict[str, str]:
        return {"X-API-Key": self.tenant.key}

    def ready(self) -> httpx.Response:
        return httpx.get(self.gateway.url + "/_gateway/readyz", timeout=10)


@contextlib.contextmanager
def failure_mode_gateway(quota: QuotaStack, mode: str, stem: str) -> Iterator[FaultySetup]:
    """A gateway with ``QUOTA_FAILURE_MODE=mode`` on a Redis that the test may break."""
    with own_redis(f"{stem}-{mode}") as server:
        gateway = quota.processes.start_gateway(
            f"gateway-{stem}-{mode}", REDIS_URL=server.url, REDIS_TIMEOUT=str(REDIS_TIMEOUT), QUOTA_FAILURE_MODE=mode
        )
        try:
            tenant = quota.tenant(f"{stem}-{mode}", quota.plan(10**6), gateways=[gateway])
            yield FaultySetup(server, gateway, tenant)
        finally:
            gateway.stop()


async def assert_counting_resumes(setup: FaultySetup) -> None:
    """Metered again within a bound, ready again, and every request counted once more."""
    deadline = time.monotonic() + 15
    while "ratelimit-limit" not in httpx.get(setup.url, headers=setup.key, timeout=10).headers:
        assert time.monotonic() < deadline, "counting did not resume after Redis came back"
        await asyncio.sleep(0.2)
    while (ready := setup.ready()).status_code != 200:
        assert time.monotonic() < deadline + 15, f"not ready again after Redis came back: {ready.text}"
        await asyncio.sleep(0.2)
    client = redis.Redis.from_url(setup.redis_server.url, socket_timeout=10)
    try:
        window = minute_with_margin(10)
        counter = minute_counter_key(setup.tenant.id, window)
        used = int(client.get(counter) or 0)
        resumed = [httpx.get(setup.url, headers=setup.key, timeout=10) for _ in range(5)]
        assert [r.status_code for r in resumed] == [200] * 5
        limit = int(resumed[0].headers["ratelimit-limit"])
        assert [int(r.headers["ratelimit-remaining"]) for r in resumed] == [limit - used - i for i in range(1, 6)]
        assert int(client.get(counter) or 0) == used + 5
        audit_keys(client, {setup.tenant.id})
    finally:
        client.close()


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_redis_killed_mid_run_applies_the_failure_mode_never_a_500_then_counting_resumes(
    quota: QuotaStack, mode: str
) -> None:
    with failure_mode_gateway(quota, mode, "kill") as setup:
        stop = asyncio.Event()
        running = asyncio.create_task(traffic(setup.url, setup.key, stop))
        await asyncio.sleep(1.5)
        killed_at = time.monotonic()
        await asyncio.to_thread(setup.redis_server.kill)  # SIGKILL, and wait until the process is gone
        dead_at = time.monotonic()
        await asyncio.sleep(3)  # longer than the gateway's one-second breaker: both paths are exercised
        stop.set()
        samples = await running
        ready_during = setup.ready().status_code

        before = [s for s in samples if s.ended < killed_at]
        after = [s for s in samples if s.started > dead_at]
        overlapping = [s for s in samples if s not in before and s not in after]
        assert before, "no traffic before the kill"
        assert after, "no traffic after the kill"
        assert [s for s in before if not s.healthy()] == []
        assert [s for s in after if not s.failure_mode(mode)] == []
        assert [s for s in overlapping if not (s.healthy() or s.failure_mode(mode))] == []
        # A dead Redis costs at most its timeout; the bound only catches a hang on a loaded machine.
        assert max(s.ended - s.started for s in after) < REDIS_TIMEOUT + 5
        assert ready_during == 503
        if mode == "closed":
            refused = httpx.get(setup.url, headers=setup.key, timeout=10)
            assert_problem(refused, 503, "quota_unavailable")
            assert int(refused.headers["retry-after"]) >= 1

        await asyncio.to_thread(setup.redis_server.start)  # the same port, empty (nothing was persisted)
        await assert_counting_resumes(setup)


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_redis_refusing_writes_applies_the_failure_mode_never_a_500(quota: QuotaStack, mode: str) -> None:
    """Redis up but answering errors (here: out of memory, as a full Redis with ``noeviction`` does)."""
    with failure_mode_gateway(quota, mode, "oom") as setup:
        client = redis.Redis.from_url(setup.redis_server.url, socket_timeout=10)
        try:
            client.config_set("maxmemory", "1")  # every write is refused: OOM command not allowed
            samples = []
            for _ in range(10):
                started = time.monotonic()
                samples.append(Sample.of(started, httpx.get(setup.url, headers=setup.key, timeout=10)))
            assert [s for s in samples if not s.failure_mode(mode)] == []
            assert max(s.ended - s.started for s in samples) < REDIS_TIMEOUT + 5
            client.config_set("maxmemory", "0")
        finally:
            client.close()
        await assert_counting_resumes(setup)
