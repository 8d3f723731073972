"""Load checks shared by the hardening suite (about 30 s of wrk in ``make test``) and ``make soak`` (minutes).

The same functions run both: only the duration differs. Everything here is black-box: real processes over
loopback HTTP, ``wrk`` as the load generator, and ``/proc/<pid>`` for the memory and file descriptors of the
process under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from support.platform import Tenant, TenantServiceProcess
from support.stacks import GatewayStack

WRK_FIX = (
    "wrk is not installed, and the load tests need it. Install it: `apt-get install -y wrk` "
    "(`make test` does this on a machine where it may), or put a wrk binary on PATH."
)

# Counts every response by status in each wrk thread; done() prints them, and the error summary, on lines of
# their own so the test reads exact numbers instead of wrk's rounded report.
WRK_COUNTING_SCRIPT = """
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  counts = {}
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("counts")) do
      io.write(string.format("WRK_STATUS %d %d\\n", status, n))
    end
  end
  local e = summary.errors
  io.write(string.format(
    "WRK_SUMMARY requests=%d connect=%d read=%d write=%d status=%d timeout=%d duration_us=%d p99_us=%d\\n",
    summary.requests, e.connect, e.read, e.write, e.status, e.timeout, summary.duration,
    latency:percentile(99)))
end
"""


def require_wrk() -> str:
    """The path of ``wrk``; fails the test (never skips it) with the fix when it is missing."""
    path = shutil.which("wrk")
    if path is None:
        pytest.fail(WRK_FIX, pytrace=False)
    return path


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run saw, exactly (from the counting script, not wrk's rounded report)."""

    requests: int
    statuses: dict[int, int]
    errors: dict[str, int]
    seconds: float
    p99_ms: float
    output: str

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    @property
    def socket_errors(self) -> dict[str, int]:
        """Read, write and timeout errors (connect errors are the kernel's backlog, not the server's answer)."""
        return {kind: self.errors[kind] for kind in ("read", "write", "timeout") if self.errors[kind]}

    def describe(self) -> str:
        """One line for failure messages and the report."""
        rate = self.requests / self.seconds if self.seconds else 0.0
        return (
            f"{self.requests} requests in {self.seconds:.1f}s ({rate:.0f}/s), statuses {self.statuses}, "
            f"errors {self.errors}, p99 {self.p99_ms:.0f} ms"
        )


_SUMMARY = re.compile(
    r"WRK_SUMMARY requests=(\d+) connect=(\d+) read=(\d+) write=(\d+) status=(\d+) timeout=(\d+) "
    r"duration_us=(\d+) p99_us=(\d+)"
)


def run_wrk(
    url: str,
    *,
    seconds: float,
    headers: dict[str, str] | None = None,
    connections: int = 128,
    threads: int = 2,
    request_timeout: float = 30,
) -> WrkResult:
    """Run wrk against ``url`` for ``seconds`` and count every response by status.

    ``request_timeout`` is wrk's per-request timeout: generous, so that a slow answer on a loaded machine is not
    counted as an error; only a hang is.
    """
    wrk = require_wrk()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_COUNTING_SCRIPT)
    try:
        args = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
        args += [f"--timeout={max(1, round(request_timeout))}s", "-s", script.name]
        for name, value in (headers or {}).items():
            args += ["-H", f"{name}: {value}"]
        done = subprocess.run(
            [*args, url], capture_output=True, text=True, timeout=seconds + request_timeout + 60, check=False
        )
    finally:
        os.unlink(script.name)
    output = done.stdout + done.stderr
    match = _SUMMARY.search(done.stdout)
    if done.returncode != 0 or match is None:
        raise AssertionError(f"wrk failed (exit {done.returncode}):\n{output[-3000:]}")
    statuses: dict[int, int] = {}
    for status, count in re.findall(r"WRK_STATUS (\d+) (\d+)", done.stdout):
        statuses[int(status)] = statuses.get(int(status), 0) + int(count)
    requests, connect, read, write, status_errors, timeouts, duration_us, p99_us = (int(g) for g in match.groups())
    return WrkResult(
        requests=requests,
        statuses=statuses,
        errors={"connect": connect, "read": read, "write": write, "status": status_errors, "timeout": timeouts},
        seconds=duration_us / 1e6,
        p99_ms=p99_us / 1e3,
        output=output,
    )


# --- the process under load ------------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a server may run worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            # The command name may contain spaces and parentheses: the parent pid follows the last ')'.
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


_TCP_LISTEN = "0A"


def _tcp_sockets() -> dict[str, tuple[int, int, str]]:
    """Every TCP socket of the network namespace: inode -> (local port, remote port, state)."""
    table: dict[str, tuple[int, int, str]] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(name).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                table[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state)
    return table


@dataclass(frozen=True)
class Gauges:
    """Resident memory and open file descriptors of a process tree, the fds split by what they are.

    ``clients`` are accepted connections on the server's own port; ``pooled`` counts outgoing connections by
    remote port (keep-alive pools to Redis and upstreams: bounded by the concurrency, not by the request count);
    ``other`` is everything else (files, pipes, the listening socket, event fds).
    """

    rss_kib: int
    fds: int
    clients: int
    pooled: dict[int, int]
    other: int

    def __str__(self) -> str:
        return (
            f"RSS {self.rss_kib / 1024:.1f} MiB, {self.fds} fds ({self.clients} client connections, "
            f"pooled by remote port {self.pooled}, {self.other} other)"
        )


def gauges(pid: int, listen_port: int, pooled_ports: tuple[int, ...] = ()) -> Gauges:
    """Summed ``VmRSS`` (``/proc/<pid>/status``) and open fds (``/proc/<pid>/fd``) over the process tree."""
    rss = 0
    inodes: list[str | None] = []
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{member}/status").read_text()
            found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
            rss += int(found.group(1)) if found else 0
            for fd in os.listdir(f"/proc/{member}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{member}/fd/{fd}")
                    socket_inode = re.fullmatch(r"socket:\[(\d+)\]", target)
                    inodes.append(socket_inode.group(1) if socket_inode else None)
    tcp = _tcp_sockets()
    clients = 0
    pooled = dict.fromkeys(pooled_ports, 0)
    for inode in inodes:
        local, remote, state = tcp.get(inode or "", (0, 0, ""))
        if local == listen_port and state != _TCP_LISTEN:
            clients += 1
        elif remote in pooled:
            pooled[remote] += 1
    return Gauges(rss, len(inodes), clients, pooled, len(inodes) - clients - sum(pooled.values()))


def settled_gauges(
    pid: int, listen_port: int, pooled_ports: tuple[int, ...] = (), *, quiet: float = 2.0, timeout: float = 20.0
) -> Gauges:
    """The gauges once the client connections are gone (or ``timeout``) and the fd count has not changed for
    ``quiet`` seconds: sockets of a finished load run take a moment to close."""
    deadline = time.monotonic() + timeout
    last = gauges(pid, listen_port, pooled_ports)
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = gauges(pid, listen_port, pooled_ports)
        if now.fds != last.fds:
            stable_since = time.monotonic()
        last = now
        if last.clients == 0 and time.monotonic() - stable_since >= quiet:
            break
    return last


# --- the stack under load --------------------------------------------------------------------------------


#: Limits far above what one machine can send, so the quota step runs (one Redis call each) but never refuses.
UNTHROTTLED = {"requests_per_minute": 10**9, "requests_per_day": 10**12}


def pipeline_headers(tenant: Tenant) -> dict[str, str]:
    """Subdomain resolution and API-key authentication: every step of the pipeline runs."""
    return {"Host": f"{tenant.slug}.localhost", "X-API-Key": tenant.key}


def unthrottled_tenant(stack: GatewayStack) -> Tenant:
    """A tenant on an unthrottled plan, once the stack's gateway serves it."""
    plan = f"load-{secrets.token_hex(4)}"
    response = stack.admin.put(f"/admin/plans/{plan}", json={"limits": UNTHROTTLED})
    assert response.status_code == 200, response.text
    tenant = stack.tenant("load", plan=plan)
    # Knowing the key is not enough: the gateway may still see the tenant as provisioning (503) for a moment.
    deadline = time.monotonic() + 10
    limit = str(UNTHROTTLED["requests_per_minute"])
    while True:
        probe = httpx.get(stack.gateway.url + "/ready", headers=pipeline_headers(tenant), timeout=10)
        if probe.status_code == 200 and probe.headers.get("ratelimit-limit") == limit:
            return tenant
        assert time.monotonic() < deadline, f"the gateway does not serve the load tenant: {probe.text}"
        time.sleep(0.05)


@dataclass(frozen=True)
class LoadReport:
    """A warm-up run, then the measured run, with the gateway's gauges after each."""

    warmup: WrkResult
    run: WrkResult
    before: Gauges
    after: Gauges
    connections: int

    def describe(self) -> str:
        """What was measured (printed by the tests: ``pytest -rP`` shows it)."""
        return (
            f"warm-up: {self.warmup.describe()}\nrun: {self.run.describe()}\n"
            f"gateway before: {self.before}\ngateway after: {self.after}"
        )


def pipeline_under_load(
    stack: GatewayStack, tenant: Tenant, *, seconds: float, warmup_seconds: float, connections: int = 128
) -> LoadReport:
    """Warm the gateway up with wrk (pools, caches, allocator), read its gauges, load it, read them again; the
    requests are ``tenant``'s (best: :func:`unthrottled_tenant`)."""
    url = stack.gateway.url + "/load/ping?x=1"
    headers = pipeline_headers(tenant)
    pooled = stack.pooled_ports()
    warmup = run_wrk(url, seconds=warmup_seconds, headers=headers, connections=connections)
    before = settled_gauges(stack.gateway_pid, stack.gateway.port, pooled)
    run = run_wrk(url, seconds=seconds, headers=headers, connections=connections)
    after = settled_gauges(stack.gateway_pid, stack.gateway.port, pooled)
    return LoadReport(warmup, run, before, after, connections)


#: Memory may wander this much between two runs of the same load; a leak under sustained load grows past it.
RSS_TOLERANCE = 0.10
#: Files, pipes and event fds may come and go by a few; a leak per request or per connection would be thousands.
FD_SLACK = 8


def assert_healthy_under_load(report: LoadReport) -> None:
    """Zero 5xx, zero socket errors beyond connect, every answer a 200, memory flat and no fd growth.

    File descriptors: once wrk is gone no client connection may stay open; each keep-alive pool (Redis,
    upstream) may hold at most one connection per concurrent request, however many requests went through; and
    every other fd is back where it was after the warm-up, give or take :data:`FD_SLACK`.
    """
    run, before, after = report.run, report.before, report.after
    detail = report.describe()
    assert run.requests > 0, detail
    assert run.server_errors == 0, f"5xx under load\n{detail}"
    assert run.socket_errors == {}, f"socket errors under load\n{detail}"
    assert run.statuses == {200: sum(run.statuses.values())}, f"a non-200 answer under load\n{detail}"
    assert report.warmup.server_errors == 0, f"5xx during the warm-up\n{detail}"
    assert after.rss_kib <= before.rss_kib * (1 + RSS_TOLERANCE), f"gateway memory grew\n{detail}"
    assert after.clients == 0, f"client connections left open after the load ended\n{detail}"
    for port, count in after.pooled.items():
        assert count <= report.connections + FD_SLACK, f"pool to port {port} outgrew the concurrency\n{detail}"
    assert after.other <= before.other + FD_SLACK, f"gateway file descriptors grew\n{detail}"


# --- the tenant-service under a burst of creates -----------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    path: str
    outcome: int | str
    seconds: float


@dataclass
class BurstReport:
    """What a burst of concurrent creates answered, how each tenant ended, and what the probes saw meanwhile."""

    created: dict[str, int] = field(default_factory=dict)
    final_status: dict[str, str] = field(default_factory=dict)
    probes: list[Probe] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def bad_probes(self, bound: float) -> list[Probe]:
        """Probes that failed, or answered slower than ``bound`` seconds."""
        return [p for p in self.probes if p.outcome != 200 or p.seconds > bound]

    def describe(self) -> str:
        """One line for the report."""
        slowest = max((p.seconds for p in self.probes), default=0.0)
        return (
            f"{len(self.created)} creates answered {sorted(set(self.created.values()))}, final statuses "
            f"{sorted(set(self.final_status.values()))}, {len(self.probes)} probes, slowest {slowest:.2f}s"
        )


#: An answer slower than this is a hang, not a loaded machine.
PROBE_BOUND_SECONDS = 15.0


async def create_burst(service: TenantServiceProcess, slugs: list[str], *, settle_timeout: float = 240) -> BurstReport:
    """Create ``slugs`` concurrently (every other one with ``Prefer: respond-async``) and wait until every
    tenant has left ``provisioning``; meanwhile ``/healthz`` and ``GET /admin/tenants`` are probed over
    connections of their own, each probe with :data:`PROBE_BOUND_SECONDS` as its timeout."""
    report = BurstReport()
    auth = {"Authorization": f"Bearer {service.installation.admin_token}"}
    finished = asyncio.Event()

    async def probe() -> None:
        async with httpx.AsyncClient(base_url=service.url, headers=auth, timeout=PROBE_BOUND_SECONDS) as client:
            while not finished.is_set():
                for path in ("/healthz", "/admin/tenants?limit=5"):
                    started = time.monotonic()
                    try:
                        outcome: int | str = (await client.get(path)).status_code
                    except httpx.HTTPError as exc:
                        outcome = repr(exc)
                    report.probes.append(Probe(path, outcome, time.monotonic() - started))
                await asyncio.sleep(0.2)

    limits = httpx.Limits(max_connections=len(slugs) + 5)
    async with httpx.AsyncClient(base_url=service.url, headers=auth, timeout=settle_timeout, limits=limits) as client:

        async def create(index: int, slug: str) -> None:
            prefer = {"Prefer": "respond-async"} if index % 2 else {}
            try:
                response = await client.post("/admin/tenants", json={"slug": slug, "name": slug}, headers=prefer)
            except httpx.HTTPError as exc:
                report.errors.append(f"{slug}: {exc!r}")
                return
            report.created[slug] = response.status_code
            if response.status_code not in (201, 202):
                report.errors.append(f"{slug}: {response.status_code} {response.text[:300]}")

        prober = asyncio.create_task(probe())
        try:
            await asyncio.gather(*(create(i, slug) for i, slug in enumerate(slugs)))
            deadline = time.monotonic() + settle_timeout
            pending = set(report.created)
            while pending and time.monotonic() < deadline:
                for slug in sorted(pending):
                    status = (await client.get(f"/admin/tenants/{slug}")).json().get("status", "?")
                    report.final_status[slug] = status
                    if status != "provisioning":
                        pending.discard(slug)
                if pending:
                    await asyncio.sleep(0.25)
        finally:
            finished.set()
            await prober
    return report


async def purge_all(service: TenantServiceProcess, slugs: list[str]) -> dict[str, int]:
    """Purge the tenants concurrently; returns each one's status code."""
    auth = {"Authorization": f"Bearer {service.installation.admin_token}"}
    limits = httpx.Limits(max_connections=len(slugs) + 5)
    async with httpx.AsyncClient(base_url=service.url, headers=auth, timeout=240, limits=limits) as client:
        responses = await asyncio.gather(*(client.delete(f"/admin/tenants/{slug}?purge=true") for slug in slugs))
    return {slug: response.status_code for slug, response in zip(slugs, responses, strict=True)}
