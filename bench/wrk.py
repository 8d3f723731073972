"""Running ``wrk`` and reading its ``--latency`` report.

The parser is a pure function of wrk's text output, so it is unit-tested without processes
(tests/unit/test_bench_parsing.py).
"""

from __future__ import annotations

import math
import re
import shlex
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

#: wrk prints times with these units (format_time in wrk's units.c); values are converted to milliseconds.
_TIME_UNITS_MS: Final = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_TIME: Final = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(us|ms|s|m|h)$")
_REQUESTS: Final = re.compile(r"^\s*(\d+) requests in ([0-9.]+(?:us|ms|s|m|h)), ")
_RPS: Final = re.compile(r"^Requests/sec:\s+([0-9.]+)\s*$", re.MULTILINE)
_PERCENTILE: Final = re.compile(r"^\s+(50|75|90|99)(?:\.0+)?%\s+(\S+)\s*$", re.MULTILINE)
_LATENCY_AVG: Final = re.compile(r"^\s+Latency\s+(\S+)\s+(\S+)\s+(\S+)", re.MULTILINE)
_NON_2XX: Final = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)\s*$", re.MULTILINE)
_SOCKET_ERRORS: Final = re.compile(
    r"^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)\s*$", re.MULTILINE
)


class WrkError(RuntimeError):
    """wrk failed, or printed something this parser does not understand."""


def parse_time_ms(text: str) -> float:
    """``"812.00us"`` → 0.812, ``"1.20ms"`` → 1.2, ``"2.01s"`` → 2010.0 (milliseconds).

    Raises:
        WrkError: not a wrk time.
    """
    match = _TIME.fullmatch(text.strip())
    if match is None:
        raise WrkError(f"not a wrk time: {text!r}")
    return float(match.group(1)) * _TIME_UNITS_MS[match.group(2)]


@dataclass(frozen=True)
class WrkResult:
    """One wrk run, latencies in milliseconds."""

    requests: int
    duration_s: float
    rps: float
    latency_avg_ms: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        """All socket errors together."""
        return sum(self.socket_errors.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def parse_wrk_output(text: str) -> WrkResult:
    """Read the report ``wrk --latency`` prints.

    Raises:
        WrkError: a required line (latency distribution, request count, Requests/sec) is missing.
    """
    percentiles = {int(p): parse_time_ms(v) for p, v in _PERCENTILE.findall(text)}
    missing = [p for p in (50, 75, 90, 99) if p not in percentiles]
    if missing:
        raise WrkError(f"wrk output has no latency distribution for {missing} (was --latency given?):\n{text}")
    requests = duration = None
    for line in text.splitlines():
        match = _REQUESTS.match(line)
        if match:
            requests, duration = int(match.group(1)), parse_time_ms(match.group(2)) / 1000
    rps = _RPS.search(text)
    avg = _LATENCY_AVG.search(text)
    if requests is None or duration is None or rps is None or avg is None:
        raise WrkError(f"wrk output lacks the request count, Requests/sec or the latency line:\n{text}")
    non_2xx = _NON_2XX.search(text)
    sockets = _SOCKET_ERRORS.search(text)
    socket_errors = (
        dict(zip(("connect", "read", "write", "timeout"), (int(g) for g in sockets.groups()), strict=True))
        if sockets
        else {}
    )
    return WrkResult(
        requests=requests,
        duration_s=duration,
        rps=float(rps.group(1)),
        latency_avg_ms=parse_time_ms(avg.group(1)),
        p50_ms=percentiles[50],
        p75_ms=percentiles[75],
        p90_ms=percentiles[90],
        p99_ms=percentiles[99],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=socket_errors,
    )


def delay_script(delay_ms: int) -> str:
    """A wrk Lua script that waits about ``delay_ms`` before each request (wrk has no rate option).

    The wait is drawn uniformly from ``[delay/2, 3*delay/2]`` (whole milliseconds, mean ``delay``): with a fixed
    wait all connections fall into step and send their requests in bursts, which no real client population does.
    """
    low, high = delay_ms - delay_ms // 2, delay_ms + delay_ms // 2
    return (
        f"-- Written by bench/wrk.py: each connection waits {low}..{high} ms (mean {delay_ms}) before a request.\n"
        "math.randomseed(os.time() + math.floor(os.clock() * 1000000))\n"
        f"function delay()\n  return math.random({low}, {high})\nend\n"
    )


def calibrated_delay(rate: float, connections: int, delay_ms: int, achieved_rps: float) -> int:
    """The delay that makes ``connections`` offer ``rate`` req/s, from a trial run at ``delay_ms``.

    A closed-loop connection sends one request per (delay + response time); the trial run's achieved rate tells
    the response time, which is then taken off the delay.
    """
    if achieved_rps <= 0:
        return delay_ms
    response_ms = max(0.0, connections * 1000 / achieved_rps - delay_ms)
    return max(1, round(connections * 1000 / rate - response_ms))


def paced_load(rate: float, connections: int, min_delay_ms: int = 10) -> tuple[int, int]:
    """Connections and per-request delay (whole ms, as wrk's ``delay()`` takes) that offer about ``rate`` req/s.

    Each connection sends one request every ``delay`` ms (plus the response time, small against it). When the
    delay would fall below ``min_delay_ms`` the connection count grows instead, so the whole-millisecond rounding
    stays a small error.

    Returns:
        ``(connections, delay_ms)``.
    """
    if rate <= 0 or connections < 1:
        raise ValueError("rate and connections must be positive")
    conns = max(connections, math.ceil(rate * min_delay_ms / 1000))
    delay = max(1, round(conns * 1000 / rate))
    return conns, delay


def wrk_command(
    url: str,
    *,
    threads: int,
    connections: int,
    duration_s: float,
    headers: dict[str, str],
    script: Path | None = None,
    cpus: str | None = None,
    timeout_s: float = 5.0,
) -> list[str]:
    """The argv of one wrk run (``taskset -c cpus`` in front when pinned)."""
    argv = [] if cpus is None else ["taskset", "-c", cpus]
    argv += ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s", "--latency", f"--timeout={timeout_s:g}s"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    return argv


def display_command(argv: list[str], secrets: dict[str, str] | None = None) -> str:
    """A shell line for the docs, with secret values replaced by placeholders (``{value: placeholder}``)."""
    line = shlex.join(argv)
    for value, placeholder in (secrets or {}).items():
        line = line.replace(value, placeholder)
    return line


def run_wrk(argv: list[str], duration_s: float) -> tuple[WrkResult, str]:
    """Run wrk; return the parsed result and its raw output.

    Raises:
        WrkError: wrk exited non-zero, hung, or printed an unreadable report.
    """
    try:
        done = subprocess.run(  # noqa: S603 - argv built above, no shell
            argv, capture_output=True, text=True, timeout=duration_s + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish: {shlex.join(argv)}") from exc
    if done.returncode != 0:
        raise WrkError(f"wrk exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return parse_wrk_output(done.stdout), done.stdout
