"""What every section gets: settings, the run's temporary directory, processes, backends; and the
:class:`SectionReport` each section fills in."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.platform import Backends, load_average
from bench.procs import Registry
from bench.results import Target


@dataclass(frozen=True)
class Settings:
    """Knobs of a run (``python -m bench --help``)."""

    runs: int = 3
    duration: float = 5.0
    connections: int = 32
    threads: int = 1
    tenant_counts: tuple[int, ...] = (1, 1000, 10000)
    prov_sequential: int = 20
    prov_parallel_total: int = 40
    prov_workers: int = 8
    fleet_size: int = 200
    fleet_concurrency: int = 8
    app_tenants: int = 500
    cold_per_run: int = 20
    warm_per_cold: int = 10
    backup_mb: int = 200
    hold_clients: int = 3
    scale_tenants: int = 1000
    scale_idle_seconds: float = 60.0
    move_mb: int = 200
    move_pause_mb: int = 20
    move_pauses: int = 5
    move_writers: int = 2
    login_samples: int = 70
    login_clients: tuple[int, ...] = (4, 8, 16)
    login_seconds: float = 6.0
    users_baseline: str = "2cab184"
    users_proxied_runs: int = 5
    usage_baseline: str = "98cd7ea"
    catchup_baseline: str = "c93588a"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass
class BenchContext:
    """Shared by all sections of one run."""

    settings: Settings
    root: Path
    registry: Registry
    backends: Backends
    machine: dict[str, Any]
    cpu_test: str | None
    """Core of the process under test (``taskset -c``), None on a single-core machine."""
    cpu_load: str | None
    """Core of the load generator and everything else, None on a single-core machine."""
    invocation: str = ""

    @property
    def logs(self) -> Path:
        """Where every process's log goes."""
        return self.root / "logs"


def now_iso() -> str:
    """UTC now, ISO 8601, seconds."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def say(message: str) -> None:
    """Progress on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def shout(message: str) -> None:
    """A problem that must not go unnoticed."""
    print(f"\n[bench] !!! {message}\n", file=sys.stderr, flush=True)


@dataclass
class Table:
    """A table for docs/benchmarks.md (cells already formatted)."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)


class SectionReport:
    """Everything one section found, turned into a JSON-ready dict by :meth:`finish`."""

    def __init__(self, ctx: BenchContext, name: str, title: str) -> None:
        self.name = name
        self.title = title
        self.ctx = ctx
        self.started = time.monotonic()
        self.started_at = now_iso()
        self.load_before = load_average()
        self.settings: dict[str, Any] = {}
        self.method: list[str] = []
        self.commands: list[str] = []
        self.tables: list[Table] = []
        self.summary: list[str] = []
        """What the section's numbers show, written from this run's own numbers (a paragraph each)."""
        self.data: dict[str, Any] = {}
        self.targets: list[Target] = []
        self.notes: list[str] = []
        self.errors: list[str] = []

    def table(self, title: str, columns: list[str]) -> Table:
        """Add a table and return it for its rows."""
        table = Table(title, columns)
        self.tables.append(table)
        return table

    def error(self, message: str) -> None:
        """Record a problem loudly."""
        shout(f"{self.name}: {message}")
        self.errors.append(message)

    def command(self, line: str) -> None:
        """Record an exact command once."""
        if line not in self.commands:
            self.commands.append(line)

    def finish(self) -> dict[str, Any]:
        """The section's JSON."""
        return {
            "title": self.title,
            "started_at": self.started_at,
            "finished_at": now_iso(),
            "duration_s": round(time.monotonic() - self.started, 1),
            "invocation": self.ctx.invocation,
            "machine": self.ctx.machine,
            "load_before": self.load_before,
            "load_after": load_average(),
            "settings": self.settings,
            "method": self.method,
            "commands": self.commands,
            "tables": [asdict(t) for t in self.tables],
            "summary": self.summary,
            "data": self.data,
            "targets": [t.to_dict() for t in self.targets],
            "notes": self.notes,
            "errors": self.errors,
        }
