"""Section 10: usage history (contract §13, issue 19). The proxied hot path with usage counting on, next to the
gateway of the commit before it: each request now ends its quota step with an in-memory increment, and a
background task flushes the counts to the tenant-service. Rows interleave; medians over runs and the runs' ratios.
Afterwards the gateways are stopped (each flushes on the way out) and the registry's hourly usage must hold at least
every request wrk saw answered."""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any, Final

import asyncpg

from bench.context import BenchContext, SectionReport, say
from bench.platform import BASE_DOMAIN, START_TIMEOUT, Admin, gateway, gateway_accepts, run_async
from bench.platform import tenant_service as tenant_service_process
from bench.results import Target, format_number
from bench.sections.common import BENCH_PATH, Sample, check_body, in_installation, measure, paired_rps, summarize
from bench.sections.users import _baseline_pythonpath, _extract_baseline
from tenantry_devtools.platform import Installation
from tenantry_devtools.processes import ServerProcess, wait_until

NAME = "usage"
TITLE = "10. Usage history: the proxied rate with usage counting"
WARMUP_SECONDS: Final = 2.0
METRIC: Final = "tenantry_gateway_usage_flush_lag_seconds"


def run(ctx: BenchContext) -> dict[str, Any]:
    """The proxied rows on one installation."""
    report = SectionReport(ctx, NAME, TITLE)
    settings = ctx.settings
    report.settings = {
        "runs": settings.users_proxied_runs,
        "duration_s": settings.duration,
        "wrk_threads": settings.threads,
        "wrk_connections": settings.connections,
        "baseline_gateway": settings.usage_baseline,
    }
    return in_installation(ctx, report, NAME, partial(_run, ctx, report), cleanup=ctx.backends.unpin_redis)


async def _counted(inst: Installation, tenant_id: str) -> int:
    conn = await asyncpg.connect(inst.database_url, timeout=10)
    try:
        value = await conn.fetchval(
            "SELECT coalesce(sum(requests), 0) FROM usage_hourly WHERE tenant_id = $1", uuid.UUID(tenant_id)
        )
        return int(value)
    finally:
        await conn.close(timeout=5)


def _metrics(url: str) -> str:
    import httpx  # noqa: PLC0415

    return httpx.get(url + "/_gateway/metrics", timeout=10).text


def _run(ctx: BenchContext, report: SectionReport, inst: Installation) -> None:
    settings = ctx.settings
    logs = ctx.logs / NAME
    add = ctx.registry.add
    baseline = None
    try:
        baseline = _extract_baseline(ctx, settings.usage_baseline)
    except Exception as exc:  # noqa: BLE001 - recorded; this commit's rows are still measured
        report.error(f"no baseline gateway, the comparison is not measured: {exc}")
    say("usage: starting the tenant-service, the upstream and the gateways")
    ts = add(tenant_service_process(inst, logs)).start(timeout=START_TIMEOUT)
    admin = Admin(ts.url, inst.admin_token)
    admin.put_plan()
    counted_tenant = admin.create_tenant("bench-usage")  # served by this commit's gateways only
    old_tenant = admin.create_tenant("bench-usage-old")  # served by the baseline only
    admin.close()
    from bench.sections.common import start_upstream  # noqa: PLC0415

    upstream = start_upstream(ctx, "usage-upstream")

    def start_gateway(name: str, env: dict[str, str]) -> ServerProcess:
        gw = add(gateway(inst, ts.url, upstream.url, logs, name=name, cpus=ctx.cpu_test, env=env))
        return gw.start(timeout=START_TIMEOUT)

    gw_new = start_gateway("gateway-usage", {})
    gw_fast = start_gateway("gateway-usage-1s", {"USAGE_FLUSH_SECONDS": "1"})
    gw_old = (
        start_gateway("gateway-baseline", {"PYTHONPATH": _baseline_pythonpath(baseline)})
        if baseline is not None
        else None
    )
    rows: list[tuple[str, str, ServerProcess, Any]] = []
    if gw_old is not None:
        wait_until(partial(gateway_accepts, gw_old.url, old_tenant), 30, "the baseline knows the tenant")
        if METRIC in _metrics(gw_old.url):
            report.error("the baseline gateway exposes the usage metrics: it is not the code before usage counting")
        else:
            report.notes.append(f"The baseline gateway's `/_gateway/metrics` has no `{METRIC}`: it is the old code.")
        rows.append(("old", f"(a) gateway of {settings.usage_baseline}", gw_old, old_tenant))
    for gw in (gw_new, gw_fast):
        wait_until(partial(gateway_accepts, gw.url, counted_tenant), 30, f"{gw.name} knows the tenant")
        if METRIC not in _metrics(gw.url):
            report.error(f"{gw.name} exposes no {METRIC}")
    rows += [
        ("new", "(b) this commit's gateway (USAGE_FLUSH_SECONDS = 30, the default)", gw_new, counted_tenant),
        ("fast", "(c) this commit's gateway, USAGE_FLUSH_SECONDS = 1", gw_fast, counted_tenant),
    ]
    report.method = [
        f"`GET /bench` on `Host: <slug>.{BASE_DOMAIN}` with the tenant's API key through a gateway (1 worker) "
        f"pinned to core {ctx.cpu_test}; wrk ({settings.threads} thread, {settings.connections} connections), the "
        f"upstream nginx (1 KB body), Redis and the tenant-service on core {ctx.cpu_load}, like section 1's row (d). "
        f"The baseline is the gateway of commit `{settings.usage_baseline}` (the commit before usage counting), its "
        "sources taken from git (`git archive`) and run with `PYTHONPATH` naming them first, as in section 9; all "
        "gateways read the same tenant-service's directory. The baseline serves a tenant of its own, this "
        "commit's gateways another one, whose served requests the history then holds.",
        f"Rows interleave, forward in odd runs and reversed in even ones, after a {WARMUP_SECONDS:g} s warm-up of "
        f"each: {settings.users_proxied_runs} runs of {settings.duration:g} s; the table shows medians over runs, "
        "the ratios are medians of the runs' ratios (each run's rows measured side by side).",
        "Afterwards this commit's gateways are stopped (SIGTERM: each flushes what it counted on the way out) and "
        "the tenant's served requests in `usage_hourly` are compared with the requests wrk saw answered (the "
        "warm-ups and checks included); the history may hold a few more (requests in flight when wrk stopped).",
    ]
    if ctx.cpu_load is not None:
        ctx.backends.pin_redis(ctx.cpu_load)
    secrets = {counted_tenant.key: "<tenant API key>", old_tenant.key: "<tenant API key>"}
    checks = 0
    for _, _, gw, tenant in rows:
        check_body(gw.url + BENCH_PATH, _headers(tenant))
        checks += 1 if tenant is counted_tenant else 0
    seen = 0
    say("usage: warm-up")
    for key, _, gw, tenant in rows:
        warm = measure(ctx, report, f"warm-up {key}", gw.url + BENCH_PATH, _headers(tenant), under_test=None,
                       duration=WARMUP_SECONDS, secrets=secrets)  # fmt: skip
        seen += warm.requests if tenant is counted_tenant else 0
    samples: dict[str, list[Sample]] = {key: [] for key, _, _, _ in rows}
    for run_no in range(1, settings.users_proxied_runs + 1):
        order = rows if run_no % 2 else rows[::-1]
        for key, _, gw, tenant in order:
            sample = measure(ctx, report, f"run {run_no} {key}", gw.url + BENCH_PATH, _headers(tenant),
                             under_test=gw, secrets=secrets, upstream=upstream)  # fmt: skip
            samples[key].append(sample)
            seen += sample.requests if tenant is counted_tenant else 0
        say(f"usage: run {run_no}: " + ", ".join(f"{k} {format_number(s[-1].rps)} req/s" for k, s in samples.items()))
    gw_new.stop()
    gw_fast.stop()
    counted = run_async(_counted(inst, counted_tenant.id))
    answered = seen + checks + 2  # the two readiness probes (gateway_accepts) that answered 200
    _report(ctx, report, rows, {key: summarize(s) for key, s in samples.items()}, counted, answered)


def _headers(tenant: Any) -> dict[str, str]:
    return {"Host": f"{tenant.slug}.{BASE_DOMAIN}", "X-API-Key": tenant.key}


def _report(
    ctx: BenchContext,
    report: SectionReport,
    rows: list[tuple[str, str, ServerProcess, Any]],
    proxied: dict[str, dict[str, Any]],
    counted: int,
    answered: int,
) -> None:
    table = report.table(
        f"Proxied requests, 1 gateway worker pinned to core {ctx.cpu_test} (medians over runs)",
        ["Row", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "req/s ÷ (a) (median of runs' ratios)"],
    )
    ratios: dict[str, tuple[float | None, str]] = {}
    for key, label, _, _ in rows:
        p = proxied[key]
        if key != "old" and "old" in proxied:
            ratios[key] = paired_rps(p, proxied["old"])
        table.rows.append(
            [
                label,
                format_number(p["rps"]),
                format_number(p["p50_ms"]),
                format_number(p["p99_ms"]),
                format_number(p["cpu_us_per_request"]),
                format_number(ratios[key][0]) if key in ratios else "",
            ]
        )
    new_vs_old, new_runs = ratios.get("new", (None, ""))
    fast_vs_old, fast_runs = ratios.get("fast", (None, ""))
    report.data = {
        "proxied": {key: {"label": label, **proxied[key]} for key, label, _, _ in rows},
        "new_vs_old": new_vs_old,
        "fast_vs_old": fast_vs_old,
        "history_requests": counted,
        "answered_requests": answered,
    }
    report.summary = [
        (
            f"With usage counting on, the gateway did {format_number(new_vs_old)} times the requests/s of the "
            f"gateway before it ({format_number(proxied['new']['rps'])} vs {format_number(proxied['old']['rps'])} "
            f"req/s; {format_number(proxied['new']['cpu_us_per_request'])} vs "
            f"{format_number(proxied['old']['cpu_us_per_request'])} CPU µs/request), and "
            f"{format_number(fast_vs_old)} times flushing every second."
            if new_vs_old is not None
            else "The baseline gateway was not measured."
        ),
        f"The registry's hourly usage held {counted:,} served requests of the tenant after the gateways stopped; "
        f"wrk and the checks saw {answered:,} answered ({format_number(counted / answered if answered else None)} "
        "times as many: the rest were in flight when wrk stopped).",
    ]
    report.targets += [
        Target(
            "usage.proxied_new_vs_old",
            f"Proxied req/s with usage counting ÷ {ctx.settings.usage_baseline}'s gateway (API key, 1 worker)",
            new_vs_old,
            ">=",
            0.95,
            ratio=new_vs_old,
            detail=f"{new_runs}; medians {format_number(proxied['new']['rps'])} ÷ "
            f"{format_number(proxied.get('old', {}).get('rps'))} req/s",
        ),
        Target(
            "usage.proxied_flush_1s_vs_old",
            f"Proxied req/s flushing every second ÷ {ctx.settings.usage_baseline}'s gateway",
            fast_vs_old,
            ">=",
            0.95,
            ratio=fast_vs_old,
            detail=f"{fast_runs}; medians {format_number(proxied['fast']['rps'])} ÷ "
            f"{format_number(proxied.get('old', {}).get('rps'))} req/s",
        ),
        Target(
            "usage.history_complete",
            "Served requests in the hourly usage ÷ requests wrk saw answered (this commit's gateways)",
            counted / answered if answered else None,
            ">=",
            1.0,
            detail=f"{counted:,} in usage_hourly, {answered:,} answered",
        ),
    ]
