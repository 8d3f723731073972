"""Pieces shared by the HTTP load sections: one measured wrk run, medians over runs, the upstream nginx."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.context import BenchContext, SectionReport, say
from bench.nginx import BODY_BYTES, nginx_service, served_requests, upstream_config
from bench.platform import installation, run_async
from bench.procs import CpuMeter
from bench.redisstats import RedisMonitor, calls_delta, without_heartbeats
from bench.results import median, paired_ratio
from bench.wrk import display_command, run_wrk, wrk_command
from tenantry_devtools.platform import Installation
from tenantry_devtools.processes import ServerProcess, free_port, http_ok

BENCH_PATH = "/bench"
T = TypeVar("T")
DRAIN_SECONDS = 0.3


@dataclass
class Sample:
    """One wrk run against one target, with the cost of the process under test."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    cpu_us_per_request: float | None
    redis_calls: dict[str, int] = field(default_factory=dict)
    """Per command, from INFO commandstats (commands run inside scripts included)."""
    client_calls: dict[str, int] | None = None
    """Per command, the commands clients sent (MONITOR), when monitored."""
    script_calls: dict[str, int] | None = None
    """Per command, the commands scripts ran inside Redis (MONITOR), when monitored."""
    forwarded: int | None = None
    """Requests the upstream served during the run (a proxy also finishes the requests in flight when wrk stops,
    which wrk does not count): the denominator of the Redis numbers when known."""

    @property
    def per_request_base(self) -> int:
        """Requests that did the work counted in Redis."""
        return self.forwarded if self.forwarded else self.requests

    @property
    def redis_per_request(self) -> float:
        """All Redis commands (but the harness's INFO) per request, from commandstats."""
        base = self.per_request_base
        return sum(self.redis_calls.values()) / base if base else float("nan")

    @property
    def client_calls_per_request(self) -> float | None:
        """Redis calls (commands sent by clients) per request, when monitored."""
        if self.client_calls is None or not self.per_request_base:
            return None
        return sum(self.client_calls.values()) / self.per_request_base

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "rps": self.rps,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "requests": self.requests,
            "non_2xx": self.non_2xx,
            "socket_errors": self.socket_errors,
            "cpu_us_per_request": self.cpu_us_per_request,
            "forwarded": self.forwarded,
            "redis_calls": self.redis_calls,
            "redis_per_request": self.redis_per_request,
            "client_calls": self.client_calls,
            "script_calls": self.script_calls,
            "client_calls_per_request": self.client_calls_per_request,
        }


def measure(
    ctx: BenchContext,
    report: SectionReport,
    label: str,
    url: str,
    headers: dict[str, str],
    *,
    under_test: ServerProcess | None,
    duration: float | None = None,
    connections: int | None = None,
    script: Path | None = None,
    expect_rejections: bool = False,
    secrets: dict[str, str] | None = None,
    monitor: bool = False,
    upstream: ServerProcess | None = None,
) -> Sample:
    """One wrk run: throughput, latency, CPU of the process under test, Redis commands.

    With ``monitor``, Redis ``MONITOR`` also counts the commands clients send (it slows Redis down, so such runs
    count calls and are not used for throughput). Non-2xx answers (e.g. rate limiting) and socket errors are
    recorded as errors of the section unless ``expect_rejections``.
    """
    settings = ctx.settings
    seconds = duration if duration is not None else settings.duration
    argv = wrk_command(
        url,
        threads=settings.threads,
        connections=connections or settings.connections,
        duration_s=seconds,
        headers=headers,
        script=script,
        cpus=ctx.cpu_load,
    )
    report.command(display_command(argv, secrets))
    stats = ctx.backends.stats()
    meter = CpuMeter(under_test.pid) if under_test is not None else None
    served_before = served_requests(upstream.url) if upstream is not None else 0
    before = stats.snapshot()
    watcher = RedisMonitor(ctx.backends.redis_url) if monitor else None
    if watcher is not None:
        watcher.start()
    if meter is not None:
        meter.start()
    try:
        result, raw = run_wrk(argv, seconds)
    finally:
        cpu = meter.stop() if meter is not None else None
        time.sleep(DRAIN_SECONDS)  # requests still in flight when wrk stopped finish (and make their Redis call)
        after = stats.snapshot()
        client_calls, script_calls = watcher.stop(drain=0) if watcher is not None else (None, None)
        # The second stub_status read counts itself.
        forwarded = served_requests(upstream.url) - served_before - 1 if upstream is not None else None
    sample = Sample(
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        requests=result.requests,
        non_2xx=result.non_2xx,
        socket_errors=result.errors,
        cpu_us_per_request=cpu * 1e6 / result.requests if cpu is not None and result.requests else None,
        redis_calls=without_heartbeats(calls_delta(before, after), watcher.heartbeats if watcher else 0),
        client_calls=client_calls,
        script_calls=script_calls,
        forwarded=forwarded,
    )
    if not expect_rejections and (result.non_2xx or result.errors):
        report.error(
            f"{label}: {result.non_2xx} non-2xx responses and {result.errors} socket errors out of "
            f"{result.requests} requests; the row is not valid.\n{raw}"
        )
    say(
        f"{label}: {result.rps:,.0f} req/s p50 {result.p50_ms:.3f} ms p99 {result.p99_ms:.3f} ms"
        + (f" cpu {sample.cpu_us_per_request:.0f} us/req" if sample.cpu_us_per_request is not None else "")
        + f" redis {sample.redis_per_request:.3f} commands/req"
        + (f", {sample.client_calls_per_request:.3f} calls/req" if sample.client_calls_per_request is not None else "")
    )
    return sample


def summarize(samples: list[Sample]) -> dict[str, Any]:
    """Medians over runs (Redis calls: per command, per request, from the summed runs)."""
    if not samples:
        return {}
    cpu = [s.cpu_us_per_request for s in samples if s.cpu_us_per_request is not None]
    requests = sum(s.per_request_base for s in samples)
    commands: dict[str, int] = {}
    for sample in samples:
        for name, calls in sample.redis_calls.items():
            commands[name] = commands.get(name, 0) + calls
    return {
        "runs": len(samples),
        "rps": median([s.rps for s in samples]),
        "p50_ms": median([s.p50_ms for s in samples]),
        "p99_ms": median([s.p99_ms for s in samples]),
        "cpu_us_per_request": median(cpu) if cpu else None,
        "redis_per_request": median([s.redis_per_request for s in samples]),
        "redis_per_command_per_request": {k: v / requests for k, v in sorted(commands.items())} if requests else {},
        "non_2xx": sum(s.non_2xx for s in samples),
        "socket_errors": sum(s.socket_errors for s in samples),
        "samples": [s.to_dict() for s in samples],
    }


def run_order(items: list[T], run_no: int) -> list[T]:
    """The rows of run ``run_no`` (1-based): forward in odd runs, reversed in even ones, so no row always runs
    right after another (an order effect on a noisy machine averages out over the runs)."""
    return items if run_no % 2 else items[::-1]


def paired_rps(numerator: dict[str, Any], denominator: dict[str, Any]) -> tuple[float | None, str]:
    """:func:`bench.results.paired_ratio` of two summarised rows' request rates (runs interleave the rows, so
    run i of each was measured side by side)."""
    return paired_ratio([s["rps"] for s in numerator["samples"]], [s["rps"] for s in denominator["samples"]])


def in_installation(
    ctx: BenchContext,
    report: SectionReport,
    prefix: str,
    body: Callable[[Installation], None],
    cleanup: Callable[[], None] | None = None,
    *,
    pg_url: str | None = None,
) -> dict[str, Any]:
    """Run a section's ``body`` on an installation of its own (on the run's PostgreSQL, or the cluster of
    ``pg_url``); whatever happens, stop what the section started, drop the installation and return the report (an
    exception is recorded in it, and the other sections run)."""
    inst = installation(ctx.backends, prefix, pg_url=pg_url)
    mark = ctx.registry.mark()
    try:
        run_async(inst.create())
        body(inst)
    except Exception as exc:  # noqa: BLE001 - recorded in the report; the other sections still run
        report.error(f"section aborted: {type(exc).__name__}: {exc}")
    finally:
        ctx.registry.stop_since(mark)
        if cleanup is not None:
            cleanup()
        run_async(inst.drop())
    return report.finish()


def start_upstream(ctx: BenchContext, name: str = "upstream-nginx") -> ServerProcess:
    """nginx answering 1 KB on a free port, pinned with the load generator."""
    port = free_port()
    prefix = ctx.root / name
    service = ctx.registry.add(nginx_service(name, prefix, upstream_config(prefix, port), port=port, cpus=ctx.cpu_load))
    return service.start(ready=lambda: http_ok(service.url + BENCH_PATH), timeout=30)


def check_body(url: str, headers: dict[str, str]) -> None:
    """The target answers 200 with exactly the upstream's 1 KB body (so every row moves the same bytes)."""
    import httpx  # noqa: PLC0415

    response = httpx.get(url, headers=headers, timeout=10)
    if response.status_code != 200 or len(response.content) != BODY_BYTES:
        raise RuntimeError(f"{url}: status {response.status_code}, {len(response.content)} bytes (want 200, 1024)")


def port_of(url: str) -> int:
    """The port of ``http://host:port``."""
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])
