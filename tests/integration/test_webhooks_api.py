"""Webhooks (contract §13) against real PostgreSQL and a real HTTP receiver on loopback: the admin API's rules, the
signing secret shown once, Standard Webhooks signatures checked by an independent implementation, retries with
growing delays, the delivery log, redelivery, deletion, and the connect-time address check."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from standardwebhooks import Webhook as StandardWebhook
from standardwebhooks import WebhookVerificationError

from support.assertions import assert_problem
from support.platform import Installation, in_process
from support.webhook_receiver import webhook_receiver
from tenant_service.context import AppContext
from tenant_service.outbox import emit
from tenant_service.secretbox import generate_key
from tenant_service.webhooks.connect import ForbiddenAddressError, SafeResolver, StaticResolver, check_literal
from tenant_service.webhooks.dispatcher import Dispatcher, backoff_seconds

FAST = {"WEBHOOK_BACKOFF_BASE_SECONDS": "0.2", "WEBHOOK_POLL_SECONDS": "0.2", "WEBHOOK_TIMEOUT_SECONDS": "3"}


@pytest.fixture(scope="module")
async def inst(pg_url: str, redis_url: str) -> AsyncIterator[Installation]:
    installation = Installation.isolated(pg_url, redis_url, label="webhooks")
    await installation.create()
    yield installation
    await installation.drop()


@contextlib.asynccontextmanager
async def dispatching(ctx: AppContext, dispatcher: Dispatcher | None = None) -> AsyncIterator[Dispatcher]:
    """A dispatcher running on the test's loop for the block."""
    dispatcher = dispatcher or Dispatcher(ctx)
    task = asyncio.create_task(dispatcher.run_forever())
    try:
        yield dispatcher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def subscribe(client: httpx.AsyncClient, url: str, events: list[str]) -> dict[str, Any]:
    response = await client.post("/admin/webhooks", json={"url": url, "events": events})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def registry_rows(inst: Installation, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(inst.database_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def verify(secret: str, received: Any) -> dict[str, Any]:
    """The payload, checked with the ``standardwebhooks`` package (not the platform's own code)."""
    verified: dict[str, Any] = StandardWebhook(secret).verify(received.body, received.headers)
    return verified


async def wait_delivery(client: httpx.AsyncClient, webhook_id: str, status: str, timeout: float = 20) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            page = (await client.get(f"/admin/webhooks/{webhook_id}/deliveries")).json()
            matching = [d for d in page["items"] if d["status"] == status]
            if matching:
                return matching[0]  # type: ignore[no-any-return]
            await asyncio.sleep(0.1)


# --- the admin API's rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://[fd00:ec2::254]/",
        "http://[fe80::1]/hook",
        "http://169.254.1.1:8080/hook",
        "http://metadata.google.internal/",
        "http://[::ffff:169.254.169.254]/",
        "http://2852039166/",
        "http://example.com/hook",
    ],
)
async def test_a_url_outside_the_upstream_rules_is_refused_at_creation(inst: Installation, url: str) -> None:
    async with in_process(inst) as (client, _):
        response = await client.post("/admin/webhooks", json={"url": url, "events": ["tenant.created"]})
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] in ("upstream_not_allowed", "validation_error"), response.text
        assert response.json()["errors"][0]["field"] == "url"
        assert (await client.get("/admin/webhooks")).json()["items"] == [] or all(
            w["url"] != url for w in (await client.get("/admin/webhooks")).json()["items"]
        )


async def test_unknown_events_bad_bodies_and_ids_are_4xx_problems(inst: Installation) -> None:
    async with in_process(inst) as (client, _):
        unknown = await client.post(
            "/admin/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["tenant.created", "tenant.exploded"]}
        )
        assert unknown.status_code == 422
        assert unknown.json()["code"] == "unknown_event"
        assert unknown.json()["errors"][0]["field"] == "events[1]"
        bodies: list[dict[str, Any]] = [
            {"url": "http://127.0.0.1:9/", "events": []},
            {"url": "ftp://127.0.0.1/", "events": ["tenant.created"]},
            {"events": ["tenant.created"]},
            {"url": "http://127.0.0.1:9/", "events": ["tenant.created"], "x": 1},
        ]
        for body in bodies:
            response = await client.post("/admin/webhooks", json=body)
            assert response.status_code in (400, 422), (body, response.text)
            assert "code" in response.json()
        assert (await client.get("/admin/webhooks/not-a-uuid")).status_code == 404
        assert (await client.get(f"/admin/webhooks/{uuid.uuid4()}")).json()["code"] == "webhook_not_found"
        assert (await client.delete(f"/admin/webhooks/{uuid.uuid4()}")).status_code == 404
        assert (await client.get("/admin/webhooks", params={"cursor": "nope"})).status_code == 422
        assert (await client.get("/admin/webhooks", headers={"Authorization": "Bearer wrong"})).status_code == 401


async def test_the_secret_is_shown_once_sealed_at_rest_and_never_listed_or_audited(inst: Installation) -> None:
    async with in_process(inst) as (client, _):
        created = await subscribe(client, "http://127.0.0.1:9/once", ["tenant.created", "tenant.created"])
        secret = created["secret"]
        assert secret.startswith("whsec_")
        assert created["events"] == ["tenant.created"]
        listed = (await client.get("/admin/webhooks", params={"limit": 200})).json()
        one = (await client.get(f"/admin/webhooks/{created['id']}")).json()
        assert created["id"] in [w["id"] for w in listed["items"]]
        for shown in (listed, one):
            assert secret not in str(shown)
            assert "secret" not in str(shown)
        audit = (await client.get("/admin/audit", params={"limit": 200})).text
        assert "webhook.create" in audit
        assert secret not in audit
        rows = await registry_rows(inst, "SELECT secret_enc FROM webhooks WHERE id = $1", uuid.UUID(created["id"]))
        assert rows[0]["secret_enc"].startswith("v1.")
        assert secret.removeprefix("whsec_") not in rows[0]["secret_enc"]
        assert (await client.delete(f"/admin/webhooks/{created['id']}")).status_code == 204
        assert (await client.get(f"/admin/webhooks/{created['id']}")).status_code == 404
        assert "webhook.delete" in (await client.get("/admin/audit", params={"limit": 200})).text


# --- deliveries -----------------------------------------------------------------------------------------


async def test_signed_deliveries_log_redelivery_and_delete_stops_them(inst: Installation) -> None:
    async with webhook_receiver() as receiver, in_process(inst, **FAST) as (client, ctx):
        hook = await subscribe(client, receiver.url("/life"), ["tenant.created", "tenant.suspended", "tenant.updated"])
        async with dispatching(ctx):
            tenant = (await client.post("/admin/tenants", json={"slug": "wh-life", "name": "Life"})).json()
            assert (await client.post("/admin/tenants/wh-life/suspend")).status_code == 200
            await receiver.wait_for(lambda got: len([r for r in got if r.path == "/life"]) >= 2)
            got = receiver.at("/life")
            payloads = [verify(hook["secret"], r) for r in got]
            assert [p["type"] for p in payloads] == ["tenant.created", "tenant.suspended"] or sorted(
                p["type"] for p in payloads
            ) == ["tenant.created", "tenant.suspended"]
            created = next(p for p in payloads if p["type"] == "tenant.created")
            assert created["data"]["tenant_id"] == tenant["id"]
            assert created["data"]["slug"] == "wh-life"
            assert created["data"]["status"] == "active"
            assert "api_key" not in created["data"]
            assert "password" not in str(created["data"])
            suspended = next(p for p in payloads if p["type"] == "tenant.suspended")
            assert suspended["data"]["status"] == "suspended"
            first = got[0]
            assert first.headers["Content-Type"] == "application/json"
            assert first.headers["User-Agent"].startswith("Tenantry-Webhooks")
            assert first.headers["webhook-id"].startswith("msg_")
            assert first.body.startswith(b'{"type":')  # compact JSON, type first

            delivered = await wait_delivery(client, hook["id"], "delivered")
            assert delivered["attempts"] == 1
            assert delivered["last_status_code"] == 200
            assert delivered["event_type"] in ("tenant.created", "tenant.suspended")
            page = (await client.get(f"/admin/webhooks/{hook['id']}/deliveries", params={"limit": 1})).json()
            assert len(page["items"]) == 1
            assert page["next_cursor"]
            rest = await client.get(f"/admin/webhooks/{hook['id']}/deliveries", params={"cursor": page["next_cursor"]})
            assert len(rest.json()["items"]) == 1
            assert rest.json()["items"][0]["id"] != page["items"][0]["id"]
            view = (await client.get(f"/admin/webhooks/{hook['id']}")).json()
            assert view["consecutive_failures"] == 0
            assert view["last_success_at"]

            # Redeliver one: the same event id (receivers deduplicate on it), a fresh valid signature.
            before = len(receiver.at("/life"))
            again = await client.post(f"/admin/webhooks/{hook['id']}/deliveries/{delivered['id']}/redeliver")
            assert again.status_code == 202, again.text
            assert again.json()["status"] == "pending"
            await receiver.wait_for(lambda got: len([r for r in got if r.path == "/life"]) > before)
            repeat = receiver.at("/life")[-1]
            assert repeat.headers["webhook-id"] == delivered["event_id"]
            verify(hook["secret"], repeat)
            other = await client.post(f"/admin/webhooks/{hook['id']}/deliveries/{uuid.uuid4()}/redeliver")
            assert other.status_code == 404
            assert other.json()["code"] == "delivery_not_found"

            # Deleted: nothing more arrives.
            assert (await client.delete(f"/admin/webhooks/{hook['id']}")).status_code == 204
            count = len(receiver.at("/life"))
            assert (await client.patch("/admin/tenants/wh-life", json={"name": "Renamed"})).status_code == 200
            await asyncio.sleep(1.5)
            assert len(receiver.at("/life")) == count
            audit = (await client.get("/admin/audit", params={"limit": 200})).text
            assert "webhook.redeliver" in audit
            metrics = (await client.get("/metrics")).text
            assert 'tenantry_webhook_deliveries_total{outcome="delivered"}' in metrics
            for gauge in ("outbox_depth", "pending_deliveries", "oldest_pending_seconds"):
                assert f"tenantry_webhook_{gauge} " in metrics


async def test_a_receiver_failing_three_times_gets_the_event_once_successfully_with_growing_delays(
    inst: Installation,
) -> None:
    async with webhook_receiver() as receiver, in_process(inst, **FAST) as (client, ctx):
        hook = await subscribe(client, receiver.url("/flaky"), ["tenant.updated"])
        receiver.script["/flaky"] = [500, 500, 500]
        async with dispatching(ctx):
            await client.post("/admin/tenants", json={"slug": "wh-flaky", "name": "Flaky"})
            assert (await client.patch("/admin/tenants/wh-flaky", json={"name": "Flakier"})).status_code == 200
            await receiver.wait_for(lambda got: any(r.path == "/flaky" and r.status == 200 for r in got))
            await asyncio.sleep(1.0)  # nothing more comes after the success
        got = receiver.at("/flaky")
        assert [r.status for r in got] == [500, 500, 500, 200]
        assert len({r.headers["webhook-id"] for r in got}) == 1
        for r in got:
            assert verify(hook["secret"], r)["data"]["name"] == "Flakier"
        gaps = [b.at - a.at for a, b in itertools.pairwise(got)]
        # base 0.2 s doubling with half jitter: [0.1, 0.2], [0.2, 0.4], [0.4, 0.8] (plus scheduling)
        assert gaps[0] >= 0.09, gaps
        assert gaps[1] >= 0.19, gaps
        assert gaps[2] >= 0.39, gaps
        assert gaps[2] > gaps[0], gaps
        delivery = await wait_delivery(client, hook["id"], "delivered")
        assert delivery["attempts"] == 4
        assert delivery["last_status_code"] == 200
        view = (await client.get(f"/admin/webhooks/{hook['id']}")).json()
        assert view["consecutive_failures"] == 0
        assert view["last_failure_at"]
        assert view["last_success_at"]


async def test_a_delivery_gives_up_after_the_retry_period_and_the_endpoint_records_failures(inst: Installation) -> None:
    async with webhook_receiver() as receiver, in_process(inst, **FAST, WEBHOOK_RETRY_HOURS="0.0003") as (client, ctx):
        hook = await subscribe(client, receiver.url("/down"), ["tenant.suspended"])
        receiver.script["/down"] = [503] * 100
        async with dispatching(ctx):
            await client.post("/admin/tenants", json={"slug": "wh-down", "name": "Down"})
            await client.post("/admin/tenants/wh-down/suspend")
            failed = await wait_delivery(client, hook["id"], "failed", timeout=30)
        assert failed["last_status_code"] == 503
        assert failed["last_error"] == "HTTP 503"
        assert failed["attempts"] >= 2
        view = (await client.get(f"/admin/webhooks/{hook['id']}")).json()
        assert view["consecutive_failures"] == failed["attempts"]
        assert view["last_error"] == "HTTP 503"


def test_backoff_doubles_with_half_jitter_and_is_capped() -> None:
    for attempt, full in ((1, 5), (2, 10), (3, 20), (12, 3600), (60, 3600)):
        for _ in range(50):
            delay = backoff_seconds(attempt, 5, 3600)
            assert full / 2 <= delay <= full


async def test_a_slow_endpoint_holds_only_its_share_and_the_others_are_delivered_meanwhile(
    fresh_installation: Installation,
) -> None:
    """Four slots, two per endpoint: a slow endpoint with a backlog of older events (each answer takes 0.8 s) gets
    two at a time, and a quick endpoint's newer events are delivered while the slow one's first two still wait."""
    settings = {**FAST, "WEBHOOK_CONCURRENCY": "4", "WEBHOOK_ENDPOINT_CONCURRENCY": "2"}
    async with webhook_receiver() as receiver, in_process(fresh_installation, **settings) as (client, ctx):
        receiver.delays["/slow"] = 0.8
        await subscribe(client, receiver.url("/slow"), ["tenant.updated"])
        await subscribe(client, receiver.url("/quick"), ["tenant.resumed"])
        async with ctx.sessions() as session, session.begin():
            for i in range(12):
                emit(session, "tenant.updated", {"n": i}, tenant_id=uuid.uuid4(), slug=f"slow-{i}")
        await asyncio.sleep(0.05)  # the quick endpoint's events are newer than every one of the backlog
        async with ctx.sessions() as session, session.begin():
            for i in range(3):
                emit(session, "tenant.resumed", {"n": i}, tenant_id=uuid.uuid4(), slug=f"quick-{i}")
        async with dispatching(ctx):
            await receiver.wait_for(lambda got: len([r for r in got if r.path == "/slow"]) >= 3, timeout=20)
        slow, quick = receiver.at("/slow"), receiver.at("/quick")
        assert len(quick) == 3
        assert max(r.at for r in quick) < slow[2].at  # the quick ones did not wait for the slow ones
        assert receiver.peak["/slow"] == 2


async def test_a_webhook_failing_for_the_disable_period_is_disabled_until_an_admin_enables_it(
    fresh_installation: Installation,
) -> None:
    """WEBHOOK_DISABLE_AFTER_HOURS = 0.0005 (1.8 s): a receiver that only answers 500 gets its webhook disabled; then no
    event is queued for it and its pending delivery waits (a redelivery is refused); enabled again, that delivery goes
    out."""
    settings = {**FAST, "WEBHOOK_DISABLE_AFTER_HOURS": "0.0005"}
    async with webhook_receiver() as receiver, in_process(fresh_installation, **settings) as (client, ctx):
        receiver.script["/down"] = [500] * 10_000
        hook = await subscribe(client, receiver.url("/down"), ["tenant.updated"])
        path = f"/admin/webhooks/{hook['id']}"
        async with ctx.sessions() as session, session.begin():
            emit(session, "tenant.updated", {"n": 1}, tenant_id=uuid.uuid4(), slug="down-1")
        async with dispatching(ctx):
            async with asyncio.timeout(30):
                while (view := (await client.get(path)).json())["enabled"]:
                    await asyncio.sleep(0.1)
            assert view["disabled_reason"] == "every attempt failed for 0.0005 hours"
            assert view["failing_since"] is not None
            assert view["disabled_at"] is not None
            assert view["consecutive_failures"] >= 2
            attempts = len(receiver.at("/down"))
            async with ctx.sessions() as session, session.begin():
                emit(session, "tenant.updated", {"n": 2}, tenant_id=uuid.uuid4(), slug="down-2")
            await asyncio.sleep(1.0)  # several poll intervals of the dispatcher (0.2 s)
            assert len(receiver.at("/down")) == attempts
            (pending,) = (await client.get(f"{path}/deliveries")).json()["items"]  # not the second event's
            assert pending["status"] == "pending"
            refused = await client.post(f"{path}/deliveries/{pending['id']}/redeliver")
            assert_problem(refused, 409, "webhook_disabled")

            receiver.script["/down"] = []  # the receiver is back
            enabled = await client.patch(path, json={"enabled": True})
            assert enabled.status_code == 200, enabled.text
            assert enabled.json()["enabled"] is True
            assert enabled.json()["failing_since"] is None
            await receiver.wait_for(lambda got: any(r.status == 200 for r in got if r.path == "/down"))
            assert (await wait_delivery(client, hook["id"], "delivered"))["id"] == pending["id"]
        # An admin may disable one too; it is audited like any change.
        disabled = await client.patch(path, json={"enabled": False})
        assert disabled.json()["enabled"] is False
        assert disabled.json()["disabled_reason"].startswith("disabled by admin:")
        assert_problem(await client.patch(path, json={"enabled": "yes"}), 422, "validation_error")
        audit = await registry_rows(
            fresh_installation, "SELECT before, after FROM audit_log WHERE action = 'webhook.update' ORDER BY id"
        )
        changes = [(json.loads(r["before"])["enabled"], json.loads(r["after"])["enabled"]) for r in audit]
        assert changes == [(False, True), (True, False)]


# --- the connect-time address check ---------------------------------------------------------------------


async def test_a_name_that_resolves_to_a_metadata_address_is_refused_at_connect_time(inst: Installation) -> None:
    """The allow-list admits ``*.test``; ``evil.test`` resolves (a pinned hosts map, as after DNS rebinding) to
    169.254.169.254: the dispatcher never connects there and records why; ``good.test`` resolves to loopback and is
    delivered through the same resolver."""
    hosts = {
        "evil.test": ["169.254.169.254"],
        "good.test": ["127.0.0.1"],
        "mixed.test": ["169.254.169.254", "127.0.0.1"],
    }
    allow = "127.0.0.1,localhost,::1,*.test"
    async with webhook_receiver() as receiver, in_process(inst, **FAST, UPSTREAM_ALLOWLIST=allow) as (client, ctx):
        evil = await subscribe(client, receiver.url("/evil", host="evil.test"), ["tenant.resumed"])
        good = await subscribe(client, receiver.url("/good", host="good.test"), ["tenant.resumed"])
        mixed = await subscribe(client, receiver.url("/mixed", host="mixed.test"), ["tenant.resumed"])
        async with dispatching(ctx, Dispatcher(ctx, resolver=StaticResolver(hosts))):
            await client.post("/admin/tenants", json={"slug": "wh-dns", "name": "Dns"})
            await client.post("/admin/tenants/wh-dns/suspend")
            await client.post("/admin/tenants/wh-dns/resume")
            await receiver.wait_for(lambda got: {"/good", "/mixed"} <= {r.path for r in got})
            async with asyncio.timeout(20):
                while True:
                    items = (await client.get(f"/admin/webhooks/{evil['id']}/deliveries")).json()["items"]
                    if items and items[0]["last_error"]:
                        break
                    await asyncio.sleep(0.1)
        assert not receiver.at("/evil")
        assert items[0]["status"] == "pending"
        assert items[0]["last_status_code"] is None
        assert items[0]["last_error"].startswith("address refused"), items[0]
        assert (await client.get(f"/admin/webhooks/{evil['id']}")).json()["last_error"].startswith("address refused")
        verify(good["secret"], receiver.at("/good")[0])
        verify(mixed["secret"], receiver.at("/mixed")[0])


async def test_the_safe_resolver_and_literal_check_with_the_system_resolver() -> None:
    resolver = SafeResolver()
    try:
        answers = await resolver.resolve("localhost", 80, socket.AF_UNSPEC)
        assert answers
        assert all(a["host"] in ("127.0.0.1", "::1") for a in answers)
    finally:
        await resolver.close()
    refusing = SafeResolver(StaticResolver({"imds.test": ["169.254.169.254", "fd00:ec2::254"]}))
    with pytest.raises(ForbiddenAddressError):
        await refusing.resolve("imds.test", 80)
    for host in ("169.254.169.254", "[fd00:ec2::254]", "[fe80::1]", "0.0.0.0", "224.0.0.1"):
        with pytest.raises(ForbiddenAddressError):
            check_literal(host)
    check_literal("127.0.0.1")
    check_literal("example.com")


# --- secrets at rest and key rotation ------------------------------------------------------------------


async def test_rotate_encryption_reseals_webhook_secrets_and_deliveries_still_verify(
    fresh_installation: Installation,
) -> None:
    inst = fresh_installation
    old = inst.encryption_keys
    new = f"k2:{generate_key()}"
    async with webhook_receiver() as receiver:
        async with in_process(inst) as (client, _):
            hook = await subscribe(client, receiver.url("/rotated"), ["tenant.created"])
            # A rotated signing secret, the replaced one still in its grace period: both are sealed, both re-sealed.
            replaced = hook["secret"]
            rotated = await client.post(f"/admin/webhooks/{hook['id']}/rotate-secret", json={"grace_seconds": 3600})
            hook = rotated.json()
        rows = await registry_rows(inst, "SELECT secret_enc, previous_secret_enc FROM webhooks")
        assert rows[0]["secret_enc"].startswith("v1.k1.")
        assert rows[0]["previous_secret_enc"].startswith("v1.k1.")

        result = inst.tenantctl("rotate-encryption", env={"ENCRYPTION_KEYS": f"{new},{old}"})
        assert "re-encrypted 2 secret(s) with key k2" in result.stdout
        assert hook["secret"] not in result.stdout + result.stderr
        rows = await registry_rows(inst, "SELECT secret_enc, previous_secret_enc FROM webhooks")
        assert rows[0]["secret_enc"].startswith("v1.k2.")
        assert rows[0]["previous_secret_enc"].startswith("v1.k2.")

        # The old key is gone: the secret still signs, and the receiver's check passes.
        async with in_process(inst, ENCRYPTION_KEYS=new, **FAST) as (client, ctx), dispatching(ctx):
            await client.post("/admin/tenants", json={"slug": "wh-rotated", "name": "Rotated"})
            await receiver.wait_for(lambda got: any(r.path == "/rotated" for r in got))
        assert verify(hook["secret"], receiver.at("/rotated")[0])["type"] == "tenant.created"
        assert verify(replaced, receiver.at("/rotated")[0])["type"] == "tenant.created"


async def test_a_url_the_allow_list_no_longer_admits_is_not_called(inst: Installation) -> None:
    async with webhook_receiver() as receiver:
        wide = "127.0.0.1,localhost,::1,*.test"
        async with in_process(inst, UPSTREAM_ALLOWLIST=wide) as (client, _):
            hook = await subscribe(client, receiver.url("/shrunk", host="shrunk.test"), ["tenant.created"])
        resolver = StaticResolver({"shrunk.test": ["127.0.0.1"]})
        async with (
            in_process(inst, **FAST) as (client, ctx),
            dispatching(ctx, Dispatcher(ctx, resolver=resolver)),
        ):
            await client.post("/admin/tenants", json={"slug": "wh-shrunk", "name": "Shrunk"})
            async with asyncio.timeout(20):
                while not (items := (await client.get(f"/admin/webhooks/{hook['id']}/deliveries")).json()["items"]) or (
                    not items[0]["last_error"]
                ):
                    await asyncio.sleep(0.1)
        assert items[0]["last_error"] == "address refused: the URL is no longer allowed by UPSTREAM_ALLOWLIST"
        assert not receiver.at("/shrunk")


async def test_retention_forgets_finished_events_and_keeps_pending_ones(fresh_installation: Installation) -> None:
    inst = fresh_installation
    async with webhook_receiver() as receiver, in_process(inst, **FAST, WEBHOOK_RETENTION_DAYS="0") as (client, ctx):
        good = await subscribe(client, receiver.url("/kept"), ["tenant.created"])
        receiver.script["/stuck"] = [500] * 1000
        stuck = await subscribe(client, receiver.url("/stuck"), ["tenant.suspended"])
        dispatcher = Dispatcher(ctx)
        async with dispatching(ctx, dispatcher):
            await client.post("/admin/tenants", json={"slug": "wh-prune", "name": "Prune"})
            await client.post("/admin/tenants/wh-prune/suspend")
            await wait_delivery(client, good["id"], "delivered")
            await receiver.wait_for(lambda got: any(r.path == "/stuck" for r in got))
        deleted = await dispatcher.prune()
        assert deleted == 1  # tenant.created, delivered; tenant.suspended is still pending
        assert (await client.get(f"/admin/webhooks/{good['id']}/deliveries")).json()["items"] == []
        (pending,) = (await client.get(f"/admin/webhooks/{stuck['id']}/deliveries")).json()["items"]
        assert pending["status"] == "pending"
        left = await registry_rows(inst, "SELECT type FROM event_outbox")
        assert [r["type"] for r in left] == ["tenant.suspended"]


async def test_a_redirect_is_not_followed_but_counted_as_a_failed_attempt(inst: Installation) -> None:
    async with webhook_receiver() as receiver, in_process(inst, **FAST) as (client, ctx):
        hook = await subscribe(client, receiver.url("/moved"), ["tenant.created"])
        receiver.script["/moved"] = [307]
        receiver.redirect_to = receiver.url("/elsewhere")
        async with dispatching(ctx):
            await client.post("/admin/tenants", json={"slug": "wh-redirect", "name": "Redirect"})
            await receiver.wait_for(lambda got: [r.status for r in got if r.path == "/moved"] == [307, 200])
        assert not receiver.at("/elsewhere")
        delivered = await wait_delivery(client, hook["id"], "delivered")
        assert delivered["attempts"] == 2


# --- changing a webhook, rotating its secret ------------------------------------------------------------


async def test_a_webhook_s_url_and_events_change_with_the_rules_of_creation(inst: Installation) -> None:
    async with in_process(inst) as (client, _):
        hook = await subscribe(client, "http://127.0.0.1:9/before", ["tenant.created"])
        changed = await client.patch(
            f"/admin/webhooks/{hook['id']}",
            json={"url": "http://127.0.0.1:9/after", "events": ["tenant.purged", "tenant.created", "tenant.purged"]},
        )
        assert changed.status_code == 200, changed.text
        body = changed.json()
        assert (body["url"], body["events"]) == ("http://127.0.0.1:9/after", ["tenant.created", "tenant.purged"])
        assert body["updated_at"]
        assert "secret" not in body
        only_events = await client.patch(f"/admin/webhooks/{hook['id']}", json={"events": ["backup.failed"]})
        assert (only_events.json()["url"], only_events.json()["events"]) == (
            "http://127.0.0.1:9/after",
            ["backup.failed"],
        )
        refused = {
            "upstream": ({"url": "http://169.254.169.254/"}, 422, "url"),
            "event": ({"events": ["tenant.nope"]}, 422, "events[0]"),
            "empty events": ({"events": []}, 422, "events"),
            "nothing": ({}, 422, "body"),
            "unknown field": ({"secret": "whsec_x"}, 422, "secret"),
        }
        for name, (payload, status, field) in refused.items():
            answer = await client.patch(f"/admin/webhooks/{hook['id']}", json=payload)
            assert answer.status_code == status, (name, answer.text)
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert field in str(answer.json().get("errors")), (name, answer.text)
        missing = await client.patch(f"/admin/webhooks/{uuid.uuid4()}", json={"events": ["tenant.created"]})
        assert (missing.status_code, missing.json()["code"]) == (404, "webhook_not_found")
        view = (await client.get(f"/admin/webhooks/{hook['id']}")).json()
        assert (view["url"], view["events"]) == ("http://127.0.0.1:9/after", ["backup.failed"])
        audit = (await client.get("/admin/audit", params={"limit": 200})).text
        assert "webhook.update" in audit


async def test_a_rotated_secret_signs_next_to_the_old_one_for_the_grace_period_then_alone(
    inst: Installation,
) -> None:
    async with webhook_receiver() as receiver, in_process(inst, **FAST) as (client, ctx):
        hook = await subscribe(client, receiver.url("/rotate"), ["tenant.updated"])
        old_secret = hook["secret"]
        tenant = (await client.post("/admin/tenants", json={"slug": "wh-rotate", "name": "Rotate"})).json()
        rotated = await client.post(f"/admin/webhooks/{hook['id']}/rotate-secret", json={"grace_seconds": 3600})
        assert rotated.status_code == 200, rotated.text
        new_secret = rotated.json()["secret"]
        assert new_secret.startswith("whsec_")
        assert new_secret != old_secret
        assert rotated.json()["rotation_ends_at"]
        listed = (await client.get(f"/admin/webhooks/{hook['id']}")).text
        assert new_secret not in listed
        assert old_secret not in listed
        audit = (await client.get("/admin/audit", params={"limit": 200})).text
        assert "webhook.rotate_secret" in audit
        assert new_secret not in audit

        async with dispatching(ctx):
            assert (await client.patch("/admin/tenants/wh-rotate", json={"name": "One"})).status_code == 200
            await receiver.wait_for(lambda got: len([r for r in got if r.path == "/rotate"]) >= 1)
            during = receiver.at("/rotate")[-1]
            assert len(during.headers["webhook-signature"].split(" ")) == 2
            # A receiver still on the old secret, and one already on the new: both verify.
            assert verify(old_secret, during)["data"]["tenant_id"] == tenant["id"]
            assert verify(new_secret, during)["data"]["tenant_id"] == tenant["id"]

            # A second rotation with no grace: only the newest secret signs from now on.
            again = await client.post(f"/admin/webhooks/{hook['id']}/rotate-secret", json={"grace_seconds": 0})
            assert again.status_code == 200, again.text
            newest = again.json()["secret"]
            assert again.json()["rotation_ends_at"] is None
            assert (await client.patch("/admin/tenants/wh-rotate", json={"name": "Two"})).status_code == 200
            await receiver.wait_for(lambda got: len([r for r in got if r.path == "/rotate"]) >= 2)
            after = receiver.at("/rotate")[-1]
            assert len(after.headers["webhook-signature"].split(" ")) == 1
            assert verify(newest, after)["data"]["name"] == "Two"
            for stale in (old_secret, new_secret):
                with pytest.raises(WebhookVerificationError):
                    verify(stale, after)

        no_body = await client.post(f"/admin/webhooks/{hook['id']}/rotate-secret")
        assert no_body.status_code == 200, no_body.text
        assert no_body.json()["rotation_ends_at"]
        too_long = await client.post(f"/admin/webhooks/{hook['id']}/rotate-secret", json={"grace_seconds": 10**9})
        assert too_long.status_code == 422
        missing = await client.post(f"/admin/webhooks/{uuid.uuid4()}/rotate-secret")
        assert missing.status_code == 404


async def test_tenantctl_manages_webhooks_like_the_api(inst: Installation) -> None:
    made = json.loads(
        inst.tenantctl("webhooks", "create", "http://127.0.0.1:9/cli", "--event", "tenant.created").stdout
    )
    assert made["secret"].startswith("whsec_")
    listed = inst.tenantctl("webhooks", "list", "--limit", "200").stdout
    assert made["id"] in listed
    assert made["secret"] not in listed
    changed = json.loads(
        inst.tenantctl("webhooks", "update", made["id"], "--event", "backup.failed", "--event", "tenant.purged").stdout
    )
    assert changed["events"] == ["tenant.purged", "backup.failed"]
    rotated = json.loads(inst.tenantctl("webhooks", "rotate-secret", made["id"], "--grace-seconds", "0").stdout)
    assert rotated["secret"] != made["secret"]
    assert rotated["rotation_ends_at"] is None
    refused = inst.tenantctl("webhooks", "update", made["id"], "--url", "http://169.254.169.254/", check=False)
    assert refused.returncode == 1
    assert "upstream_not_allowed" in refused.stderr
    assert inst.tenantctl("webhooks", "delete", made["id"]).returncode == 0
    gone = inst.tenantctl("webhooks", "delete", made["id"], check=False)
    assert gone.returncode == 1
    assert "webhook_not_found" in gone.stderr
    async with in_process(inst) as (client, _):
        audit = (await client.get("/admin/audit", params={"limit": 200})).text
    for action in ("webhook.create", "webhook.update", "webhook.rotate_secret", "webhook.delete"):
        assert action in audit
    assert made["secret"] not in audit
