"""Usage history in the tenant-service (contract §13): ingest of the gateways' batches (counted once per batch id),
quota alerts (one per threshold and day), plan thresholds, the history API and its validation, the upkeep pass.
The gateway's side is in tests/e2e/test_usage_history.py."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from support.assertions import assert_problem, create_tenant, uniq
from support.platform import Installation, registry
from tenant_service.app import create_app
from tenant_service.context import AppContext
from tenant_service.usage.history import history_window
from tenant_service.usage.upkeep import upkeep_once

HOUR = 3600
FAR = 2**39 // HOUR * HOUR  # an hour far in the future


@pytest.fixture
async def internal(ctx: AppContext, installation: Installation) -> AsyncIterator[httpx.AsyncClient]:
    """The internal API as a gateway calls it (its own service token)."""
    app = create_app(ctx, run_background=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://testserver.local",
        headers={"Authorization": f"Bearer {installation.gateway_token}"},
    ) as client:
        yield client


def this_hour() -> int:
    return int(time.time()) // HOUR * HOUR


def batch(*counts: tuple[str, int, int, int], batch_id: str | None = None) -> dict[str, Any]:
    return {
        "batch_id": batch_id or str(uuid.uuid4()),
        "counts": [{"tenant_id": t, "hour": h, "requests": r, "rejected": j} for t, h, r, j in counts],
    }


async def send(internal: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await internal.post("/internal/v1/usage", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def plan_with(api: httpx.AsyncClient, per_day: int, thresholds: list[float] | None = None) -> str:
    name = uniq("plan").replace("t-", "p", 1)[:32]
    body: dict[str, Any] = {"limits": {"requests_per_minute": 1_000_000, "requests_per_day": per_day}}
    if thresholds is not None:
        body["alert_thresholds"] = thresholds
    response = await api.put(f"/admin/plans/{name}", json=body)
    assert response.status_code == 200, response.text
    return name


async def test_a_batch_counts_once_however_often_it_is_sent(
    api: httpx.AsyncClient, internal: httpx.AsyncClient, installation: Installation
) -> None:
    tenant = await create_tenant(api, uniq("usage-once"))
    hour = this_hour()
    body = batch((tenant["id"], hour, 7, 2), (tenant["id"], hour - HOUR, 5, 0), (str(uuid.uuid4()), hour, 9, 9))
    assert (await send(internal, body))["duplicate"] is False
    answers = await asyncio.gather(*(send(internal, body) for _ in range(5)))
    assert all(answer["duplicate"] for answer in answers)
    assert all(answer["batch_id"] == body["batch_id"] for answer in answers)
    await send(internal, batch((tenant["id"], hour, 3, 1)))
    rows = await registry(
        installation, "SELECT hour, requests, rejected FROM usage_hourly WHERE tenant_id = $1", uuid.UUID(tenant["id"])
    )
    by_hour = {int(r["hour"].timestamp()): (r["requests"], r["rejected"]) for r in rows}
    assert by_hour == {hour: (10, 3), hour - HOUR: (5, 0)}
    days = await registry(
        installation, "SELECT sum(requests) AS r, sum(rejected) AS j FROM usage_daily WHERE tenant_id = $1",
        uuid.UUID(tenant["id"]),
    )  # fmt: skip
    assert (days[0]["r"], days[0]["j"]) == (15, 3)
    usage = (await api.get(f"/admin/tenants/{tenant['slug']}/usage")).json()
    assert usage["granularity"] == "hour"
    assert len(usage["history"]) == 24
    assert usage["history"][-1]["start"] == datetime.fromtimestamp(hour, UTC).isoformat().replace("+00:00", "Z")
    assert (usage["history"][-1]["requests"], usage["history"][-1]["rejected"]) == (10, 3)
    assert (usage["history"][-2]["requests"], usage["history"][-2]["rejected"]) == (5, 0)
    assert all(b["requests"] == 0 and b["rejected"] == 0 for b in usage["history"][:-2])
    for key in ("tenant_id", "database", "requests_minute", "requests_day", "quota_counters_available"):
        assert key in usage  # §3's usage is still there
    metrics = (await api.get("/metrics")).text
    assert 'tenantry_usage_batches_total{outcome="duplicate"}' in metrics
    assert 'tenantry_usage_batches_total{outcome="ingested"}' in metrics


async def test_only_the_gateway_token_may_report_usage(
    ctx: AppContext, installation: Installation, internal: httpx.AsyncClient
) -> None:
    app = create_app(ctx, run_background=False)
    body = batch((str(uuid.uuid4()), this_hour(), 1, 0))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t.local") as client:
        as_app = await client.post(
            "/internal/v1/usage", json=body, headers={"Authorization": f"Bearer {installation.service_token}"}
        )
        assert_problem(as_app, 403)
        as_admin = await client.post(
            "/internal/v1/usage", json=body, headers={"Authorization": f"Bearer {installation.admin_token}"}
        )
        assert as_admin.status_code in (401, 403)
        nobody = await client.post("/internal/v1/usage", json=body)
        assert_problem(nobody, 401)


async def test_the_openapi_document_names_the_usage_scope_and_the_history_parameters(api: httpx.AsyncClient) -> None:
    paths = (await api.get("/schema/openapi.json")).json()["paths"]
    ingest = paths["/internal/v1/usage"]["post"]
    assert ingest["security"] == [{"serviceToken": ["usage:write"]}]
    assert {"403", "422"} <= set(ingest["responses"])
    history = paths["/admin/tenants/{ref}/usage"]["get"]
    assert {"from", "to", "granularity"} <= {p["name"] for p in history["parameters"]}


@pytest.mark.parametrize(
    "body",
    [
        {"batch_id": "not-a-uuid", "counts": []},
        {"batch_id": str(uuid.uuid4()), "counts": [{"tenant_id": "x", "hour": 1801, "requests": 1, "rejected": 0}]},
        {"batch_id": str(uuid.uuid4()), "counts": [{"tenant_id": "x", "hour": 3600, "requests": -1, "rejected": 0}]},
        {"batch_id": str(uuid.uuid4()), "counts": [{"tenant_id": "x", "hour": FAR, "requests": 1, "rejected": 0}]},
        {"batch_id": str(uuid.uuid4()), "counts": [{"tenant_id": "x", "hour": 3600, "requests": 1}]},
        {"batch_id": str(uuid.uuid4()), "counts": [], "extra": 1},
        {"batch_id": str(uuid.uuid4()), "counts": [{"tenant_id": "x", "hour": 0, "requests": 0, "rejected": 0}] * 251},
    ],
)
async def test_a_malformed_batch_is_422(internal: httpx.AsyncClient, body: dict[str, Any]) -> None:
    assert_problem(await internal.post("/internal/v1/usage", json=body), 422)


async def test_each_threshold_alerts_once_a_day_however_usage_hovers(
    api: httpx.AsyncClient, internal: httpx.AsyncClient, installation: Installation
) -> None:
    plan = await plan_with(api, 100, [0.5, 0.8, 1.0])
    tenant = await create_tenant(api, uniq("usage-alerts"), plan=plan)
    tid, hour = tenant["id"], this_hour()
    await send(internal, batch((tid, hour, 49, 0)))
    assert await alerts(installation, tid) == []
    await send(internal, batch((tid, hour, 1, 0)))  # 50: crosses 0.5
    await send(internal, batch((tid, hour, 35, 0)))  # 85: crosses 0.8
    # Hovering at the limit: served requests stop at 100, refused ones go on, from several gateways at once.
    await asyncio.gather(*(send(internal, batch((tid, hour, 3, 4))) for _ in range(5)))
    for _ in range(5):
        await send(internal, batch((tid, hour, 0, 10)))
    got = await alerts(installation, tid)
    assert [a["threshold"] for a in got] == [0.5, 0.8, 1.0]
    events = await registry(
        installation,
        "SELECT body FROM event_outbox WHERE tenant_id = $1 AND type = 'quota.threshold' ORDER BY seq",
        uuid.UUID(tid),
    )
    datas = [json.loads(e["body"])["data"] if isinstance(e["body"], str) else e["body"]["data"] for e in events]
    assert [d["threshold"] for d in datas] == [0.5, 0.8, 1.0]
    today = datetime.now(UTC).date().isoformat()
    assert datas[0] == {"tenant_id": tid, "slug": tenant["slug"], "threshold": 0.5, "requests_per_day": 100,
                        "requests": 50, "day": today}  # fmt: skip
    assert datas[2]["requests"] >= 100


async def test_tenant_limits_override_the_plan_and_no_limit_no_alert(
    api: httpx.AsyncClient, internal: httpx.AsyncClient, installation: Installation
) -> None:
    plan = await plan_with(api, 1000)
    tenant = await create_tenant(api, uniq("usage-override"), plan=plan)
    patched = await api.patch(f"/admin/tenants/{tenant['id']}", json={"limits": {"requests_per_day": 10}})
    assert patched.status_code == 200, patched.text
    await send(internal, batch((tenant["id"], this_hour(), 8, 0)))
    assert [a["threshold"] for a in await alerts(installation, tenant["id"])] == [0.8]


async def alerts(installation: Installation, tenant_id: str) -> list[Any]:
    return await registry(
        installation, "SELECT threshold FROM quota_alerts WHERE tenant_id = $1 ORDER BY threshold", uuid.UUID(tenant_id)
    )


async def test_plan_alert_thresholds_are_validated_and_shown(api: httpx.AsyncClient) -> None:
    name = await plan_with(api, 100, [1.0, 0.25])
    plans = {p["name"]: p for p in (await api.get("/admin/plans")).json()["items"]}
    assert plans[name]["alert_thresholds"] == [0.25, 1.0]
    default = await plan_with(api, 100)
    plans = {p["name"]: p for p in (await api.get("/admin/plans")).json()["items"]}
    assert plans[default]["alert_thresholds"] == [0.8, 1.0]
    limits = {"requests_per_minute": 10, "requests_per_day": 10}
    for bad in ([0], [-0.5], [11], [0.5, 0.5], [0.1 * i for i in range(1, 12)], ["x"], 0.8):
        response = await api.put(f"/admin/plans/{name}", json={"limits": limits, "alert_thresholds": bad})
        assert_problem(response, 422)


async def test_history_windows(api: httpx.AsyncClient, internal: httpx.AsyncClient) -> None:
    tenant = await create_tenant(api, uniq("usage-days"))
    hour = this_hour()
    two_days_ago = hour - 48 * HOUR
    await send(internal, batch((tenant["id"], hour, 4, 1), (tenant["id"], two_days_ago, 6, 0)))
    days = (await api.get(f"/admin/tenants/{tenant['id']}/usage", params={"granularity": "day"})).json()
    assert days["granularity"] == "day"
    assert len(days["history"]) == 30
    assert (days["history"][-1]["requests"], days["history"][-1]["rejected"]) == (4, 1)
    assert days["history"][-3]["requests"] == 6
    start = datetime.fromtimestamp(two_days_ago, UTC)
    window = await api.get(
        f"/admin/tenants/{tenant['slug']}/usage",
        params={"from": (start + timedelta(minutes=30)).isoformat(), "to": (start + timedelta(hours=2)).isoformat()},
    )
    assert window.status_code == 200, window.text
    history = window.json()["history"]
    assert [b["requests"] for b in history] == [6, 0, 0]
    ref = f"/admin/tenants/{tenant['id']}/usage"
    for params in (
        {"granularity": "minute"},
        {"from": "yesterday"},
        {"to": "2026-13-01"},
        {"from": "2026-12-02T00:00:00Z", "to": "2026-12-01T00:00:00Z"},
        {"from": "2026-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"},  # > 31 days of hours
        {"granularity": "day", "from": "2020-01-01", "to": "2026-01-01"},  # > 800 days
        {"from": "0001-01-01T00:00:00+14:00"},
    ):
        assert_problem(await api.get(ref, params=params), 422, "invalid_usage_window")


def test_history_window_defaults() -> None:
    now = datetime(2026, 12, 3, 10, 42, tzinfo=UTC)
    hours = history_window(None, None, None, now=now)
    assert (hours.start, hours.end) == (datetime(2026, 12, 2, 11, tzinfo=UTC), datetime(2026, 12, 3, 10, tzinfo=UTC))
    days = history_window("day", None, None, now=now)
    assert (days.start, days.end) == (datetime(2026, 11, 4, tzinfo=UTC), datetime(2026, 12, 3, tzinfo=UTC))
    naive = history_window("hour", "2026-12-01T05:10:00", "2026-12-01T07:00:00+02:00", now=now)
    assert (naive.start, naive.end) == (datetime(2026, 12, 1, 5, tzinfo=UTC), datetime(2026, 12, 1, 5, tzinfo=UTC))


async def test_upkeep_samples_sizes_and_applies_retention(
    api: httpx.AsyncClient, internal: httpx.AsyncClient, ctx: AppContext, installation: Installation
) -> None:
    tenant = await create_tenant(api, uniq("usage-upkeep"))
    tid = uuid.UUID(tenant["id"])
    old_hour = this_hour() - 200 * 24 * HOUR
    await send(internal, batch((tenant["id"], old_hour, 1, 0), (tenant["id"], this_hour(), 1, 0)))
    await registry(installation, "UPDATE usage_batches SET received_at = now() - interval '2 days' WHERE batch_id IN "
                   "(SELECT batch_id FROM usage_batches ORDER BY received_at DESC LIMIT 1)")  # fmt: skip
    done = await upkeep_once(ctx)
    assert done is not None
    assert done["hourly_deleted"] >= 1
    assert done["batches_deleted"] >= 1
    assert done["sizes_sampled"] >= 1
    hours = await registry(installation, "SELECT hour FROM usage_hourly WHERE tenant_id = $1", tid)
    assert [int(r["hour"].timestamp()) for r in hours] == [this_hour()]
    days = (await api.get(f"/admin/tenants/{tid}/usage", params={"granularity": "day"})).json()["history"]
    assert days[-1]["database_bytes"] > 1_000_000
    assert "database_bytes" not in days[0]


async def test_tenantctl_prints_the_usage_history_as_the_api_has_it(
    api: httpx.AsyncClient, internal: httpx.AsyncClient, installation: Installation
) -> None:
    tenant = await create_tenant(api, uniq("usage-cli"))
    hour = this_hour()
    await send(internal, batch((tenant["id"], hour, 12, 4), (tenant["id"], hour - 2 * HOUR, 3, 0)))
    table = installation.tenantctl("tenants", "usage", tenant["slug"]).stdout.splitlines()
    assert table[0].split() == ["start", "requests", "rejected"]
    assert len(table) == 1 + 24
    assert table[-1].split()[1:] == ["12", "4"]
    assert table[-3].split()[1:] == ["3", "0"]
    assert table[-1].split()[0] == datetime.fromtimestamp(hour, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    as_json = json.loads(
        installation.tenantctl("tenants", "usage", tenant["id"], "--granularity", "day", "--json").stdout
    )
    api_view = (await api.get(f"/admin/tenants/{tenant['id']}/usage", params={"granularity": "day"})).json()
    assert as_json["history"][-1]["requests"] == api_view["history"][-1]["requests"] >= 12
    assert len(as_json["history"]) == len(api_view["history"]) == 30
    bad = installation.tenantctl("tenants", "usage", tenant["id"], "--from", "yesterday", check=False)
    assert bad.returncode == 1
    assert "invalid_usage_window" in bad.stderr
