"""The platform's servers as child processes: start (optionally pinned to cores), wait until ready, stop.

One launcher for every way the platform runs: the tests, ``make bench`` and ``make dev``. A child gets the
environment of its parent with its own settings on top, and runs in a session of its own, so that stopping it ends
its workers too. Nothing here imports application code: a child reads its settings when it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self

from tenantry_devtools.servers import free_port

if TYPE_CHECKING:
    import httpx

#: The repository's root: the working directory of every child.
ROOT: Final = Path(__file__).resolve().parents[4]

__all__ = [
    "ROOT",
    "ServerProcess",
    "StartupError",
    "free_port",
    "http_ok",
    "log_tail",
    "use_bytecode_cache",
    "wait_for",
    "wait_until",
]


class StartupError(RuntimeError):
    """A server exited before it was ready, or was not ready in time."""


def log_tail(path: Path, chars: int = 3000) -> str:
    """The last ``chars`` characters of a log file (a note when there is none)."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return f"(no log at {path})"


def http_ok(url: str, timeout: float = 2.0, headers: Mapping[str, str] | None = None) -> bool:
    """Whether ``GET url`` answers 200 within ``timeout`` seconds."""
    request = urllib.request.Request(url, headers=dict(headers or {}))  # noqa: S310 - loopback URLs built here
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, what: str = "", interval: float = 0.05) -> float:
    """Poll ``predicate`` until it returns something truthy; return the seconds it took.

    Raises:
        TimeoutError: not truthy within ``timeout`` seconds (the message names ``what``).
    """
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    raise TimeoutError(f"{what or 'condition'} not met within {timeout:.1f}s")


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:  # noqa: ASYNC109 - a polling deadline
    """Poll a synchronous or asynchronous ``predicate`` until it returns something truthy, and return that.

    Raises:
        TimeoutError: not truthy within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout:.1f}s")
        await asyncio.sleep(interval)


def use_bytecode_cache(folder: Path | str) -> None:
    """Let every Python child started from now on share a bytecode cache in ``folder``, outside the tree.

    Without it a child recompiles every import on each start when ``PYTHONDONTWRITEBYTECODE`` is set, which slows
    each start by seconds. A value already exported wins.
    """
    os.environ.setdefault("PYTHONPYCACHEPREFIX", str(folder))
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


class ServerProcess:
    """One server as a child process, its output appended to a log file.

    Ready once ``GET <url><ready_path>`` answers 200 (or once a predicate given to :meth:`start` holds).
    """

    #: The readiness path of :meth:`start`; None: ready as soon as it is started.
    ready_path: str | None = "/healthz"

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        url: str | None = None,
        cpus: str | None = None,
        cwd: Path = ROOT,
        pid_file: Path | None = None,
        withheld: Iterable[str] = (),
    ) -> None:
        """Describe the process (:meth:`start` starts it).

        Args:
            name: what messages call it.
            argv: the command.
            log_path: where its output goes (appended).
            env: its own settings, on top of this process's environment.
            port: the port it listens on (its URL is ``http://127.0.0.1:<port>``).
            url: its base URL, when not on ``port``.
            cpus: pin it to these cores (``taskset -c``).
            cwd: its working directory.
            pid_file: write its process id there once started.
            withheld: variables of this process's environment it does not inherit (others' secrets).
        """
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env or {})
        self.port = port
        self._url = url or (f"http://127.0.0.1:{port}" if port is not None else None)
        self.cpus = cpus
        self.cwd = cwd
        self.pid_file = pid_file
        self.withheld = frozenset(withheld)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the server.

        Raises:
            RuntimeError: it has none.
        """
        if self._url is None:
            raise RuntimeError(f"{self.name} has no URL")
        return self._url

    @property
    def command(self) -> list[str]:
        """The argv really started (``taskset -c <cpus>`` in front when pinned)."""
        return (["taskset", "-c", self.cpus] if self.cpus else []) + self.argv

    @property
    def pid(self) -> int:
        """The process id (taskset execs the command, so it is the command's own).

        Raises:
            RuntimeError: not started.
        """
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not started")
        return self.proc.pid

    def start(
        self, ready_path: str | None = None, *, timeout: float = 60.0, ready: Callable[[], bool] | None = None
    ) -> Self:
        """Start it, then wait until ``ready()`` holds (default: ``ready_path`` answers 200).

        Raises:
            StartupError: it exited first, or was not ready within ``timeout`` seconds (with its log's tail).
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - argv built by the caller, no shell
                self.command,
                env={**{k: v for k, v in os.environ.items() if k not in self.withheld}, **self.env},
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if self.pid_file is not None:
            self.pid_file.write_text(str(self.proc.pid))
        path = ready_path or self.ready_path
        if ready is None and path is not None:
            probe = self.url + path

            def ready() -> bool:
                return http_ok(probe, timeout=1)

        if ready is not None:
            deadline = time.monotonic() + timeout
            while not ready():
                if self.proc.poll() is not None:
                    raise StartupError(f"{self.name} exited with {self.proc.returncode}:\n{log_tail(self.log_path)}")
                if time.monotonic() > deadline:
                    raise StartupError(f"{self.name} not ready within {timeout:.0f}s:\n{log_tail(self.log_path)}")
                time.sleep(0.1)
        return self

    def alive(self) -> bool:
        """Started and still running."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
        """Send ``sig`` to its process group, wait up to ``grace`` seconds, then SIGKILL what is left of the group.

        Does nothing when it is not running (its process group is not signalled either: the id may be reused).
        """
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        # Workers of a multi-process server may outlive their parent for a moment: end the group for good.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to the process itself (not its group) and wait for it to end; return its exit code.

        Raises:
            RuntimeError: not started.
        """
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not started")
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for it to end by itself (a crash on purpose, say); return its exit code.

        Raises:
            RuntimeError: not started.
        """
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not started")
        return self.proc.wait(timeout=timeout)

    def log(self) -> str:
        """Everything it wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, token: str | None = None) -> httpx.Client:
        """An HTTP client on its URL, sending ``Authorization: Bearer <token>`` when given."""
        import httpx  # noqa: PLC0415 - only callers that talk HTTP pay for the import

        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)
