"""What a restore's cutover hold looked like, from the logs and metrics the platform writes anyway: the
tenant-service's ``hold_placed`` / ``hold_drained`` / ``hold_released`` JSON log lines, the gateway's
``tenantry_gateway_hold_wait_seconds`` histogram (Prometheus text), and the client's own request timings.

Everything here is a pure function of text and numbers (unit-tested in tests/unit/test_bench_parsing.py).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

HOLD_WAIT_METRIC: Final = "tenantry_gateway_hold_wait_seconds"
_SAMPLE: Final = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LE: Final = re.compile(r'le="([^"]+)"')


@dataclass(frozen=True)
class HoldSpan:
    """One cutover hold as the tenant-service logged it (wall-clock epoch seconds)."""

    hold_id: str
    placed: float
    """When the hold was placed: the release's timestamp less the hold's own duration (monotonic, as logged)."""
    released: float
    """Timestamp of the ``hold_released`` line."""
    drained_s: float | None
    """Seconds from placing the hold until every gateway worker had acknowledged it (``hold_drained``)."""

    @property
    def seconds(self) -> float:
        """How long the tenant was held."""
        return self.released - self.placed


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def parse_hold_log(text: str) -> list[HoldSpan]:
    """The holds released in a tenant-service JSON log (other lines, and text that is not JSON, are skipped), in
    the order of their release."""
    drained: dict[str, float] = {}
    spans: list[HoldSpan] = []
    for line in text.splitlines():
        if '"hold_' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        event, hold_id = entry.get("event"), str(entry.get("hold_id", ""))
        if event == "hold_drained" and "seconds" in entry:
            drained[hold_id] = float(entry["seconds"])
        elif event == "hold_released" and "timestamp" in entry and "seconds" in entry:
            released = _epoch(str(entry["timestamp"]))
            spans.append(HoldSpan(hold_id, released - float(entry["seconds"]), released, drained.get(hold_id)))
    return spans


def parse_prometheus(text: str) -> dict[str, float]:
    """Samples of a Prometheus text exposition by name with labels as written (``name{a="b"}``); comments and
    unparsable lines are skipped."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        try:
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
        except ValueError:
            continue
    return samples


@dataclass(frozen=True)
class HistogramDelta:
    """What a Prometheus histogram counted between two scrapes."""

    count: float
    sum: float
    buckets: list[tuple[float, float]]
    """Cumulative counts per upper bound, ascending (``+Inf`` last)."""

    @property
    def mean(self) -> float | None:
        """Mean observation, None without observations."""
        return self.sum / self.count if self.count else None

    def quantile_bound(self, q: float) -> float | None:
        """The upper bound of the bucket holding the ``q`` quantile (0..1): the most it can be; None without
        observations."""
        if not self.count:
            return None
        rank = q * self.count
        for bound, cumulative in self.buckets:
            if cumulative >= rank and cumulative > 0:
                return bound
        return math.inf


def histogram_delta(before: dict[str, float], after: dict[str, float], name: str = HOLD_WAIT_METRIC) -> HistogramDelta:
    """The histogram ``name`` (without labels besides ``le``) counted between the scrapes ``before`` and
    ``after`` of :func:`parse_prometheus`."""
    buckets: list[tuple[float, float]] = []
    prefix = f"{name}_bucket"
    for key, value in after.items():
        if not key.startswith(prefix + "{"):
            continue
        match = _LE.search(key)
        if match is None:
            continue
        buckets.append((float(match.group(1)), value - before.get(key, 0.0)))
    buckets.sort()
    return HistogramDelta(
        count=after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0),
        sum=after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0),
        buckets=buckets,
    )


@dataclass(frozen=True)
class Timed:
    """One request of the client: when it was sent (epoch seconds), how long it took, its status (0: no answer)."""

    sent: float
    ms: float
    status: int

    @property
    def done(self) -> float:
        """When its answer had arrived (epoch seconds)."""
        return self.sent + self.ms / 1000


def overlapping(requests: Iterable[Timed], start: float, end: float) -> list[Timed]:
    """The requests that were in flight at some moment between ``start`` and ``end``."""
    return [r for r in requests if r.sent < end and r.done > start]


def failed(requests: Iterable[Timed]) -> list[Timed]:
    """Requests without a 2xx answer (no answer at all included)."""
    return [r for r in requests if not 200 <= r.status < 300]


def elapsed_seconds(start: str, end: str) -> float:
    """Seconds between two ISO 8601 timestamps (``Z`` or an offset), as the admin API writes them."""
    return _epoch(end) - _epoch(start)


def longest_gap(acks: Sequence[float], start: float, end: float) -> float | None:
    """The longest time between two successive acknowledgements (``acks``: completion times on one clock, in any
    order) of which some part lies between ``start`` and ``end``: the write blackout around an operation that ran
    then. None when no acknowledgement came after ``end`` (the blackout had not ended when the writes stopped)."""
    ordered = sorted(acks)
    if not ordered or ordered[-1] <= end:
        return None
    gaps = [b - a for a, b in itertools.pairwise(ordered) if b >= start and a <= end]
    return max(gaps) if gaps else None
