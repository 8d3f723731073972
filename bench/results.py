"""Statistics, targets and the machine-readable results file.

Everything here is a pure function of numbers and dictionaries (unit-tested in tests/unit/test_bench_parsing.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal

PASS: Final = "PASS"  # noqa: S105 - a verdict, not a password
MISS: Final = "MISS"
ERROR: Final = "ERROR"
SCHEMA_VERSION: Final = 1

Op = Literal["<=", ">=", "=="]


def median(values: Sequence[float]) -> float:
    """The median (mean of the two middle values for an even count).

    Raises:
        ValueError: no values.
    """
    if not values:
        raise ValueError("median of no values")
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile with linear interpolation between closest ranks (numpy's default).

    Raises:
        ValueError: no values, or ``pct`` outside 0..100.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= pct <= 100:
        raise ValueError("pct must be within 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def safe_ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def paired_ratio(numerators: list[float], denominators: list[float]) -> tuple[float | None, str]:
    """The median of run-by-run ratios (each run's two numbers were measured side by side, so a machine that
    drifts between runs cancels out), and a text listing those ratios for a target's detail."""
    ratios = [r for r in (safe_ratio(n, d) for n, d in zip(numerators, denominators, strict=True)) if r is not None]
    if not ratios:
        return None, "no complete run"
    return median(ratios), "median of the runs' ratios " + ", ".join(format_number(r) for r in ratios)


@dataclass(frozen=True)
class Target:
    """One number the issue demands, with what was measured.

    ``op`` compares ``measured`` with ``limit``: ``<=`` at most, ``>=`` at least, ``==`` equal within
    ``tolerance``. ``ratio`` is an optional, human-facing comparison with the baseline (e.g. API p50 / raw p50).
    """

    id: str
    description: str
    measured: float | None
    op: Op
    limit: float
    unit: str = ""
    tolerance: float = 0.0
    ratio: float | None = None
    detail: str = ""

    @property
    def status(self) -> str:
        """PASS, MISS, or ERROR when nothing could be measured."""
        return evaluate(self.measured, self.op, self.limit, self.tolerance)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the verdict."""
        return {**asdict(self), "status": self.status}


def evaluate(measured: float | None, op: Op, limit: float, tolerance: float = 0.0) -> str:
    """PASS when ``measured op limit`` holds (``==`` within ``tolerance``), MISS when not, ERROR when unmeasured."""
    if measured is None or (isinstance(measured, float) and math.isnan(measured)):
        return ERROR
    if op == "<=":
        ok = measured <= limit
    elif op == ">=":
        ok = measured >= limit
    elif op == "==":
        ok = abs(measured - limit) <= tolerance + 1e-12
    else:
        raise ValueError(f"unknown comparison {op!r}")
    return PASS if ok else MISS


def requirement_text(target: dict[str, Any]) -> str:
    """``≤ 1.1``, ``≥ 0.15``, ``= 1 ± 0.01`` (with the unit)."""
    unit = f" {target['unit']}" if target.get("unit") else ""
    limit = format_number(target["limit"])
    if target["op"] == "<=":
        return f"≤ {limit}{unit}"
    if target["op"] == ">=":
        return f"≥ {limit}{unit}"
    if target.get("tolerance"):
        return f"= {limit} ± {format_number(target['tolerance'])}{unit}"
    return f"= {limit}{unit}"


def format_number(value: float | None, digits: int = 3) -> str:
    """Compact human formatting: 3 significant digits, thousands kept whole."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if float(value).is_integer():
        return str(int(value))
    decimals = max(0, digits - 1 - math.floor(math.log10(magnitude)))
    return f"{value:.{decimals}f}"


def merge_results(existing: dict[str, Any] | None, fresh: dict[str, Any]) -> dict[str, Any]:
    """The results file after a run: sections of this run replace the same sections, others are kept.

    Args:
        existing: the previous file's content (None or unreadable → start afresh).
        fresh: ``{"machine": ..., "updated_at": ..., "sections": {name: section}}`` of this run.
    """
    merged: dict[str, Any] = {"schema": SCHEMA_VERSION, "sections": {}}
    if existing and existing.get("schema") == SCHEMA_VERSION and isinstance(existing.get("sections"), dict):
        merged["sections"].update(existing["sections"])
    merged["sections"].update(fresh.get("sections", {}))
    for key, value in fresh.items():
        if key != "sections":
            merged[key] = value
    merged["schema"] = SCHEMA_VERSION
    return merged


def all_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of every section, in section order."""
    return [t for section in results.get("sections", {}).values() for t in section.get("targets", [])]


def load_results(path: Path) -> dict[str, Any] | None:
    """The results file, or None when it is missing or not JSON."""
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def save_results(path: Path, results: dict[str, Any]) -> None:
    """Write the results file (atomically: a crash never leaves half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
