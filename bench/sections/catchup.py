"""Section 13: the directory's catch-up (docs/gateway.md). A request refused while the fetch of a change event that
arrived before it is under way (a tenant or key made a moment ago) waits for it and is decided again. Measured next to
the gateway of the commit before: the proxied hot path, made-up keys (they never wait when nothing is pending), and
whether a tenant made through the admin API is served on its very first request."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Final

import httpx

from bench.context import BenchContext, SectionReport, say
from bench.platform import BASE_DOMAIN, START_TIMEOUT, Admin, gateway, gateway_accepts
from bench.platform import tenant_service as tenant_service_process
from bench.results import Target, format_number
from bench.sections.common import (
    BENCH_PATH,
    Sample,
    check_body,
    in_installation,
    measure,
    paired_rps,
    start_upstream,
    summarize,
)
from bench.sections.users import _baseline_pythonpath, _extract_baseline
from tenantry_common.apikeys import generate_api_key
from tenantry_devtools.platform import Installation
from tenantry_devtools.processes import ServerProcess, wait_until

NAME = "catchup"
TITLE = "13. Directory catch-up: new tenants served on their first request"
WARMUP_SECONDS: Final = 2.0
METRIC: Final = "tenantry_gateway_directory_catch_ups_total"
#: Tenants created one at a time for the first-request rows.
CREATED: Final = 30
#: How long the first-request rows retry (every RETRY_MS) before they give a tenant up.
GIVE_UP_SECONDS: Final = 5.0
RETRY_MS: Final = 5
#: The failpoint of the second tenant-service: each directory answer 50 ms late.
SLOW: Final = "directory.before_answer=sleep:0.05"


def run(ctx: BenchContext) -> dict[str, Any]:
    """All rows on one installation."""
    report = SectionReport(ctx, NAME, TITLE)
    settings = ctx.settings
    report.settings = {
        "runs": settings.users_proxied_runs,
        "duration_s": settings.duration,
        "wrk_threads": settings.threads,
        "wrk_connections": settings.connections,
        "baseline_gateway": settings.catchup_baseline,
        "tenants_created": CREATED,
    }
    return in_installation(ctx, report, NAME, partial(_run, ctx, report), cleanup=ctx.backends.unpin_redis)


def _headers(tenant: Any) -> dict[str, str]:
    return {"Host": f"{tenant.slug}.{BASE_DOMAIN}", "X-API-Key": tenant.key}


def _first_served(client: httpx.Client, url: str, headers: dict[str, str]) -> tuple[bool, float | None]:
    """Whether the very first request got a 200, and the milliseconds until one did (None: never, within the limit)."""
    started = time.perf_counter()
    deadline = started + GIVE_UP_SECONDS
    first = True
    while True:
        status = client.get(url + BENCH_PATH, headers=headers).status_code
        if status == 200:
            return first, (time.perf_counter() - started) * 1000
        first = False
        if time.perf_counter() > deadline:
            return False, None
        time.sleep(RETRY_MS / 1000)


def _run(ctx: BenchContext, report: SectionReport, inst: Installation) -> None:
    settings = ctx.settings
    logs = ctx.logs / NAME
    add = ctx.registry.add
    baseline = None
    try:
        baseline = _extract_baseline(ctx, settings.catchup_baseline)
    except Exception as exc:  # noqa: BLE001 - recorded; this commit's rows are still measured
        report.error(f"no baseline gateway, the comparison is not measured: {exc}")
    say("catchup: starting the tenant-service, the upstream and the gateways")
    ts = add(tenant_service_process(inst, logs)).start(timeout=START_TIMEOUT)
    admin = Admin(ts.url, inst.admin_token)
    admin.put_plan()
    tenant = admin.create_tenant("bench-catchup")
    upstream = start_upstream(ctx, "catchup-upstream")

    # The same registry, its directory answers 50 ms late: a busy or distant tenant-service.
    slow_ts = add(tenant_service_process(inst, logs, name="tenant-service-slow", TENANTRY_FAILPOINTS=SLOW)).start(
        timeout=START_TIMEOUT
    )

    def start_gateway(name: str, env: dict[str, str], service: ServerProcess = ts) -> ServerProcess:
        gw = add(gateway(inst, service.url, upstream.url, logs, name=name, cpus=ctx.cpu_test, env=env))
        return gw.start(timeout=START_TIMEOUT)

    gw_new = start_gateway("gateway-catchup", {})
    gw_old = (
        start_gateway("gateway-baseline", {"PYTHONPATH": _baseline_pythonpath(baseline)})
        if baseline is not None
        else None
    )
    hot: list[tuple[str, str, ServerProcess]] = []
    if gw_old is not None:
        wait_until(partial(gateway_accepts, gw_old.url, tenant), 30, "the baseline knows the tenant")
        if METRIC in httpx.get(gw_old.url + "/_gateway/metrics", timeout=10).text:
            report.error("the baseline gateway has the catch-up metric: it is not the code before it")
        hot.append(("old", f"(a) gateway of {settings.catchup_baseline}", gw_old))
    wait_until(partial(gateway_accepts, gw_new.url, tenant), 30, "this commit's gateway knows the tenant")
    hot.append(("new", "(b) this commit's gateway", gw_new))
    report.method = [
        f"Rows (a)/(b): `GET /bench` on `Host: <slug>.{BASE_DOMAIN}` through a gateway (1 worker) pinned to core "
        f"{ctx.cpu_test}; wrk ({settings.threads} thread, {settings.connections} connections), the upstream nginx "
        f"(1 KB body), Redis and the tenant-service on core {ctx.cpu_load}. The baseline is the gateway of commit "
        f"`{settings.catchup_baseline}` (the commit before the catch-up), from `git archive`, run with "
        f"`PYTHONPATH` naming it first (as in sections 9 and 10). {settings.users_proxied_runs} interleaved runs of "
        f"{settings.duration:g} s after a {WARMUP_SECONDS:g} s warm-up; medians, and medians of the runs' ratios.",
        "Made-up keys: the same rows with a well-formed API key no tenant has (each request is a 401); nothing "
        "changes in the registry meanwhile, so no request of this commit's gateway should wait.",
        f"First request: {CREATED} tenants created one at a time with `POST /admin/tenants`; as soon as the 201 "
        "arrives, four clients in parallel (each with a connection already open) send `GET /bench` with its first "
        f"key, one through each gateway, and retry every {RETRY_MS} ms until a 200. All four hear the change events "
        "on Redis and poll every second; (a) and (b) read the directory from the section's tenant-service, (c) and "
        f"(d) from a second one on the same registry whose directory answers are 50 ms late (failpoint `{SLOW}`: a "
        "busy or distant tenant-service). Counted: tenants whose very first request was a 200, and the time to the "
        "first 200 (from the 201).",
    ]
    if ctx.cpu_load is not None:
        ctx.backends.pin_redis(ctx.cpu_load)
    secrets = {tenant.key: "<tenant API key>"}
    for _, _, gw in hot:
        check_body(gw.url + BENCH_PATH, _headers(tenant))
    made_up = {"Host": f"{tenant.slug}.{BASE_DOMAIN}", "X-API-Key": generate_api_key()}
    secrets[made_up["X-API-Key"]] = "<made-up API key>"
    say("catchup: warm-up")
    for key, _, gw in hot:
        measure(ctx, report, f"warm-up {key}", gw.url + BENCH_PATH, _headers(tenant), under_test=None,
                duration=WARMUP_SECONDS, secrets=secrets)  # fmt: skip
    proxied: dict[str, list[Sample]] = {key: [] for key, _, _ in hot}
    rejected: dict[str, list[Sample]] = {key: [] for key, _, _ in hot}
    for run_no in range(1, settings.users_proxied_runs + 1):
        order = hot if run_no % 2 else hot[::-1]
        for key, _, gw in order:
            proxied[key].append(measure(ctx, report, f"run {run_no} {key}", gw.url + BENCH_PATH, _headers(tenant),
                                        under_test=gw, secrets=secrets, upstream=upstream))  # fmt: skip
        for key, _, gw in order:
            rejected[key].append(measure(ctx, report, f"run {run_no} {key} made-up key", gw.url + BENCH_PATH,
                                         made_up, under_test=gw, secrets=secrets, expect_rejections=True))  # fmt: skip
        say(f"catchup: run {run_no}: " + ", ".join(f"{k} {format_number(s[-1].rps)} req/s" for k, s in proxied.items()))
    say("catchup: first requests of new tenants")
    old_slow = (
        start_gateway("gateway-baseline-slow", {"PYTHONPATH": _baseline_pythonpath(baseline)}, slow_ts)
        if baseline is not None
        else None
    )
    new_slow = start_gateway("gateway-catchup-slow", {}, slow_ts)
    candidates = [("old", gw_old), ("new", gw_new), ("old_slow", old_slow), ("new_slow", new_slow)]
    first_rows = [(key, gw) for key, gw in candidates if gw is not None]
    for _, started in first_rows:
        wait_until(partial(gateway_accepts, started.url, tenant), 30, f"{started.name} knows the tenant")
    firsts: dict[str, list[tuple[bool, float | None]]] = {key: [] for key, _ in first_rows}
    clients = [httpx.Client(timeout=10) for _ in first_rows]
    try:
        with ThreadPoolExecutor(len(first_rows)) as pool:
            for index in range(CREATED):
                made = admin.create_tenant(f"bench-catchup-new-{index}")
                answers = list(pool.map(lambda c, row, t=made: _first_served(c, row[1].url, _headers(t)),
                                        clients, first_rows))  # fmt: skip
                for (key, _), answer in zip(first_rows, answers, strict=True):
                    firsts[key].append(answer)
    finally:
        for client in clients:
            client.close()
    admin.close()
    _report(ctx, report, hot, {k: summarize(s) for k, s in proxied.items()},
            {k: summarize(s) for k, s in rejected.items()}, firsts)  # fmt: skip


def _report(
    ctx: BenchContext,
    report: SectionReport,
    hot: list[tuple[str, str, ServerProcess]],
    proxied: dict[str, dict[str, Any]],
    rejected: dict[str, dict[str, Any]],
    firsts: dict[str, list[tuple[bool, float | None]]],
) -> None:
    table = report.table(
        f"Known key and made-up key, 1 gateway worker pinned to core {ctx.cpu_test} (medians over runs)",
        ["Row", "req/s", "p50 ms", "CPU µs/req", "÷ (a)", "made-up key: 401/s", "p50 ms", "CPU µs/req", "÷ (a)"],
    )
    ratio, ratio_runs = paired_rps(proxied["new"], proxied["old"]) if "old" in proxied else (None, "")
    refused, refused_runs = paired_rps(rejected["new"], rejected["old"]) if "old" in rejected else (None, "")
    for key, label, _ in hot:
        p, r = proxied[key], rejected[key]
        table.rows.append([
            label, format_number(p["rps"]), format_number(p["p50_ms"]), format_number(p["cpu_us_per_request"]),
            format_number(ratio) if key == "new" else "", format_number(r["rps"]), format_number(r["p50_ms"]),
            format_number(r["cpu_us_per_request"]), format_number(refused) if key == "new" else "",
        ])  # fmt: skip
    old = ctx.settings.catchup_baseline
    labels = {"old": f"(a) gateway of {old}", "new": "(b) this commit's gateway",
              "old_slow": f"(c) gateway of {old}, directory answers 50 ms late",
              "new_slow": "(d) this commit's gateway, directory answers 50 ms late"}  # fmt: skip
    first_table = report.table(
        f"First request of {CREATED} tenants made one at a time",
        ["Gateway", "first request 200", "p50 ms to the first 200", "max ms", "never within 5 s"],
    )
    summary: dict[str, dict[str, Any]] = {}
    for key, answers in firsts.items():
        times = [ms for _, ms in answers if ms is not None]
        summary[key] = {
            "first_ok": sum(1 for ok, _ in answers if ok),
            "p50_ms": statistics.median(times) if times else None,
            "max_ms": max(times) if times else None,
            "never": sum(1 for _, ms in answers if ms is None),
        }
        s = summary[key]
        first_table.rows.append([labels[key], f"{s['first_ok']} of {len(answers)}", format_number(s["p50_ms"]),
                                 format_number(s["max_ms"]), str(s["never"])])  # fmt: skip
    report.data = {
        "proxied": {key: {"label": label, **proxied[key]} for key, label, _ in hot},
        "made_up_key": {key: {"label": label, **rejected[key]} for key, label, _ in hot},
        "new_vs_old": ratio,
        "made_up_new_vs_old": refused,
        "first_request": summary,
    }
    new_first = summary.get("new", {}).get("first_ok", 0) + summary.get("new_slow", {}).get("first_ok", 0)
    report.summary = [
        (
            f"Known keys: this commit's gateway did {format_number(ratio)} times the requests/s of "
            f"{ctx.settings.catchup_baseline}'s ({format_number(proxied['new']['rps'])} vs "
            f"{format_number(proxied['old']['rps'])} req/s)."
            if ratio is not None
            else "The baseline gateway was not measured."
        ),
        f"Made-up keys: {format_number(rejected['new']['rps'])} 401/s (p50 {format_number(rejected['new']['p50_ms'])} "
        f"ms) against {format_number(rejected.get('old', {}).get('rps'))} before ({format_number(refused)} times).",
        "First request of a tenant made just now: "
        + "; ".join(f"{labels[k]}: {s['first_ok']} of {CREATED}" for k, s in summary.items())
        + ".",
    ]
    report.targets += [
        Target(
            "catchup.proxied_new_vs_old",
            f"Proxied req/s ÷ {ctx.settings.catchup_baseline}'s gateway (known API key, 1 worker)",
            ratio,
            ">=",
            0.95,
            ratio=ratio,
            detail=f"{ratio_runs}; medians {format_number(proxied['new']['rps'])} ÷ "
            f"{format_number(proxied.get('old', {}).get('rps'))} req/s",
        ),
        Target(
            "catchup.made_up_new_vs_old",
            f"401/s of made-up keys ÷ {ctx.settings.catchup_baseline}'s gateway (nothing pending: no wait)",
            refused,
            ">=",
            0.95,
            ratio=refused,
            detail=refused_runs,
        ),
        Target(
            "catchup.first_request_served",
            f"Tenants served on their very first request, of {2 * CREATED} (this commit's gateways (b) and (d))",
            new_first,
            ">=",
            2 * CREATED,
        ),
    ]
