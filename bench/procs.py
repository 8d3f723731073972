"""Child processes of the benchmark: the :class:`Registry` that stops them all, CPU accounting and pinning.

The processes themselves are :class:`tenantry_devtools.processes.ServerProcess` (started in a session of their own,
optionally pinned with taskset, stopped with their process group); every one is recorded in a :class:`Registry`,
which stops all of them on the way out, whatever ends the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

from tenantry_devtools.processes import ServerProcess

_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
P = TypeVar("P", bound=ServerProcess)


class Registry:
    """Everything the run started, stopped in reverse order by :meth:`stop_all`."""

    def __init__(self) -> None:
        self._services: list[ServerProcess] = []
        self._cleanups: list[tuple[str, Callable[[], None]]] = []

    def add(self, service: P) -> P:
        """Track a service (call before starting it, so a failed start is cleaned up too)."""
        self._services.append(service)
        return service

    def on_exit(self, name: str, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` in :meth:`stop_all` (after the services started later than it was registered)."""
        self._cleanups.append((name, cleanup))

    def mark(self) -> int:
        """A position to :meth:`stop_since` later (a section stops what it started)."""
        return len(self._services)

    def stop_since(self, mark: int) -> None:
        """Stop, newest first, every service added after ``mark``."""
        while len(self._services) > mark:
            self._services.pop().stop()

    def stop(self, service: ServerProcess) -> None:
        """Stop one service now and forget it."""
        service.stop()
        if service in self._services:
            self._services.remove(service)

    def stop_all(self) -> list[str]:
        """Stop every service and run every cleanup; return what failed (never raises)."""
        problems: list[str] = []
        for service in reversed(self._services):
            try:
                service.stop()
            except Exception as exc:  # noqa: BLE001 - cleanup goes on whatever happens
                problems.append(f"{service.name}: {exc}")
        self._services.clear()
        for name, cleanup in reversed(self._cleanups):
            try:
                cleanup()
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{name}: {exc}")
        self._cleanups.clear()
        return problems


# --------------------------------------------------------------------------- CPU accounting and pinning


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it (read from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (its threads included), in seconds; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # After the command name: state is field 3 of stat(5), utime field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def cpu_seconds_with_reaped(pid: int) -> float:
    """utime + stime of a process plus cutime + cstime: the CPU of the children it has already reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / _CLK_TCK


class TreeCpuMeter:
    """CPU time of a server and all its children, those that come and go included (PostgreSQL's backends).

    The root's own counters include the children it has reaped (cutime/cstime); the live ones are read one by one.
    """

    def __init__(self, pid: int) -> None:
        self._root = pid
        self._before = 0.0

    def _now(self) -> float:
        return cpu_seconds_with_reaped(self._root) + sum(cpu_seconds(p) for p in descendants(self._root)[1:])

    def start(self) -> None:
        """Remember the counters now."""
        self._before = self._now()

    def stop(self) -> float:
        """CPU seconds used since :meth:`start`."""
        return self._now() - self._before


class CpuMeter:
    """CPU time used by a process tree between :meth:`start` and :meth:`stop`.

    The tree is read at start (workers of the servers measured here live as long as their parent).
    """

    def __init__(self, pid: int) -> None:
        self._root = pid
        self._pids: list[int] = []
        self._before = 0.0

    def start(self) -> None:
        """Remember the counters now."""
        self._pids = descendants(self._root)
        self._before = sum(cpu_seconds(p) for p in self._pids)

    def stop(self) -> float:
        """CPU seconds used since :meth:`start`."""
        return sum(cpu_seconds(p) for p in self._pids) - self._before


def pin(pid: int, cpus: str) -> None:
    """Move a running process tree, all threads, to ``cpus`` (later children inherit it)."""
    taskset = shutil.which("taskset")
    if taskset is None:
        return
    for member in descendants(pid):
        subprocess.run(  # noqa: S603 - fixed argv
            [taskset, "-a", "-p", "-c", cpus, str(member)], capture_output=True, timeout=10, check=False
        )
