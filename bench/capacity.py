"""What one PostgreSQL server with many tenant databases costs: provisioning windows, disk usage, process memory,
and the idle CPU of the server's processes (autovacuum) read from /proc.

The parsing and arithmetic are pure functions (unit-tested in tests/unit/test_bench_parsing.py); :func:`measure_idle`
reads /proc and the server log and nothing else, so measuring an idle server does not wake it (no connection).
"""

from __future__ import annotations

import bisect
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bench.procs import cpu_seconds, cpu_seconds_with_reaped
from bench.results import percentile

#: Process titles of PostgreSQL's long-lived processes, by the kind the report groups them under.
_AUX_KINDS: Final = (
    "autovacuum launcher",
    "autovacuum worker",
    "checkpointer",
    "background writer",
    "walwriter",
    "logical replication launcher",
    "archiver",
    "startup",
)


# --------------------------------------------------------------------------- provisioning windows


@dataclass(frozen=True)
class Span:
    """One create: when it started and ended, seconds from the start of the pass."""

    start: float
    end: float

    @property
    def ms(self) -> float:
        """Its latency in milliseconds."""
        return (self.end - self.start) * 1000


def window(spans: Sequence[Span], first: int, count: int, origin: float = 0.0) -> dict[str, float]:
    """The creates that completed ``first`` .. ``first + count - 1`` (0-based, in completion order): their rate
    (completions ÷ the time from the previous completion, or ``origin`` for the first window, to the last one) and
    their latency percentiles.

    Raises:
        ValueError: the window is empty or reaches past the spans.
    """
    ordered = sorted(spans, key=lambda s: s.end)
    if count < 1 or first < 0 or first + count > len(ordered):
        raise ValueError(f"window {first}+{count} outside {len(ordered)} creates")
    chosen = ordered[first : first + count]
    since = ordered[first - 1].end if first > 0 else origin
    seconds = chosen[-1].end - since
    latencies = [s.ms for s in chosen]
    return {
        "first": first + 1,
        "last": first + count,
        "seconds": seconds,
        "rate": count / seconds if seconds > 0 else float("nan"),
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "max_ms": max(latencies),
        "from_s": since,
        "to_s": chosen[-1].end,
    }


def blocks(spans: Sequence[Span], size: int, origin: float = 0.0) -> list[dict[str, float]]:
    """:func:`window` of every consecutive ``size`` completions (the last block may be shorter).

    Raises:
        ValueError: ``size`` < 1.
    """
    if size < 1:
        raise ValueError("block size must be ≥ 1")
    return [window(spans, i, min(size, len(spans) - i), origin) for i in range(0, len(spans), size)]


def interpolate(samples: Sequence[tuple[float, float]], at: float) -> float:
    """The value of a counter sampled as ``(time, value)`` pairs (ascending times) at time ``at``, linear between
    samples and clamped to the first and last.

    Raises:
        ValueError: no samples.
    """
    if not samples:
        raise ValueError("no samples")
    times = [t for t, _ in samples]
    i = bisect.bisect_left(times, at)
    if i == 0:
        return samples[0][1]
    if i >= len(samples):
        return samples[-1][1]
    (t0, v0), (t1, v1) = samples[i - 1], samples[i]
    return v0 if t1 == t0 else v0 + (v1 - v0) * (at - t0) / (t1 - t0)


# --------------------------------------------------------------------------- disk and memory


def parse_du(text: str) -> dict[str, int]:
    """``du -s -B1 a b c`` output → bytes by path (lines ``<bytes><tab><path>``; others skipped)."""
    sizes: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split("\t", 1)
        if len(parts) == 2 and parts[0].strip().isdigit():
            sizes[parts[1].strip()] = int(parts[0])
    return sizes


def disk_usage(directory: Path, entries: Sequence[str]) -> dict[str, int]:
    """Bytes on disk (allocated blocks, ``du -s -B1``) of ``entries`` inside ``directory``, and ``total``."""
    du = shutil.which("du") or "/usr/bin/du"
    done = subprocess.run(  # noqa: S603 - fixed argv
        [du, "-s", "-B1", *entries], cwd=directory, capture_output=True, text=True, timeout=600, check=False
    )
    sizes = parse_du(done.stdout)
    whole = subprocess.run(  # noqa: S603 - fixed argv
        [du, "-s", "-B1", "."], cwd=directory, capture_output=True, text=True, timeout=600, check=False
    )
    sizes["total"] = parse_du(whole.stdout).get(".", 0)
    return sizes


def parse_status_kb(text: str, name: str) -> int | None:
    """A ``kB`` field of /proc/<pid>/status (``VmRSS``, ``VmHWM`` …) or /proc/meminfo (``Dirty`` …), in kB; None
    when absent."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == name:
            parts = value.split()
            if parts and parts[0].isdigit():
                return int(parts[0])
    return None


def rss_mb(pid: int, name: str = "VmRSS") -> float | None:
    """Resident memory of a process in MB (2^20 bytes); None when it is gone."""
    try:
        kb = parse_status_kb(Path(f"/proc/{pid}/status").read_text(), name)
    except OSError:
        return None
    return kb / 1024 if kb is not None else None


_STAT_FIELDS: Final = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def parse_proc_stat(text: str) -> dict[str, int]:
    """The machine's CPU time so far, in clock ticks, from the ``cpu`` line of /proc/stat (all cores summed):
    ``user``, ``nice``, ``system``, ``idle``, ``iowait``, ``irq``, ``softirq``, ``steal``.

    Raises:
        ValueError: no ``cpu`` line.
    """
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            values = [int(v) for v in parts[1 : 1 + len(_STAT_FIELDS)]]
            return dict(zip(_STAT_FIELDS, values + [0] * (len(_STAT_FIELDS) - len(values)), strict=True))
    raise ValueError("no cpu line in /proc/stat")


# --------------------------------------------------------------------------- PostgreSQL's processes

#: The launcher never sleeps less than 100 ms; when naptime ÷ databases would be shorter, it spaces the databases
#: 1.1 x that apart instead (src/backend/postmaster/autovacuum.c, rebuild_database_list).
MIN_WORKER_SPACING_S: Final = 0.11
_UNITS: Final = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def setting_seconds(text: str) -> float:
    """A PostgreSQL time setting (``60s``, ``1min``, ``500ms``; a bare number is seconds) in seconds.

    Raises:
        ValueError: not a time.
    """
    value = text.strip()
    for unit in sorted(_UNITS, key=len, reverse=True):
        if value.endswith(unit) and value[: -len(unit)].strip().replace(".", "", 1).isdigit():
            return float(value[: -len(unit)]) * _UNITS[unit]
    return float(value)


def expected_worker_rate(databases: int, naptime_s: float) -> float:
    """Autovacuum workers the launcher starts per second when ``databases`` databases have statistics: one per
    database every naptime, spaced naptime ÷ databases apart but at least :data:`MIN_WORKER_SPACING_S`."""
    if databases <= 0 or naptime_s <= 0:
        return 0.0
    spacing = naptime_s / databases
    return 1 / (MIN_WORKER_SPACING_S if spacing * 1000 <= 100 else spacing)


def backend_kind(cmdline: str) -> tuple[str, str]:
    """A PostgreSQL process title (``/proc/<pid>/cmdline``, NULs as spaces) → ``(kind, rest)``.

    ``postgres: autovacuum worker tenant_db`` → ``("autovacuum worker", "tenant_db")``;
    ``postgres: checkpointer`` → ``("checkpointer", "")``; a client backend (``postgres: user db host(port) idle``)
    → ``("client backend", "user db …")``; a child that has not set its title yet (still the postmaster's command
    line) → ``("starting", "")``. A ``cluster_name`` prefix (``postgres: main: checkpointer``) is skipped.
    """
    title = cmdline.replace("\x00", " ").strip()
    if not title.startswith("postgres:"):
        return "starting", ""
    rest = title.removeprefix("postgres:").strip()
    for candidate in (rest, rest.partition(": ")[2]):
        for kind in _AUX_KINDS:
            if candidate == kind or candidate.startswith(kind + " "):
                return kind, candidate[len(kind) :].strip()
    return "client backend", rest


_AUTOVACUUM_DB: Final = re.compile(r'autovacuum: processing database "([^"]*)"')


def parse_autovacuum_log(text: str) -> list[str]:
    """The databases autovacuum workers started on, one per worker, from a server log written with
    ``log_min_messages = debug1`` (each worker logs ``autovacuum: processing database "<name>"``)."""
    return _AUTOVACUUM_DB.findall(text)


def parse_children(text: str) -> list[int]:
    """``/proc/<pid>/task/<tid>/children``: space-separated process ids."""
    return [int(p) for p in text.split() if p.isdigit()]


def _children(pid: int) -> list[int]:
    try:
        return parse_children(Path(f"/proc/{pid}/task/{pid}/children").read_text())
    except OSError:
        return []


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace")
    except OSError:
        return None


def cpu_by_kind(postmaster: int) -> dict[str, float]:
    """CPU seconds so far of a PostgreSQL server: the postmaster's own (``postmaster``), its exited children
    (``exited``: reaped children's utime + stime, i.e. autovacuum workers and closed connections), and each live
    child, summed by :func:`backend_kind`."""
    own = cpu_seconds(postmaster)
    totals = {"postmaster": own, "exited": cpu_seconds_with_reaped(postmaster) - own}
    for child in _children(postmaster):
        line = _cmdline(child)
        if line is None:
            continue
        kind = backend_kind(line)[0]
        totals[kind] = totals.get(kind, 0.0) + cpu_seconds(child)
    return totals


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """``after - before`` per kind (a kind present on one side only counts from 0)."""
    return {kind: after.get(kind, 0.0) - before.get(kind, 0.0) for kind in sorted(before.keys() | after.keys())}


@dataclass
class IdleResult:
    """What an idle PostgreSQL server did during a window."""

    seconds: float
    cpu: dict[str, float]
    """CPU seconds by kind (:func:`cpu_by_kind`)."""
    databases_visited: list[str] = field(default_factory=list)
    """The database of every autovacuum worker started (from the server log)."""

    @property
    def workers(self) -> int:
        """Autovacuum workers started."""
        return len(self.databases_visited)

    @property
    def total_cpu(self) -> float:
        """CPU seconds of every process of the server."""
        return sum(self.cpu.values())

    def core_percent(self, kinds: Sequence[str] | None = None) -> float:
        """CPU of ``kinds`` (default: all) as a percentage of one core over the window."""
        used = self.total_cpu if kinds is None else sum(self.cpu.get(k, 0.0) for k in kinds)
        return 100 * used / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "seconds": self.seconds,
            "cpu_s": self.cpu,
            "total_cpu_s": self.total_cpu,
            "core_percent": self.core_percent(),
            "autovacuum_workers": self.workers,
            "distinct_databases_visited": len(set(self.databases_visited)),
        }


def measure_idle(postmaster: int, seconds: float, log_file: Path) -> IdleResult:
    """Watch an idle PostgreSQL server for ``seconds`` from /proc (no connection: it would wake the server), and
    read the autovacuum workers it started meanwhile from its log (``log_min_messages = debug1`` is the caller's
    business)."""
    offset = log_file.stat().st_size if log_file.exists() else 0
    before = cpu_by_kind(postmaster)
    started = time.monotonic()
    time.sleep(seconds)
    after = cpu_by_kind(postmaster)
    elapsed = time.monotonic() - started
    with log_file.open("rb") as fh:
        fh.seek(offset)
        text = fh.read().decode("utf-8", "replace")
    return IdleResult(elapsed, cpu_delta(before, after), parse_autovacuum_log(text))
