"""Section 9: tenant users (contract §12). What a sign-in costs through the gateway with the shipped argon2id
parameters: sequential latency, the failure path (a wrong password and an unknown email must take the same time),
and the sign-ins one tenant-service worker does per second under concurrent clients. Then the proxied hot path
next to the gateway of the commit before tenant users, and a user's access token next to an API key's."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import asyncpg
import httpx

from bench.context import BenchContext, SectionReport, say
from bench.platform import BASE_DOMAIN, START_TIMEOUT, Admin, access_token, gateway, gateway_accepts, run_async
from bench.platform import tenant_service as tenant_service_process
from bench.procs import CpuMeter
from bench.results import Target, format_number, median, paired_ratio, percentile
from bench.sections.common import (
    BENCH_PATH,
    Sample,
    check_body,
    in_installation,
    measure,
    paired_rps,
    run_order,
    start_upstream,
    summarize,
)
from bench.wrk import WrkResult, display_command, run_wrk, wrk_command
from tenantry_devtools.platform import Installation, Tenant
from tenantry_devtools.processes import ROOT, ServerProcess, wait_until

if TYPE_CHECKING:
    from tenant_service.config import UserSettings

NAME = "users"
TITLE = "9. Tenant users: sign-in cost, and the proxied rate"
#: Users signed in in turn (the concurrent clients do not all wait on one user's row).
USERS: Final = 4
PASSWORD: Final = "bench sign-in passphrase 7"  # noqa: S105 - the throw-away users' password
WRONG_PASSWORD: Final = "bench wrong passphrase 8"  # noqa: S105
#: The brute-force limits of the tenant-service that serves the failure path (else the 6th failure is a 429 that
#: checks no password).
OPEN_LIMITS: Final = {"LOGIN_MAX_FAILURES": "1000000000", "LOGIN_MAX_ADDRESS_FAILURES": "1000000000"}
LOGIN: Final = "/_gateway/auth/login"
#: Sources of the baseline gateway (extracted from git into the run's directory).
BASELINE_PATHS: Final = ("services/gateway/src", "libs/common/src")
WARMUP_SECONDS: Final = 2.0


@dataclass
class Attempts:
    """Sequential sign-ins of one kind in one run: each one's latency, and the tenant-service's CPU."""

    latencies_ms: list[float] = field(default_factory=list)
    cpu_s: float = 0.0

    def stats(self) -> dict[str, float]:
        """p50, p90 and p99 (ms) of the run."""
        return {f"p{p}_ms": percentile(self.latencies_ms, p) for p in (50, 90, 99)}


@dataclass
class LoginLoad:
    """One wrk run of concurrent sign-ins."""

    clients: int
    result: WrkResult
    service_cpu_ms: float
    gateway_cpu_ms: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "clients": self.clients,
            "logins_per_s": self.result.rps,
            "p50_ms": self.result.p50_ms,
            "p99_ms": self.result.p99_ms,
            "logins": self.result.requests,
            "non_2xx": self.result.non_2xx,
            "socket_errors": self.result.errors,
            "tenant_service_cpu_ms_per_login": self.service_cpu_ms,
            "gateway_cpu_ms_per_login": self.gateway_cpu_ms,
        }


@dataclass
class Row:
    """A proxied row: which gateway, which credential."""

    key: str
    label: str
    gateway: ServerProcess
    headers: dict[str, str]
    versus: str | None = None
    """The row this one's rate is compared with, run by run."""


def argon2_parameters(encoded: str) -> dict[str, int | str]:
    """The variant and parameters of an encoded argon2 hash: ``$argon2id$v=19$m=65536,t=3,p=4$salt$hash`` →
    ``{"type": "argon2id", "m": 65536, "t": 3, "p": 4}``.

    Raises:
        ValueError: not an encoded argon2 hash.
    """
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] or not parts[1].startswith("argon2"):
        raise ValueError("not an encoded argon2 hash")
    found: dict[str, int | str] = {"type": parts[1]}
    for item in parts[3].split(","):
        name, _, value = item.partition("=")
        if name not in ("m", "t", "p") or not value.isdigit():
            raise ValueError(f"not an argon2 parameter: {item!r}")
        found[name] = int(value)
    if len(found) != 4:
        raise ValueError("an argon2 parameter is missing")
    return found


def _lua_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def login_script(bodies: list[dict[str, str]]) -> str:
    """A wrk Lua script that POSTs ``bodies`` as JSON, one after another, round and round."""
    lines = [
        "-- Written by bench/sections/users.py: each request signs in the next of the users.",
        'wrk.method = "POST"',
        'wrk.headers["Content-Type"] = "application/json"',
        "local bodies = {",
        *(f"  {_lua_string(json.dumps(body, separators=(',', ':')))}," for body in bodies),
        "}",
        "local n = 0",
        "request = function()",
        "  n = n % #bodies + 1",
        "  return wrk.format(nil, nil, nil, bodies[n])",
        "end",
    ]
    return "\n".join(lines) + "\n"


def spread(a: float | None, b: float | None) -> float | None:
    """The larger of two positive numbers divided by the smaller (1 when equal), None when either is missing."""
    if a is None or b is None or a <= 0 or b <= 0:
        return None
    return max(a, b) / min(a, b)


def run(ctx: BenchContext) -> dict[str, Any]:
    """Sign-ins (sequential, failing, concurrent), then the proxied rows, on one installation."""
    report = SectionReport(ctx, NAME, TITLE)
    settings = ctx.settings
    report.settings = {
        "runs": settings.runs,
        "sequential_sign_ins_per_run": settings.login_samples,
        "concurrent_clients": list(settings.login_clients),
        "concurrent_run_s": settings.login_seconds,
        "proxied_runs": settings.users_proxied_runs,
        "proxied_duration_s": settings.duration,
        "wrk_threads": settings.threads,
        "wrk_connections": settings.connections,
        "baseline_gateway": settings.users_baseline,
    }
    return in_installation(ctx, report, NAME, partial(_run, ctx, report), cleanup=ctx.backends.unpin_redis)


# --------------------------------------------------------------------------- the platform


def _hash_settings(inst: Installation) -> tuple[UserSettings, str]:
    """The tenant-service's user settings as its processes read them, and the hasher's parameters."""
    from tenant_service.users.passwords import PasswordHasher  # noqa: PLC0415 - the service, only when measured

    users = inst.settings().users
    return users, PasswordHasher(users).parameters


async def _stored_hashes(inst: Installation, tenant_id: str) -> list[str]:
    conn = await asyncpg.connect(inst.database_url, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT password_hash FROM tenant_users WHERE tenant_id = $1 AND password_hash IS NOT NULL",
            uuid.UUID(tenant_id),
        )
        return [str(r[0]) for r in rows]
    finally:
        await conn.close(timeout=5)


def _extract_baseline(ctx: BenchContext, revision: str) -> Path:
    """The baseline's gateway and common library, from git, under the run's directory.

    Raises:
        RuntimeError: git cannot produce them (not a clone, or the revision is not in it).
    """
    done = subprocess.run(  # noqa: S603 - fixed argv
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision, *BASELINE_PATHS],  # noqa: S607
        capture_output=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"git archive {revision}: {done.stderr.decode(errors='replace').strip()[-300:]}")
    target = ctx.root / f"baseline-{revision}"
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        archive.extractall(target, filter="data")
    return target


def _baseline_pythonpath(tree: Path) -> str:
    return ":".join(str(tree / p) for p in BASELINE_PATHS)


def _old_code_reads_feed(tree: Path, feed: bytes) -> str:
    """The baseline's ``tenantry_common`` decodes this directory page (newer fields and all); its file and the
    tenants it read.

    Raises:
        RuntimeError: it does not.
    """
    code = (
        "import sys, msgspec, tenantry_common.directory as d; "
        "page = msgspec.json.decode(sys.stdin.buffer.read(), type=d.DirectoryPage); "
        "print(d.__file__, len(page.tenants))"
    )
    done = subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-c", code],
        input=feed,
        env={**os.environ, "PYTHONPATH": _baseline_pythonpath(tree)},
        capture_output=True,
        timeout=60,
        check=False,
        cwd=tree,
    )
    out = done.stdout.decode().strip()
    if done.returncode != 0 or not out.startswith(str(tree)):
        raise RuntimeError(f"the baseline's directory code does not read the feed: {out} {done.stderr.decode()[-500:]}")
    return out


def _feed(ts_url: str, gateway_token: str) -> bytes:
    response = httpx.get(
        ts_url + "/internal/v1/directory",
        params={"since": 0},
        headers={"Authorization": f"Bearer {gateway_token}"},
        timeout=60,
    )
    response.raise_for_status()
    return response.content


def _create_users(admin_url: str, admin_token: str, gw_url: str, tenant: Tenant) -> list[str]:
    """:data:`USERS` users invited through the admin API, each accepting at the gateway; their emails."""
    emails = []
    host = {"Host": f"{tenant.slug}.{BASE_DOMAIN}"}
    with httpx.Client(timeout=60) as http:
        for i in range(USERS):
            email = f"user{i}@bench.example"
            created = http.post(
                f"{admin_url}/admin/tenants/{tenant.id}/users",
                json={"email": email, "role": "user", "name": f"Bench user {i}"},
                headers={"Authorization": f"Bearer {admin_token}"},
            )
            if created.status_code != 201:
                raise RuntimeError(f"POST /admin/tenants/…/users: {created.status_code} {created.text[:300]}")
            token = created.json()["invitation"]["token"]
            accepted = http.post(
                gw_url + "/_gateway/auth/accept-invitation", json={"token": token, "password": PASSWORD}, headers=host
            )
            if accepted.status_code != 200 or "access_token" not in accepted.json():
                raise RuntimeError(f"accept-invitation: {accepted.status_code} {accepted.text[:300]}")
            emails.append(email)
    return emails


# --------------------------------------------------------------------------- sign-ins


def _timed(http: httpx.Client, body: dict[str, str]) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = http.post(LOGIN, json=body)
    return (time.perf_counter() - started) * 1000, response


def _successes(http: httpx.Client, emails: list[str], count: int, service: ServerProcess) -> Attempts:
    attempts = Attempts()
    meter = CpuMeter(service.pid)
    meter.start()
    for i in range(count):
        ms, response = _timed(http, {"email": emails[i % len(emails)], "password": PASSWORD})
        if response.status_code != 200 or "access_token" not in response.json():
            raise RuntimeError(f"sign-in {i}: {response.status_code} {response.text[:300]}")
        attempts.latencies_ms.append(ms)
    attempts.cpu_s = meter.stop()
    return attempts


def _failures(
    http: httpx.Client, emails: list[str], count: int, service: ServerProcess, bodies: set[str], run_no: int
) -> tuple[Attempts, Attempts]:
    """``count`` wrong passwords and ``count`` unknown emails, alternating (ABBA); every answer's body goes to
    ``bodies``. The CPU is that of both kinds (each gets half)."""
    wrong, unknown = Attempts(), Attempts()
    meter = CpuMeter(service.pid)
    meter.start()
    for i in range(count):
        pair = [
            (wrong, {"email": emails[i % len(emails)], "password": WRONG_PASSWORD}),
            (unknown, {"email": f"nobody{run_no}-{i}@bench.example", "password": WRONG_PASSWORD}),
        ]
        for attempts, body in pair if i % 2 == 0 else pair[::-1]:
            ms, response = _timed(http, body)
            if response.status_code != 401:
                raise RuntimeError(f"failing sign-in: {response.status_code} {response.text[:300]}")
            bodies.add(json.dumps(response.json(), sort_keys=True))
            attempts.latencies_ms.append(ms)
    wrong.cpu_s = unknown.cpu_s = meter.stop() / 2
    return wrong, unknown


def _login_load(
    ctx: BenchContext,
    report: SectionReport,
    gw: ServerProcess,
    service: ServerProcess,
    host: dict[str, str],
    script: Path,
    clients: int,
    seconds: float,
) -> LoginLoad:
    """One wrk run of ``clients`` concurrent sign-ins (unpinned, like everything in this part)."""
    argv = wrk_command(
        gw.url + LOGIN, threads=1, connections=clients, duration_s=seconds, headers=host, script=script, timeout_s=30
    )
    report.command(display_command(argv))
    service_meter, gateway_meter = CpuMeter(service.pid), CpuMeter(gw.pid)
    service_meter.start()
    gateway_meter.start()
    result, raw = run_wrk(argv, seconds)
    service_cpu, gateway_cpu = service_meter.stop(), gateway_meter.stop()
    if result.non_2xx or result.errors:
        report.error(f"{clients} concurrent sign-ins: {result.non_2xx} non-2xx, {result.errors} socket errors\n{raw}")
    logins = max(result.requests, 1)
    load = LoginLoad(clients, result, service_cpu * 1000 / logins, gateway_cpu * 1000 / logins)
    say(
        f"users: {clients} clients: {result.rps:.1f} sign-ins/s p50 {result.p50_ms:.0f} ms p99 {result.p99_ms:.0f} ms, "
        f"tenant-service {load.service_cpu_ms:.0f} CPU ms/sign-in"
    )
    return load


# --------------------------------------------------------------------------- the section


def _run(ctx: BenchContext, report: SectionReport, inst: Installation) -> None:
    settings = ctx.settings
    logs = ctx.logs / NAME
    add = ctx.registry.add
    nproc = int(ctx.machine["nproc"])
    users_settings, parameters = _hash_settings(inst)
    say(f"users: {parameters}, PASSWORD_HASH_CONCURRENCY={users_settings.hash_concurrency}")
    baseline: Path | None = None
    try:
        baseline = _extract_baseline(ctx, settings.users_baseline)
    except (RuntimeError, OSError, tarfile.TarError, subprocess.SubprocessError) as exc:
        report.error(f"no baseline gateway, the proxied comparison is not measured: {exc}")

    say("users: starting two tenant-services, the upstream and four gateways")
    ts = add(tenant_service_process(inst, logs)).start(timeout=START_TIMEOUT)
    ts_open = add(tenant_service_process(inst, logs, name="tenant-service-open-limits", **OPEN_LIMITS))
    ts_open.start(timeout=START_TIMEOUT)
    admin = Admin(ts.url, inst.admin_token)
    admin.put_plan()
    tenant = admin.create_tenant("bench")
    # The failure path's tenant: failures are counted per tenant (per account and per address), so the failing
    # sign-ins must not lock the accounts and the address of the tenant the successful ones measure.
    failing = admin.create_tenant("bench-failures")
    admin.close()
    upstream = start_upstream(ctx, "users-upstream")

    def start_gateway(
        name: str, service_url: str, cpus: str | None, env: dict[str, str] | None = None
    ) -> ServerProcess:
        gw = add(gateway(inst, service_url, upstream.url, logs, name=name, cpus=cpus, env=env))
        return gw.start(timeout=START_TIMEOUT)

    gw_login = start_gateway("gateway-sign-ins", ts.url, None)
    gw_open = start_gateway("gateway-open-limits", ts_open.url, None)
    gw_new = start_gateway("gateway-new", ts.url, ctx.cpu_test)
    gw_old = (
        start_gateway("gateway-baseline", ts.url, ctx.cpu_test, {"PYTHONPATH": _baseline_pythonpath(baseline)})
        if baseline is not None
        else None
    )
    for gw in (gw_login, gw_open, gw_new, *([gw_old] if gw_old else [])):
        wait_until(partial(gateway_accepts, gw.url, tenant), 30, f"{gw.name} knows the tenant")
    wait_until(partial(gateway_accepts, gw_open.url, failing), 30, f"{gw_open.name} knows the failing tenant")

    emails = _create_users(ts.url, inst.admin_token, gw_login.url, tenant)
    failing_emails = _create_users(ts.url, inst.admin_token, gw_open.url, failing)
    stored = {json.dumps(argon2_parameters(h), sort_keys=True) for h in run_async(_stored_hashes(inst, tenant.id))}
    expected = {
        "type": "argon2id",
        "m": users_settings.hash_memory_kib,
        "t": users_settings.hash_time_cost,
        "p": users_settings.hash_parallelism,
    }
    if stored != {json.dumps(expected, sort_keys=True)}:
        report.error(f"the stored hashes have parameters {sorted(stored)}, the settings say {expected}")
    host = {"Host": f"{tenant.slug}.{BASE_DOMAIN}"}
    report.method = [
        f"One installation, a tenant (`bench`) with {USERS} users created through the admin API "
        "(`POST /admin/tenants/{ref}/users`), each accepting its invitation at the gateway "
        f"(`POST /_gateway/auth/accept-invitation` on `Host: bench.localhost`). Password hashing: {parameters} "
        f"(the tenant-service's defaults, read from its settings and checked in the stored hashes), "
        f"PASSWORD_HASH_CONCURRENCY = {users_settings.hash_concurrency}; the tenant-service runs one uvicorn "
        "worker, whose hashes run in threads (argon2 computes its lanes in threads of its own too).",
        'Sign-ins: `POST /_gateway/auth/login` with `{"email", "password"}` on `Host: bench.localhost`, through '
        f"a gateway (1 worker) in front of a tenant-service with the default settings. This part is not pinned: "
        f"the tenant-service, gateway, PostgreSQL, Redis and the client share the machine's {nproc} cores, as a "
        "deployment on one host would. Sequential: one client (httpx, keep-alive) signs the users in one after "
        f"another, {settings.login_samples} times per run; latency is the client's, per run p50/p90/p99, the table "
        "shows medians over runs. CPU ms per sign-in: utime+stime of the tenant-service (all threads) over the "
        "batch.",
        "Failure path: a second tenant-service of the same installation with LOGIN_MAX_FAILURES and "
        "LOGIN_MAX_ADDRESS_FAILURES at 10⁹ (with the defaults, 5 and 50, the sixth failure is a 429 that checks "
        "no password) behind a gateway of its own, on a second tenant (`bench-failures`, its own "
        f"{USERS} users): failures are counted per tenant in Redis, which both tenant-services share, so the "
        "first tenant's accounts and address stay unlocked for the successful sign-ins. Per run, "
        f"{settings.login_samples} wrong passwords of existing users and {settings.login_samples} unknown emails, "
        "alternating (ABBA); every answer must be 401 with the same body. The target compares the medians of the "
        "two kinds run by run.",
        f"Concurrent sign-ins: wrk (1 thread, a Lua script posting the JSON bodies of the {USERS} users in turn) "
        f"with {', '.join(str(c) for c in settings.login_clients)} connections for {settings.login_seconds:g} s "
        "each, interleaved over the runs (ascending, then descending), against the same gateway and its single "
        "tenant-service worker. Every answer must be 200.",
        f"Proxied rows: `GET /bench` on `Host: bench.localhost` through a gateway (1 worker) pinned to core "
        f"{ctx.cpu_test}; wrk, the upstream nginx (1 KB body), Redis and the tenant-services on core "
        f"{ctx.cpu_load}, like section 1's row (d). The baseline is the gateway of commit "
        f"`{settings.users_baseline}` (the commit before tenant users), its sources taken from git "
        "(`git archive`) and run from this environment with `PYTHONPATH` naming them before the installed "
        "packages; both gateways read the same tenant-service's directory. The baseline is checked to be the old "
        "code (it answers 404 to `/_gateway/me`) and to read this commit's directory feed (its "
        "`tenantry_common.directory` decodes a page carrying `revoked_sessions`). Credentials: the tenant's API "
        "key (`X-API-Key`) and the API key's access token (`POST /_gateway/token`; the same token) on both "
        "gateways, and a user's access token from a sign-in (`Authorization: Bearer`) on this "
        "commit's. Rows interleave, forward in odd runs and reversed in even ones, after a "
        f"{WARMUP_SECONDS:g} s warm-up of each, {settings.users_proxied_runs} runs of {settings.duration:g} s "
        "(more than the other parts: the ratios are a few percent apart, which three runs do not settle); the "
        "tables show medians over runs.",
    ]

    # ----- part 1: sequential sign-ins, success and failure
    say("users: warm-up sign-ins")
    bodies: set[str] = set()
    failing_host = {"Host": f"{failing.slug}.{BASE_DOMAIN}"}
    with (
        httpx.Client(base_url=gw_login.url, headers=host, timeout=60) as http,
        httpx.Client(base_url=gw_open.url, headers=failing_host, timeout=60) as http_open,
    ):
        _successes(http, emails, 4, ts)
        _failures(http_open, failing_emails, 2, ts_open, bodies, 0)
        sequential: dict[str, list[Attempts]] = {"success": [], "wrong": [], "unknown": []}
        for run_no in range(1, settings.runs + 1):
            for kind in run_order(["success", "failure"], run_no):
                if kind == "success":
                    sequential["success"].append(_successes(http, emails, settings.login_samples, ts))
                else:
                    wrong, unknown = _failures(
                        http_open, failing_emails, settings.login_samples, ts_open, bodies, run_no
                    )
                    sequential["wrong"].append(wrong)
                    sequential["unknown"].append(unknown)
            say(
                f"users: run {run_no}: sign-in p50 {sequential['success'][-1].stats()['p50_ms']:.0f} ms, "
                f"wrong password {sequential['wrong'][-1].stats()['p50_ms']:.0f} ms, "
                f"unknown email {sequential['unknown'][-1].stats()['p50_ms']:.0f} ms"
            )
    if len(bodies) != 1:
        report.error(f"wrong passwords and unknown emails got {len(bodies)} different bodies: {sorted(bodies)}")

    # ----- part 2: concurrent sign-ins against one tenant-service worker
    script = ctx.root / "users-login.lua"
    script.write_text(login_script([{"email": e, "password": PASSWORD} for e in emails]))
    loads: dict[int, list[LoginLoad]] = {c: [] for c in settings.login_clients}
    for run_no in range(1, settings.runs + 1):
        for clients in run_order(list(settings.login_clients), run_no):
            loads[clients].append(_login_load(ctx, report, gw_login, ts, host, script, clients, settings.login_seconds))

    # ----- part 3: the proxied hot path
    # A revoked session in the feed: this gateway refuses its token, and the baseline must still read the feed.
    revoked = httpx.post(
        gw_login.url + LOGIN, json={"email": emails[1], "password": PASSWORD}, headers=host, timeout=60
    )
    revoked.raise_for_status()
    out = httpx.post(
        gw_login.url + "/_gateway/auth/logout",
        json={"refresh_token": revoked.json()["refresh_token"]},
        headers=host,
        timeout=60,
    )
    if out.status_code != 204:
        raise RuntimeError(f"logout: {out.status_code} {out.text[:300]}")
    revoked_token = {**host, "Authorization": f"Bearer {revoked.json()['access_token']}"}
    wait_until(
        lambda: httpx.get(gw_new.url + BENCH_PATH, headers=revoked_token, timeout=5).status_code == 401,
        30,
        "the new gateway refuses a revoked session's token",
    )
    feed = _feed(ts.url, inst.gateway_token)
    listed = [t for t in json.loads(feed)["tenants"] if t["id"] == tenant.id]
    if not listed or not listed[0].get("revoked_sessions"):
        raise RuntimeError("the directory feed lists no revoked session: the baseline's reading would prove nothing")
    rows = _rows(ctx, report, tenant, host, emails, gw_new, gw_old, baseline, feed)
    if ctx.cpu_load is not None:
        ctx.backends.pin_redis(ctx.cpu_load)
    secrets: dict[str, str] = {tenant.key: "<tenant API key>"}
    for row in rows:
        if "Authorization" in row.headers:
            secrets[row.headers["Authorization"][7:]] = "<access token>"
        check_body(row.gateway.url + BENCH_PATH, row.headers)
    say("users: proxied rows, warm-up")
    for row in rows:
        measure(
            ctx,
            report,
            f"warm-up {row.key}",
            row.gateway.url + BENCH_PATH,
            row.headers,
            under_test=None,
            duration=WARMUP_SECONDS,
            secrets=secrets,
        )
    samples: dict[str, list[Sample]] = {row.key: [] for row in rows}
    for run_no in range(1, settings.users_proxied_runs + 1):
        for row in run_order(rows, run_no):
            samples[row.key].append(
                measure(
                    ctx,
                    report,
                    f"run {run_no} {row.key}",
                    row.gateway.url + BENCH_PATH,
                    row.headers,
                    under_test=row.gateway,
                    secrets=secrets,
                    upstream=upstream,
                )
            )
    user_row = next(r for r in rows if r.key == "user")
    monitored = measure(
        ctx,
        report,
        "MONITOR user",
        user_row.gateway.url + BENCH_PATH,
        user_row.headers,
        under_test=None,
        duration=min(settings.duration, 3),
        secrets=secrets,
        monitor=True,
        upstream=upstream,
    )
    proxied = {key: summarize(s) for key, s in samples.items()}
    _report(ctx, report, parameters, users_settings, sequential, loads, rows, proxied, monitored, len(bodies) == 1)


def _rows(
    ctx: BenchContext,
    report: SectionReport,
    tenant: Tenant,
    host: dict[str, str],
    emails: list[str],
    gw_new: ServerProcess,
    gw_old: ServerProcess | None,
    baseline: Path | None,
    feed: bytes,
) -> list[Row]:
    """The proxied rows, after checking that the baseline is the old code and reads the newer feed."""
    api = {**host, "X-API-Key": tenant.key}
    signed_in = httpx.post(
        gw_new.url + LOGIN, json={"email": emails[0], "password": PASSWORD}, headers=host, timeout=60
    )
    signed_in.raise_for_status()
    user = {**host, "Authorization": f"Bearer {signed_in.json()['access_token']}"}
    key_token = {**host, "Authorization": f"Bearer {access_token(gw_new.url, tenant)}"}
    me_new = httpx.get(gw_new.url + "/_gateway/me", headers=api, timeout=10).status_code
    if me_new != 200:
        report.error(f"this commit's gateway answers {me_new} to /_gateway/me")
    rows = []
    if gw_old is not None and baseline is not None:
        me_old = httpx.get(gw_old.url + "/_gateway/me", headers=api, timeout=10).status_code
        read = _old_code_reads_feed(baseline, feed)
        if me_old != 404:
            report.error(f"the baseline gateway answers {me_old} to /_gateway/me: it is not the old code")
        else:
            report.notes.append(
                f"The baseline gateway answered 404 to `/_gateway/me` (this commit's: {me_new}), and the baseline's "
                f"`tenantry_common.directory` decoded this commit's directory feed, which carried a revoked "
                f"session ({read.split()[-1]} tenant(s) read by "
                f"`{read.split()[0].replace(str(ctx.root), '<run dir>')}`)."
            )
        base = ctx.settings.users_baseline
        rows += [
            Row("old", f"(a) gateway of {base}, API key", gw_old, api),
            Row("old_token", f"(a') gateway of {base}, the API key's access token", gw_old, key_token),
        ]
    compared = gw_old is not None and baseline is not None
    rows += [
        Row("new", "(b) this commit's gateway, API key", gw_new, api, "old" if compared else None),
        Row(
            "key_token",
            "(b') this commit's gateway, the API key's access token",
            gw_new,
            key_token,
            "old_token" if compared else None,
        ),
        Row("user", "(c) this commit's gateway, a user's access token", gw_new, user, "key_token"),
    ]
    # Pairs compared run by run are neighbours in the order (forward in odd runs, reversed in even ones).
    order = ["old", "new", "key_token", "old_token", "user"]
    rows.sort(key=lambda r: order.index(r.key))
    return rows


# --------------------------------------------------------------------------- the report


def _report(
    ctx: BenchContext,
    report: SectionReport,
    parameters: str,
    users_settings: UserSettings,
    sequential: dict[str, list[Attempts]],
    loads: dict[int, list[LoginLoad]],
    rows: list[Row],
    proxied: dict[str, dict[str, Any]],
    monitored: Sample,
    same_body: bool,
) -> None:
    nproc = int(ctx.machine["nproc"])
    seq: dict[str, dict[str, Any]] = {
        kind: {
            **{stat: median([a.stats()[stat] for a in runs]) for stat in ("p50_ms", "p90_ms", "p99_ms")},
            "cpu_ms": median([a.cpu_s * 1000 / len(a.latencies_ms) for a in runs]),
            "tries": sum(len(a.latencies_ms) for a in runs),
            "run_p50s": [a.stats()["p50_ms"] for a in runs],
        }
        for kind, runs in sequential.items()
    }
    unknown_vs_wrong, ratio_runs = paired_ratio(seq["unknown"]["run_p50s"], seq["wrong"]["run_p50s"])
    table = report.table(
        f"Sequential sign-ins through the gateway, one client ({parameters}; medians over runs)",
        ["Sign-in", "tries", "p50 ms", "p90 ms", "p99 ms", "tenant-service CPU ms/try", "runs' p50 ms"],
    )
    labels = {
        "success": "successful (default limits)",
        "wrong": "wrong password (401)",
        "unknown": "unknown email (401)",
    }
    for kind, label in labels.items():
        s = seq[kind]
        table.rows.append(
            [
                label,
                str(s["tries"]),
                format_number(s["p50_ms"]),
                format_number(s["p90_ms"]),
                format_number(s["p99_ms"]),
                format_number(s["cpu_ms"]) + (" (both kinds)" if kind != "success" else ""),
                ", ".join(format_number(x) for x in s["run_p50s"]),
            ]
        )
    concurrent: dict[int, dict[str, Any]] = {
        clients: {
            "logins_per_s": median([r.result.rps for r in runs]),
            "p50_ms": median([r.result.p50_ms for r in runs]),
            "p99_ms": median([r.result.p99_ms for r in runs]),
            "service_cpu_ms": median([r.service_cpu_ms for r in runs]),
            "gateway_cpu_ms": median([r.gateway_cpu_ms for r in runs]),
            "logins": sum(r.result.requests for r in runs),
            "runs": [r.to_dict() for r in runs],
        }
        for clients, runs in loads.items()
    }
    load_table = report.table(
        f"Concurrent sign-ins against one tenant-service worker ({nproc} cores shared by every process; "
        f"PASSWORD_HASH_CONCURRENCY = {users_settings.hash_concurrency}; medians over runs)",
        [
            "concurrent clients",
            "sign-ins/s",
            "p50 ms",
            "p99 ms",
            "tenant-service CPU ms/sign-in",
            "gateway CPU ms/sign-in",
            "sign-ins (all runs)",
        ],
    )
    for clients, c in concurrent.items():
        load_table.rows.append(
            [
                str(clients),
                format_number(c["logins_per_s"]),
                format_number(c["p50_ms"]),
                format_number(c["p99_ms"]),
                format_number(c["service_cpu_ms"]),
                format_number(c["gateway_cpu_ms"]),
                f"{c['logins']:,}",
            ]
        )
    letters = {row.key: row.label.split(")", 1)[0] + ")" for row in rows}
    proxy_table = report.table(
        f"Proxied requests, 1 gateway worker pinned to core {ctx.cpu_test} (medians over runs)",
        ["Row", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "req/s ÷ the row named (median of runs' ratios)"],
    )
    table_order = ["old", "old_token", "new", "key_token", "user"]
    for row in sorted(rows, key=lambda r: table_order.index(r.key)):
        p = proxied[row.key]
        versus = (
            f"{format_number(paired_rps(p, proxied[row.versus])[0])} ÷ {letters[row.versus]}"
            if row.versus is not None
            else ""
        )
        proxy_table.rows.append(
            [
                row.label,
                format_number(p["rps"]),
                format_number(p["p50_ms"]),
                format_number(p["p99_ms"]),
                format_number(p["cpu_us_per_request"]),
                versus,
            ]
        )
    best = max(concurrent.items(), key=lambda item: item[1]["logins_per_s"])
    new_vs_old, new_vs_old_runs = paired_rps(proxied["new"], proxied["old"]) if "old" in proxied else (None, "")
    token_vs_old, token_vs_old_runs = (
        paired_rps(proxied["key_token"], proxied["old_token"]) if "old_token" in proxied else (None, "")
    )
    user_vs_token, user_vs_token_runs = paired_rps(proxied["user"], proxied["key_token"])
    user_vs_key, _ = paired_rps(proxied["user"], proxied["new"])
    cpu_new, cpu_old = proxied["new"]["cpu_us_per_request"], proxied.get("old", {}).get("cpu_us_per_request")
    report.data = {
        "hash_parameters": parameters,
        "hash_concurrency": users_settings.hash_concurrency,
        "nproc": nproc,
        "sequential": seq,
        "unknown_vs_wrong": unknown_vs_wrong,
        "concurrent": {str(k): v for k, v in concurrent.items()},
        "proxied": {row.key: {"label": row.label, **proxied[row.key]} for row in rows},
        "new_vs_old": new_vs_old,
        "new_vs_old_key_token": token_vs_old,
        "user_vs_key_token": user_vs_token,
        "user_vs_api_key": user_vs_key,
        "redis_calls_user_token": monitored.to_dict(),
    }
    clients_text = ", ".join(f"{format_number(c['logins_per_s'])} with {n}" for n, c in concurrent.items())
    p50_text = ", ".join(f"{format_number(c['p50_ms'])} ms" for c in concurrent.values())
    used = best[1]["logins_per_s"] * best[1]["service_cpu_ms"] / 1000
    report.summary = [
        f"A sign-in through the gateway took {format_number(seq['success']['p50_ms'])} ms at the median (p90 "
        f"{format_number(seq['success']['p90_ms'])} ms, p99 {format_number(seq['success']['p99_ms'])} ms) with "
        f"{parameters}; the tenant-service spent {format_number(seq['success']['cpu_ms'])} CPU ms on each (argon2 "
        "runs its lanes in threads, so the wall time may be below the CPU time on several cores).",
        f"One tenant-service worker did {clients_text} concurrent clients (sign-ins/s; p50 {p50_text}). At its best "
        f"it kept {format_number(used)} of the machine's {nproc} cores busy at "
        f"{format_number(best[1]['service_cpu_ms'])} CPU ms per sign-in (one at a time: "
        f"{format_number(seq['success']['cpu_ms'])} ms)"
        + (
            ": a worker's rate is bounded by the cores its hashes may use (about 1000 ÷ the CPU ms per sign-in, per "
            "core), and more clients only wait longer."
            if used >= 0.8 * nproc
            else "."
        ),
        f"A wrong password and an unknown email took {format_number(seq['wrong']['p50_ms'])} ms and "
        f"{format_number(seq['unknown']['p50_ms'])} ms at the median (unknown ÷ wrong "
        f"{format_number(unknown_vs_wrong)}), "
        + ("with the same 401 body." if same_body else "with different bodies (see the errors)."),
        (
            f"On the proxied path this commit's gateway did {format_number(new_vs_old)} times the baseline's "
            f"requests/s ({format_number(proxied['new']['rps'])} vs {format_number(proxied['old']['rps'])} req/s; "
            f"{format_number(cpu_new)} vs {format_number(cpu_old)} CPU µs/request) with the API key, and "
            f"{format_number(token_vs_old)} times with the API key's access token "
            f"({format_number(proxied['key_token']['cpu_us_per_request'])} vs "
            f"{format_number(proxied.get('old_token', {}).get('cpu_us_per_request'))} CPU µs/request). "
            if new_vs_old is not None
            else "The baseline gateway was not measured. "
        )
        + f"A user's access token did {format_number(user_vs_token)} times the rate of the API key's access token "
        f"and {format_number(user_vs_key)} times that of the API key itself; Redis calls per request with a "
        f"user's token: {format_number(monitored.client_calls_per_request)}.",
    ]
    report.targets += [
        Target(
            "users.login_p50",
            f"Sign-in p50 through the gateway ({parameters}, sequential)",
            seq["success"]["p50_ms"],
            "<=",
            500.0,
            unit="ms",
            detail=f"p90 {format_number(seq['success']['p90_ms'])} ms, p99 {format_number(seq['success']['p99_ms'])} "
            f"ms over {seq['success']['tries']} sign-ins",
        ),
        Target(
            "users.failure_timing",
            "Unknown-email vs wrong-password sign-in p50, larger ÷ smaller",
            spread(unknown_vs_wrong, 1.0),
            "<=",
            1.25,
            ratio=unknown_vs_wrong,
            detail=f"unknown ÷ wrong: {ratio_runs}; medians {format_number(seq['unknown']['p50_ms'])} ÷ "
            f"{format_number(seq['wrong']['p50_ms'])} ms over {seq['wrong']['tries']} tries each",
        ),
        Target(
            "users.proxied_new_vs_old",
            f"Proxied req/s, this commit's gateway ÷ {ctx.settings.users_baseline}'s (API key, 1 worker)",
            new_vs_old,
            ">=",
            0.95,
            ratio=new_vs_old,
            detail=f"{new_vs_old_runs}; medians {format_number(proxied['new']['rps'])} ÷ "
            f"{format_number(proxied.get('old', {}).get('rps'))} req/s",
        ),
        Target(
            "users.proxied_new_vs_old_token",
            f"Proxied req/s, this commit's gateway ÷ {ctx.settings.users_baseline}'s (the API key's access token)",
            token_vs_old,
            ">=",
            0.95,
            ratio=token_vs_old,
            detail=f"{token_vs_old_runs}; medians {format_number(proxied['key_token']['rps'])} ÷ "
            f"{format_number(proxied.get('old_token', {}).get('rps'))} req/s",
        ),
        Target(
            "users.user_token_vs_key_token",
            "Proxied req/s, a user's access token ÷ the API key's access token",
            user_vs_token,
            ">=",
            0.95,
            ratio=user_vs_token,
            detail=f"{user_vs_token_runs}; medians {format_number(proxied['user']['rps'])} ÷ "
            f"{format_number(proxied['key_token']['rps'])} req/s",
        ),
        Target(
            "users.redis_per_request.user",
            "Redis calls per proxied request (a user's access token)",
            monitored.client_calls_per_request,
            "==",
            1.0,
            tolerance=0.01,
            detail=f"MONITOR over {monitored.per_request_base:,} requests",
        ),
    ]
