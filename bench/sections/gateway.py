"""Section 1: gateway throughput and latency next to nginx, on the same 1 KB upstream with the same wrk load."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bench.context import BenchContext, SectionReport, say
from bench.nginx import nginx_service, proxy_config
from bench.platform import (
    BASE_DOMAIN,
    START_TIMEOUT,
    Admin,
    access_token,
    gateway,
    gateway_accepts,
    tenant_service,
)
from bench.results import Target, format_number, safe_ratio
from bench.sections.common import (
    BENCH_PATH,
    Sample,
    check_body,
    in_installation,
    measure,
    paired_rps,
    port_of,
    run_order,
    start_upstream,
    summarize,
)
from bench.wrk import calibrated_delay, delay_script, paced_load
from tenantry_common.apikeys import generate_api_key
from tenantry_devtools.platform import Installation
from tenantry_devtools.processes import ServerProcess, free_port, http_ok, wait_until

NAME = "gateway"
TITLE = "1. Gateway throughput and latency"


@dataclass
class Row:
    """One line of the table: what wrk hits and which process is measured."""

    key: str
    label: str
    url: str
    headers: dict[str, str]
    under_test: ServerProcess | None
    pinning: str


def run(ctx: BenchContext) -> dict[str, Any]:
    """Measure rows (a)-(e) plus the multi-worker gateway, the added latency at half load, rejected keys."""
    report = SectionReport(ctx, NAME, TITLE)
    settings = ctx.settings
    report.settings = {
        "runs": settings.runs,
        "duration_s": settings.duration,
        "wrk_threads": settings.threads,
        "wrk_connections": settings.connections,
        "gateway_env": "GATEWAY_WORKERS=1 (multi-worker row: = nproc), ACCESS_LOG=false, LOG_LEVEL=WARNING",
    }
    return in_installation(ctx, report, "gw", partial(_run, ctx, report), cleanup=ctx.backends.unpin_redis)


def _run(ctx: BenchContext, report: SectionReport, inst: Installation) -> None:
    settings = ctx.settings
    test, load = ctx.cpu_test, ctx.cpu_load
    logs = ctx.logs / NAME
    add = ctx.registry.add
    say("gateway: starting tenant-service, nginx upstream and proxy, three gateways")
    ts = add(tenant_service(inst, logs, cpus=load)).start(timeout=START_TIMEOUT)
    admin = Admin(ts.url, inst.admin_token)
    admin.put_plan()
    tenant = admin.create_tenant("bench")
    admin.close()

    upstream = start_upstream(ctx)
    proxy_port = free_port()
    prefix = ctx.root / "proxy-nginx"
    config = proxy_config(prefix, proxy_port, port_of(upstream.url))
    proxy = add(nginx_service("proxy-nginx", prefix, config, port=proxy_port, cpus=test))
    proxy.start(ready=lambda: http_ok(proxy.url + BENCH_PATH), timeout=30)
    workers = int(ctx.machine["nproc"])
    gw_pass, gw_full, gw_multi = (
        add(gateway(inst, ts.url, upstream.url, logs, name=name, cpus=cpus, workers=n, mode=mode)).start(
            timeout=START_TIMEOUT
        )
        for name, cpus, n, mode in (
            ("gateway-passthrough", test, 1, "passthrough"),
            ("gateway-full", test, 1, None),
            ("gateway-multi", None, workers, None),
        )
    )
    if load is not None:
        ctx.backends.pin_redis(load)
    for gw in (gw_pass, gw_full, gw_multi):
        wait_until(partial(gateway_accepts, gw.url, tenant), 30, f"{gw.name} knows the tenant")
    token = access_token(gw_full.url, tenant)

    host = {"Host": f"{tenant.slug}.{BASE_DOMAIN}"}
    api = {**host, "X-API-Key": tenant.key}
    jwt = {**host, "Authorization": f"Bearer {token}"}
    secrets = {tenant.key: "<tenant API key>", token: "<access token>"}
    pinned = f"core {test}" if test is not None else "unpinned (1 core)"
    rows = [
        Row("a", "(a) upstream nginx, direct", upstream.url + BENCH_PATH, api, upstream, f"core {load}"),
        Row("b", "(b) nginx proxy_pass, keep-alive, 1 worker", proxy.url + BENCH_PATH, api, proxy, pinned),
        Row(
            "c",
            "(c) gateway pass-through (GATEWAY_MODE=passthrough), 1 worker",
            gw_pass.url + BENCH_PATH,
            api,
            gw_pass,
            pinned,
        ),
        Row("d", "(d) gateway full pipeline, API key, 1 worker", gw_full.url + BENCH_PATH, api, gw_full, pinned),
        Row("e", "(e) gateway full pipeline, JWT, 1 worker", gw_full.url + BENCH_PATH, jwt, gw_full, pinned),
        Row(
            "f",
            f"(d') gateway full pipeline, API key, {workers} workers",
            gw_multi.url + BENCH_PATH,
            api,
            gw_multi,
            "unpinned",
        ),
    ]
    for row in rows:
        check_body(row.url, row.headers)
    report.method = [
        f"Process under test pinned to core {test} with `taskset -c {test}`; wrk, the upstream nginx, Redis and the "
        f"tenant-service pinned to core {load}. The multi-worker gateway row is not pinned (its workers may use "
        "every core, sharing them with wrk). PostgreSQL is not pinned (it is idle during these runs: the gateway "
        "only polls the directory once a second).",
        "Every row sends the same request: `GET /bench` with `Host: bench.localhost` and the tenant's credential "
        "(`X-API-Key`, or `Authorization: Bearer <JWT>` in row (e)); the upstream answers 200 with a 1,024-byte "
        "body. nginx rows ignore the headers.",
        "CPU µs/request: utime+stime of the process under test and all its children (from /proc/<pid>/stat), "
        "delta over the run, divided by the requests wrk completed.",
        "Redis calls/request: the commands the gateway sends, counted with Redis `MONITOR` during a separate "
        "run per row (MONITOR slows Redis, so these runs are not used for throughput), divided by the requests the "
        "upstream served in that run (nginx `stub_status`; it includes the requests still in flight when wrk "
        "stops, which wrk does not count but which did call Redis). `INFO commandstats` deltas over the measured "
        "runs are shown too: they also count the commands the quota script executes inside Redis. The gateways' "
        "heartbeat (one EVALSHA a second per worker, for the cutover hold) is background work, not a request's: "
        "MONITOR runs leave it out, commandstats deltas of unmonitored runs include it (about 0.001/request).",
        f"Runs interleave the rows {settings.runs} times after a 2 s warm-up of each, in the order a, b, c, d, e, "
        "d' in odd runs and reversed in even ones; the tables show medians over the runs.",
        "On this 2-core machine wrk, the upstream nginx, Redis and the tenant-service share one core, so the rows "
        "whose process under test is cheap (nginx) may be limited by that core rather than by themselves: the "
        "CPU µs/request column is the per-request cost independent of that limit.",
    ]
    say("gateway: warm-up")
    for row in rows:
        measure(ctx, report, f"warm-up {row.key}", row.url, row.headers, under_test=None, duration=2, secrets=secrets)
    samples: dict[str, list[Sample]] = {row.key: [] for row in rows}
    for run_no in range(1, settings.runs + 1):
        jwt["Authorization"] = f"Bearer {access_token(gw_full.url, tenant)}"  # fresh each run (TTL 15 min)
        secrets[jwt["Authorization"][7:]] = "<access token>"
        for row in run_order(rows, run_no):
            label = f"run {run_no} {row.key}"
            sample = measure(
                ctx, report, label, row.url, row.headers, under_test=row.under_test, secrets=secrets, upstream=upstream
            )
            samples[row.key].append(sample)
    summary = {row.key: summarize(samples[row.key]) for row in rows}

    # Redis calls: INFO commandstats also counts what the quota script runs inside Redis, so the calls a gateway
    # sends are counted with MONITOR, in separate runs (MONITOR slows Redis down; these runs only count).
    calls: dict[str, Sample] = {}
    for row in rows[2:]:
        calls[row.key] = measure(
            ctx,
            report,
            f"MONITOR {row.key}",
            row.url,
            row.headers,
            under_test=None,
            duration=min(settings.duration, 3),
            secrets=secrets,
            monitor=True,
            upstream=upstream,
        )

    # Added latency at half of the gateway's maximum rate: the same offered rate on upstream-direct and gateway.
    half_rate = summary["d"]["rps"] / 2
    conns, first_delay = paced_load(half_rate, settings.connections)
    paced: dict[str, list[Sample]] = {"a": [], "d": []}
    delays: dict[str, int] = {}
    scripts: dict[str, Path] = {}
    for row in (rows[0], rows[3]):
        scripts[row.key] = ctx.root / f"paced-{row.key}.lua"
        scripts[row.key].write_text(delay_script(first_delay))
        trial = measure(
            ctx,
            report,
            f"paced trial {row.key}",
            row.url,
            row.headers,
            under_test=None,
            duration=2,
            connections=conns,
            script=scripts[row.key],
            secrets=secrets,
        )
        delays[row.key] = calibrated_delay(half_rate, conns, first_delay, trial.rps)
        scripts[row.key].write_text(delay_script(delays[row.key]))
    say(f"gateway: paced runs at ~{half_rate:,.0f} req/s ({conns} connections, delays {delays} ms)")
    for run_no in range(1, settings.runs + 1):
        for row in run_order([rows[0], rows[3]], run_no):
            sample = measure(
                ctx,
                report,
                f"paced run {run_no} {row.key}",
                row.url,
                row.headers,
                under_test=row.under_test,
                connections=conns,
                script=scripts[row.key],
                secrets=secrets,
            )
            paced[row.key].append(sample)
    paced_summary = {k: summarize(v) for k, v in paced.items()}
    added = paced_summary["d"]["p50_ms"] - paced_summary["a"]["p50_ms"]

    # Rejected credentials must cost no Redis call (counted both ways).
    rejected: dict[str, Sample] = {}
    for label, key in (("wrong key, valid checksum", generate_api_key()), ("garbage key", "garbage-key")):
        sample = measure(
            ctx,
            report,
            f"rejected: {label}",
            gw_full.url + BENCH_PATH,
            {**host, "X-API-Key": key},
            under_test=gw_full,
            duration=min(settings.duration, 3),
            expect_rejections=True,
            secrets={key: "<rejected key>"},
            monitor=True,
        )
        if sample.non_2xx != sample.requests:
            report.error(f"rejected credentials ({label}): only {sample.non_2xx} of {sample.requests} were refused")
        rejected[label] = sample

    report.data = {
        "rows": {row.key: {"label": row.label, "pinning": row.pinning, **summary[row.key]} for row in rows},
        "redis_calls": {key: sample.to_dict() for key, sample in calls.items()},
        "paced": {"offered_rps": half_rate, "connections": conns, "delay_ms": delays, **paced_summary},
        "added_latency_ms": added,
        "rejected": {label: sample.to_dict() for label, sample in rejected.items()},
        "multi_workers": workers,
    }
    _tables(report, rows, summary, calls, paced_summary, (half_rate, conns, delays), rejected)
    _targets(report, summary, calls, paced_summary, added, half_rate, rejected, workers)


def _tables(
    report: SectionReport,
    rows: list[Row],
    summary: dict[str, dict[str, Any]],
    calls: dict[str, Sample],
    paced: dict[str, dict[str, Any]],
    pacing: tuple[float, int, dict[str, int]],
    rejected: dict[str, Sample],
) -> None:
    nginx_rps = summary["b"]["rps"]
    table = report.table(
        "Throughput and latency (medians over runs)",
        ["Row", "Pinning", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "Redis calls/req", "req/s ÷ (b)"],
    )
    for row in rows:
        s = summary[row.key]
        monitored = calls.get(row.key)
        table.rows.append(
            [
                row.label,
                row.pinning,
                format_number(s["rps"]),
                format_number(s["p50_ms"]),
                format_number(s["p99_ms"]),
                format_number(s["cpu_us_per_request"]),
                _calls_cell(monitored) if monitored is not None else "-",
                format_number(safe_ratio(s["rps"], nginx_rps)),
            ]
        )
    commands = report.table(
        "Redis work per request: calls sent by the gateway (MONITOR) and commands executed (INFO commandstats, "
        "which also counts the commands the quota script runs inside Redis; the harness's own INFO and MONITOR "
        "and the gateways' once-a-second heartbeat are left out of MONITOR runs)",
        ["Row", "calls/req (MONITOR)", "commands/req (commandstats, medians over runs)", "inside scripts/req"],
    )
    for row in rows[2:]:
        monitored = calls[row.key]
        base = monitored.per_request_base or 1
        inside = monitored.script_calls or {}
        commands.rows.append(
            [
                row.label,
                _calls_cell(monitored),
                _per_command(summary[row.key]["redis_per_request"], summary[row.key]["redis_per_command_per_request"]),
                _per_command(sum(inside.values()) / base, {k: v / base for k, v in inside.items()}),
            ]
        )
    half_rate, conns, delays = pacing
    paced_table = report.table(
        f"Added latency at half the gateway's maximum rate (offered ≈ {half_rate:,.0f} req/s by {conns} "
        "connections; medians over runs)",
        ["Row", "mean wrk delay() ms", "achieved req/s", "p50 ms", "p99 ms"],
    )
    for key, label in (("a", "(a) upstream nginx, direct"), ("d", "(d) gateway full pipeline, API key")):
        s = paced[key]
        paced_table.rows.append(
            [label, str(delays[key]), format_number(s["rps"]), format_number(s["p50_ms"]), format_number(s["p99_ms"])]
        )
    rej_table = report.table(
        "Rejected credentials (gateway full pipeline, 1 worker)",
        ["Credential", "requests", "refused (non-2xx)", "Redis calls (MONITOR)", "Redis commands (commandstats)"],
    )
    for label, r in rejected.items():
        rej_table.rows.append(
            [
                label,
                str(r.requests),
                str(r.non_2xx),
                str(sum((r.client_calls or {}).values())),
                str(sum(r.redis_calls.values())),
            ]
        )


def _targets(
    report: SectionReport,
    summary: dict[str, dict[str, Any]],
    calls: dict[str, Sample],
    paced: dict[str, dict[str, Any]],
    added: float,
    half_rate: float,
    rejected: dict[str, Sample],
    workers: int,
) -> None:
    d, c, nginx_rps = summary["d"], summary["c"], summary["b"]["rps"]
    if calls["c"].client_calls_per_request:
        report.notes.append(
            f"Row (c) made {calls['c'].client_calls_per_request:.2f} Redis calls per request: this gateway build "
            "does not implement GATEWAY_MODE=passthrough (the variable was ignored), so row (c) ran the full "
            "pipeline."
        )
    vs_nginx, vs_nginx_runs = paired_rps(d, summary["b"])
    vs_pass, vs_pass_runs = paired_rps(d, c)
    report.targets += [
        Target(
            "gateway.full_vs_nginx",
            "Gateway full pipeline (1 worker) req/s ÷ nginx proxy_pass req/s",
            vs_nginx,
            ">=",
            0.15,
            detail=f"{vs_nginx_runs}; medians {format_number(d['rps'])} ÷ {format_number(nginx_rps)} req/s",
        ),
        Target(
            "gateway.full_vs_passthrough",
            "Gateway full pipeline req/s ÷ gateway pass-through req/s",
            vs_pass,
            ">=",
            0.75,
            detail=f"{vs_pass_runs}; medians {format_number(d['rps'])} ÷ {format_number(c['rps'])} req/s",
        ),
        Target(
            "gateway.added_latency",
            "Gateway p50 minus upstream-direct p50 at half the gateway's max rate",
            added,
            "<=",
            1.0,
            unit="ms",
            detail=f"{format_number(paced['d']['p50_ms'])} ms - {format_number(paced['a']['p50_ms'])} ms at "
            f"≈{half_rate:,.0f} req/s offered",
        ),
    ]
    for key, label in (("d", "API key, 1 worker"), ("e", "JWT, 1 worker"), ("f", f"API key, {workers} workers")):
        report.targets.append(
            Target(
                f"gateway.redis_per_request.{key}",
                f"Redis calls per proxied request ({label})",
                calls[key].client_calls_per_request,
                "==",
                1.0,
                tolerance=0.01,
                detail=_calls_cell(calls[key]),
            )
        )
    for label, sample in rejected.items():
        total = sum((sample.client_calls or {}).values()) + sum(sample.redis_calls.values())
        report.targets.append(
            Target(
                f"gateway.redis_rejected.{'wrong_key' if 'wrong' in label else 'garbage'}",
                f"Redis calls for {sample.requests} rejected requests ({label})",
                float(total),
                "==",
                0.0,
            )
        )


def _per_command(total: float | None, per_command: dict[str, float]) -> str:
    text = format_number(total)
    if per_command:
        text += " (" + ", ".join(f"{k} {v:.3f}" for k, v in per_command.items()) + ")"
    return text


def _calls_cell(sample: Sample) -> str:
    base = sample.per_request_base or 1
    return (
        _per_command(sample.client_calls_per_request, {k: v / base for k, v in (sample.client_calls or {}).items()})
        + f" over {sample.per_request_base:,} requests"
    )
