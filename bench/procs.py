"""Child processes of the benchmark: start (optionally pinned with taskset), wait until ready, measure CPU, stop.

Every process is started in its own session and recorded in a :class:`Registry`; the registry stops all of them
(SIGTERM to the process group, then SIGKILL) on the way out, whatever ends the run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Final

_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


class StartupError(RuntimeError):
    """A process exited or never became ready."""


def log_tail(path: Path, chars: int = 3000) -> str:
    """The end of a log file."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return f"(no log at {path})"


def http_ok(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> bool:
    """Whether GET ``url`` answers 200."""
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - loopback URLs built here
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> float:
    """Poll ``predicate`` until true; return the seconds it took.

    Raises:
        TimeoutError: not true within ``timeout``.
    """
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what} not reached within {timeout:.0f}s")
        time.sleep(interval)
    return time.monotonic() - start


class Service:
    """One long-running child process with a log file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        log: Path,
        env: dict[str, str] | None = None,
        cpus: str | None = None,
        cwd: Path | None = None,
        url: str | None = None,
    ) -> None:
        self.name = name
        self._url = url
        self.argv = argv
        self.log = log
        self.env = env
        self.cpus = cpus
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of an HTTP service.

        Raises:
            RuntimeError: the service has no URL.
        """
        if self._url is None:
            raise RuntimeError(f"{self.name} has no URL")
        return self._url

    @property
    def command(self) -> list[str]:
        """The argv really started (with ``taskset -c`` in front when pinned)."""
        return (["taskset", "-c", self.cpus] if self.cpus else []) + self.argv

    @property
    def pid(self) -> int:
        """The process id (taskset execs the command, so it is the command's own)."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not started")
        return self.proc.pid

    def start(self, ready: Callable[[], bool] | None = None, timeout: float = 60) -> Service:
        """Start, then wait for ``ready`` (if given), failing early when the process dies."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - argv built by the harness, no shell
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if ready is not None:
            deadline = time.monotonic() + timeout
            while not ready():
                if self.proc.poll() is not None:
                    raise StartupError(f"{self.name} exited with {self.proc.returncode}:\n{log_tail(self.log)}")
                if time.monotonic() > deadline:
                    raise StartupError(f"{self.name} not ready within {timeout:.0f}s:\n{log_tail(self.log)}")
                time.sleep(0.1)
        return self

    def alive(self) -> bool:
        """Still running."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, grace: float = 15) -> None:
        """Signal the whole process group, wait, then SIGKILL what is left."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        # Workers of a multi-process server may outlive their parent for a moment: end the group for good.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


class Registry:
    """Everything the run started, stopped in reverse order by :meth:`stop_all`."""

    def __init__(self) -> None:
        self._services: list[Service] = []
        self._cleanups: list[tuple[str, Callable[[], None]]] = []

    def add(self, service: Service) -> Service:
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

    def stop(self, service: Service) -> None:
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
