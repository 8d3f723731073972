"""Throw-away local PostgreSQL and Redis servers for ``make dev`` and the test suite.

The servers run from a caller-chosen data directory, listen on ``127.0.0.1`` only and
are tuned for speed, not durability (no fsync, no persistence). They never touch a
system-wide PostgreSQL or Redis: ports are either given by the caller or picked from the
kernel's free ephemeral range, and a port that is already taken is refused up front.

PostgreSQL refuses to run as root, so when the current process is root every PostgreSQL
tool runs as the ``postgres`` system user (override with ``TENANTRY_PG_OS_USER``) and the
data directory is handed over to that user. Server output goes to a log file that this
process opens, so the server user never needs write access to the log's directory.

Every server process is started in its own session, so a Ctrl-C delivered to the
terminal's foreground process group does not reach it; ``stop()`` is the way to end it.

Environment knobs:
    TENANTRY_PG_BINDIR: directory holding ``initdb``, ``pg_ctl`` and ``postgres``.
    TENANTRY_PG_OS_USER: system user that runs PostgreSQL when this process is root.
"""

from __future__ import annotations

import math
import os
import pwd
import shlex
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self
from urllib.parse import urlsplit

__all__ = [
    "PG_BINDIR_ENV",
    "PG_OS_USER_ENV",
    "LocalPostgres",
    "LocalRedis",
    "apt_install",
    "docker_available",
    "ensure_binaries",
    "find_pg_bindir",
    "find_redis_server",
    "free_port",
]

PG_BINDIR_ENV = "TENANTRY_PG_BINDIR"
PG_OS_USER_ENV = "TENANTRY_PG_OS_USER"

_PG_TOOLS = ("initdb", "pg_ctl", "postgres")
_PG_STOP_MODES = ("smart", "fast", "immediate")
_LOCALHOST = "127.0.0.1"
_LOG_TAIL_LINES = 40
# sun_path is 108 bytes on Linux (104 on macOS); stay below both, NUL included.
_MAX_SOCKET_PATH = 100
# An auto-picked port can be grabbed by someone else between free_port() and the
# server's bind(); retrying with a fresh port makes that race harmless.
_PORT_ATTEMPTS = 3
_BIND_ERROR_MARKERS = ("could not bind", "address already in use")
_INITDB_TIMEOUT = 120.0
#: Logical replication, so that these servers can take part in online moves of tenant databases
#: (``can_move_online``): a publication and slot on the source, a subscription with its workers on the target,
#: for many tenants at once.
_LOGICAL_REPLICATION = {
    "wal_level": "logical",
    "max_replication_slots": "32",
    "max_wal_senders": "32",
    "max_logical_replication_workers": "16",
    "max_worker_processes": "24",
    "max_sync_workers_per_subscription": "2",
}
_POLL_INTERVAL = 0.05


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    The kernel picks it from the ephemeral range, so it never collides with the
    well-known 5432/6379 of a system-wide server.

    Returns:
        The port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_in_use(port: int) -> bool:
    """Tell whether something already listens on ``127.0.0.1:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Both servers set SO_REUSEADDR themselves; mirroring it means TIME_WAIT
        # leftovers of a just-stopped server do not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_LOCALHOST, port))
        except OSError:
            return True
    return False


def _tcp_accepts(port: int, timeout: float = 0.5) -> bool:
    """Tell whether ``127.0.0.1:port`` accepts a TCP connection."""
    try:
        with socket.create_connection((_LOCALHOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _port_busy(what: str, port: int, data_dir: Path) -> RuntimeError:
    return RuntimeError(
        f"Port {port} on {_LOCALHOST} is already in use; {what} for {data_dir} cannot listen "
        f"there. Pick another port or stop whatever listens on it."
    )


def _validate_port(port: int | None) -> int | None:
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port must be in 1..65535, got {port}")
    return port


def _pid_alive(pid: int, name_hint: str | None = None) -> bool:
    """Tell whether ``pid`` is a live (non-zombie) process.

    Args:
        pid: Process id to check.
        name_hint: When given and ``/proc`` is available, the process command line
            must contain it; this guards against a stale pid file whose pid has been
            recycled by an unrelated process.

    Returns:
        True when the process exists and is not a zombie.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, but belongs to another user
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return True
    try:
        # The init process of a container may not reap orphans, so a dead server can
        # linger as a zombie that still answers kill(pid, 0).
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
        if name_hint is not None:
            return name_hint.encode() in (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return False
    return True


def _wait_pid_gone(pid: int, timeout: float, name_hint: str | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid, name_hint):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL)
    return True


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _log_tail(path: Path, offset: int = 0, lines: int = _LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines written to ``path`` after byte ``offset``."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"
    text = "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
    return text or f"(log {path} is empty)"


def _open_log(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("ab")


def _has_bind_error(log_text: str) -> bool:
    lowered = log_text.lower()
    return any(marker in lowered for marker in _BIND_ERROR_MARKERS)


# --------------------------------------------------------------------------- binaries


def _is_pg_bindir(path: Path) -> bool:
    return all(os.access(path / tool, os.X_OK) for tool in _PG_TOOLS)


def _pg_version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin: compare versions numerically so 9.6 < 10 < 15.
    try:
        return tuple(int(part) for part in path.parent.name.split("."))
    except ValueError:
        return (-1,)


def find_pg_bindir() -> Path | None:
    """Locate the directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Search order: ``$TENANTRY_PG_BINDIR`` (authoritative when set), the newest
    ``/usr/lib/postgresql/*/bin`` (Debian/Ubuntu layout), ``pg_config --bindir``, then
    the directory of ``initdb`` on ``PATH``.

    Returns:
        The directory, or None when no complete set of server binaries is found.
    """
    override = os.environ.get(PG_BINDIR_ENV, "").strip()
    if override:
        # An explicit setting that is wrong should surface, not be silently replaced
        # by whatever else happens to be installed.
        path = Path(override).expanduser()
        return path if _is_pg_bindir(path) else None

    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_pg_version_key, reverse=True)
    for candidate in debian:
        if _is_pg_bindir(candidate):
            return candidate

    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        try:
            out = subprocess.run(  # noqa: S603 - fixed argv, no shell
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            out = None
        if out is not None and out.returncode == 0 and out.stdout.strip():
            candidate = Path(out.stdout.strip())
            if _is_pg_bindir(candidate):
                return candidate

    initdb = shutil.which("initdb")
    if initdb is not None:
        candidate = Path(initdb).resolve().parent
        if _is_pg_bindir(candidate):
            return candidate
    return None


def find_redis_server() -> Path | None:
    """Locate the ``redis-server`` executable.

    Returns:
        Its path, or None when it is neither on ``PATH`` nor in the usual places.
    """
    found = shutil.which("redis-server")
    if found is not None:
        return Path(found)
    for candidate in (Path("/usr/bin/redis-server"), Path("/usr/local/bin/redis-server")):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


#: Where Debian's ``chromium`` package puts the browser that the console's browser tests drive.
CHROMIUM_PATHS = (Path("/usr/bin/chromium"), Path("/usr/bin/chromium-browser"))


def find_chromium() -> Path | None:
    """Debian's headless-capable Chromium (``apt-get install chromium``), or None."""
    for candidate in CHROMIUM_PATHS:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("chromium")
    return Path(found) if found else None


def _missing_binaries(postgres: bool, redis: bool, wrk: bool = False, chromium: bool = False) -> list[str]:
    missing: list[str] = []
    if postgres and find_pg_bindir() is None:
        missing.append("postgresql")
    if redis and find_redis_server() is None:
        missing.append("redis-server")
    if wrk and shutil.which("wrk") is None:
        missing.append("wrk")
    if chromium and find_chromium() is None:
        missing.append("chromium")
    return missing


def _install_hint(missing: list[str]) -> str:
    what = {
        "postgresql": "PostgreSQL server binaries (initdb, pg_ctl, postgres)",
        "redis-server": "redis-server",
        "wrk": "wrk (the HTTP load generator of the load tests)",
        "chromium": "chromium (the headless browser of the console's browser tests)",
    }
    brew = {"postgresql": "postgresql@16", "redis-server": "redis", "wrk": "wrk", "chromium": "--cask chromium"}
    lines = [
        "Missing " + " and ".join(what[name] for name in missing) + ".",
        f"Install with: apt-get install -y {' '.join(missing)}   (Debian/Ubuntu, as root)",
        f"          or: brew install {' '.join(brew[name] for name in missing)}   (macOS)",
    ]
    if "postgresql" in missing:
        override = os.environ.get(PG_BINDIR_ENV, "").strip()
        if override:
            lines.append(f"Note: {PG_BINDIR_ENV}={override} does not contain initdb, pg_ctl and postgres.")
        else:
            lines.append(f"Or set {PG_BINDIR_ENV} to the directory containing initdb, pg_ctl and postgres.")
    return "\n".join(lines)


def ensure_binaries(
    install: bool = False, *, postgres: bool = True, redis: bool = True, wrk: bool = False, chromium: bool = False
) -> None:
    """Make sure the PostgreSQL server binaries and ``redis-server`` (and ``wrk``) are available.

    Args:
        install: When True, the process is root and ``apt-get`` exists, install the
            missing packages (``postgresql``, ``redis-server``, ``wrk``) with apt-get.
        postgres: Check for the PostgreSQL server binaries.
        redis: Check for ``redis-server``.
        wrk: Check for ``wrk`` (``make test``'s load tests need it).
        chromium: Check for Debian's ``chromium`` (the console's browser tests drive it with Playwright).

    Raises:
        RuntimeError: Something is still missing; the message says what to install.
    """
    missing = _missing_binaries(postgres, redis, wrk, chromium)
    if not missing:
        return
    if not install:
        raise RuntimeError(_install_hint(missing))

    apt_install(missing, hint=_install_hint(missing))

    still_missing = _missing_binaries(postgres, redis, wrk, chromium)
    if still_missing:
        raise RuntimeError(_install_hint(still_missing) + "\n(apt-get install did not provide them.)")


def apt_install(packages: list[str], *, hint: str) -> None:
    """Install Debian packages with apt-get (root only), without their recommended packages.

    Waits up to five minutes for the dpkg lock, so that two installs on one machine do not fail each other.

    Args:
        packages: Package names.
        hint: What to tell the user when the install cannot run or fails.

    Raises:
        RuntimeError: Not root, no apt-get, or apt-get failed; the message ends with ``hint``.
    """
    apt_get = shutil.which("apt-get")
    if os.geteuid() != 0 or apt_get is None:
        reason = "root" if os.geteuid() != 0 else "apt-get"
        raise RuntimeError(hint + f"\n(Automatic install needs {reason}.)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait_for_lock = ["-o", "DPkg::Lock::Timeout=300"]
    try:
        subprocess.run([apt_get, *wait_for_lock, "update"], env=env, check=True, stdin=subprocess.DEVNULL)  # noqa: S603
        subprocess.run(  # noqa: S603 - fixed argv, no shell
            [apt_get, *wait_for_lock, "install", "-y", "--no-install-recommends", *packages],
            env=env,
            check=True,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(f"apt-get install failed ({exc}).\n{hint}") from exc


def _require_pg_bindir() -> Path:
    bindir = find_pg_bindir()
    if bindir is None:
        raise RuntimeError(_install_hint(["postgresql"]))
    return bindir


def _require_redis_server() -> Path:
    binary = find_redis_server()
    if binary is None:
        raise RuntimeError(_install_hint(["redis-server"]))
    return binary


# --------------------------------------------------------------------------- docker


def docker_available(timeout: float = 3.0, *, host: str | None = None) -> bool:
    """Tell whether a Docker engine answers ``GET /_ping`` (stdlib only, bounded time).

    Looks at ``host`` when given, else at ``$DOCKER_HOST`` (``unix://`` or ``tcp://``, TLS when
    ``$DOCKER_TLS_VERIFY`` is set) and otherwise at ``/var/run/docker.sock``, which is
    where the Docker SDK used by testcontainers looks too. An installed CLI without a
    running daemon yields False.

    Args:
        timeout: Seconds allowed for the connect and for each read.
        host: An engine address in ``DOCKER_HOST`` form.

    Returns:
        True when the engine answered with HTTP 200.
    """
    host = host or os.environ.get("DOCKER_HOST", "").strip() or "unix:///var/run/docker.sock"
    parts = urlsplit(host)
    try:
        if parts.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(parts.path)
            except OSError:
                sock.close()
                raise
        elif parts.scheme in ("tcp", "http", "https"):
            sock = socket.create_connection((parts.hostname or _LOCALHOST, parts.port or 2375), timeout)
            if parts.scheme == "https" or os.environ.get("DOCKER_TLS_VERIFY"):
                sock = _docker_tls(sock, parts.hostname or _LOCALHOST)
        else:
            # ssh:// and npipe:// need more than the stdlib; treat as unavailable.
            return False
        with sock:
            sock.settimeout(timeout)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = b""
            while len(reply) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except (OSError, ValueError):
        return False
    status = reply.split(b"\r\n", 1)[0].split()
    return len(status) >= 2 and status[0].startswith(b"HTTP/") and status[1] == b"200"


def _docker_tls(sock: socket.socket, hostname: str) -> ssl.SSLSocket:
    cert_dir = Path(os.environ.get("DOCKER_CERT_PATH", "") or Path.home() / ".docker")
    ctx = ssl.create_default_context()
    if (cert_dir / "ca.pem").exists():
        ctx.load_verify_locations(cafile=str(cert_dir / "ca.pem"))
    if (cert_dir / "cert.pem").exists() and (cert_dir / "key.pem").exists():
        ctx.load_cert_chain(str(cert_dir / "cert.pem"), str(cert_dir / "key.pem"))
    return ctx.wrap_socket(sock, server_hostname=hostname)


# --------------------------------------------------------------------------- running as postgres


def _pg_os_user() -> pwd.struct_passwd | None:
    """Return the system user that must run PostgreSQL, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get(PG_OS_USER_ENV, "").strip() or "postgres"
    try:
        return pwd.getpwnam(name)
    except KeyError as exc:
        raise RuntimeError(
            f"PostgreSQL cannot run as root and there is no system user {name!r} to run it as. "
            f"Install the postgresql package (it creates the user), create the user, set "
            f"{PG_OS_USER_ENV} to another unprivileged user, or run as a non-root user."
        ) from exc


def _pg_env(user: pwd.struct_passwd | None) -> dict[str, str]:
    # PG* variables of the caller (PGPORT, PGDATA, ...) must not leak into the tools
    # and the C locale keeps server messages parseable (bind-error detection).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    if user is not None:
        env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
    return env


def _run_pg_tool(cmd: list[str], user: pwd.struct_passwd | None, *, output: IO[bytes], timeout: float) -> int:
    """Run a PostgreSQL tool, as ``user`` when given, with output appended to ``output``.

    Returns:
        The exit status; -1 when the tool did not finish within ``timeout``.
    """
    uid: int | None = None
    gid: int | None = None
    groups: list[int] | None = None
    if user is not None:
        runuser = shutil.which("runuser")
        if runuser is not None:
            cmd = [runuser, "-u", user.pw_name, "--", *cmd]
        else:
            uid, gid, groups = user.pw_uid, user.pw_gid, []
    output.flush()
    try:
        done = subprocess.run(  # noqa: S603 - argv built here, no shell
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=_pg_env(user),
            # The caller's cwd may be unreadable for the postgres user (e.g. /root).
            cwd="/",
            start_new_session=True,
            user=uid,
            group=gid,
            extra_groups=groups,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return -1
    return done.returncode


def _check_traversable(path: Path, user: pwd.struct_passwd) -> None:
    """Fail early, and clearly, if ``user`` cannot reach ``path`` (initdb's error is cryptic)."""
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for ancestor in path.parents:
        st = ancestor.stat()
        if st.st_uid == user.pw_uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            raise RuntimeError(
                f"The {user.pw_name!r} user cannot traverse {ancestor} (mode "
                f"{stat.filemode(st.st_mode)}), so PostgreSQL cannot use {path}. Put the data "
                f"directory under a world-traversable directory (e.g. tempfile.mkdtemp(dir='/tmp') "
                f"followed by chmod 0o755)."
            )


# --------------------------------------------------------------------------- PostgreSQL


class LocalPostgres:
    """A throw-away PostgreSQL cluster living in ``data_dir``.

    The cluster is created on first ``start()`` (trust auth, superuser ``postgres``,
    UTF8, C locale) and started with durability switched off and logical replication
    on (``wal_level=logical``, slots, senders and workers for concurrent moves). A
    cluster already running from the same directory is reused as it runs, which lets
    ``make dev`` be re-run; settings apply from the next start, and the options are
    given at every start, so an existing data directory takes new ones on restart.

    Attributes:
        data_dir: Absolute path of the cluster's data directory.
        log_file: File receiving initdb, pg_ctl and server output. Defaults to
            ``<data_dir>.log`` next to the data directory, because initdb insists on
            an empty data directory.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        log_file: Path | None = None,
        *,
        extra_settings: dict[str, str] | None = None,
    ) -> None:
        """Describe the cluster; nothing is created or started yet.

        Args:
            data_dir: Data directory; created (and handed to the postgres user when
                running as root) on ``start()``.
            port: Fixed TCP port, or None to pick a free one on first ``start()``.
                Once started, the instance keeps its port across stop/start so URLs
                handed out stay valid.
            log_file: Where server output goes; see the class attributes.
            extra_settings: Server settings (``postgresql.conf`` names) added to, or
                replacing, the defaults; ``listen_addresses``, ``port`` and
                ``unix_socket_directories`` stay the harness's.
        """
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.log_file = (
            Path(log_file).expanduser().resolve()
            if log_file is not None
            else self.data_dir.with_name(self.data_dir.name + ".log")
        )
        self._requested_port = _validate_port(port)
        self._port = self._requested_port
        self._extra_settings = dict(extra_settings or {})

    def __repr__(self) -> str:
        return f"LocalPostgres(data_dir={str(self.data_dir)!r}, port={self._port!r})"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """TCP port on 127.0.0.1.

        Raises:
            RuntimeError: No port was given, none was picked yet and no cluster is
                running from ``data_dir``.
        """
        if self._port is None:
            running = self._running_postmaster()
            if running is not None:
                self._port = running[1]
        if self._port is None:
            raise RuntimeError(f"{self!r} has no port yet: pass one or call start() first")
        return self._port

    @property
    def url(self) -> str:
        """Superuser URL of the ``postgres`` database, e.g. for asyncpg or psql."""
        return f"postgresql://postgres@{_LOCALHOST}:{self.port}/postgres"

    def is_running(self) -> bool:
        """Tell whether the postmaster of ``data_dir`` is alive and accepts TCP connections."""
        running = self._running_postmaster()
        return running is not None and _tcp_accepts(running[1])

    def start(self, timeout: float = 30) -> None:
        """Create the cluster if needed and start it; reuse it if it already runs.

        Args:
            timeout: Seconds to wait for the server to accept connections (initdb of
                a fresh cluster gets its own allowance).

        Raises:
            RuntimeError: Binaries missing, port taken, directory unusable, or the
                server did not come up; the message carries the log tail.
        """
        deadline = time.monotonic() + timeout
        bindir = _require_pg_bindir()
        user = _pg_os_user()

        running = self._running_postmaster()
        if running is not None:
            pid, port = running
            if self._port is not None and port != self._port:
                raise RuntimeError(
                    f"PostgreSQL (pid {pid}) already runs from {self.data_dir} on port {port}, "
                    f"not on the requested port {self._port}; stop it first."
                )
            self._port = port
            self._wait_accepting(port, deadline, pid=pid, offset=0)
            return

        # A port that was given explicitly, or already used by this instance, is part of
        # URLs handed out, so it must not silently change.
        may_repick = self._port is None
        attempts = _PORT_ATTEMPTS if may_repick else 1
        # Checked before initdb too, so a taken fixed port fails fast.
        if self._port is not None and _port_in_use(self._port):
            raise _port_busy("PostgreSQL", self._port, self.data_dir)
        self._prepare_data_dir(user)
        self._initdb(bindir, user)
        for attempt in range(1, attempts + 1):
            port = self._port if self._port is not None else free_port()
            if _port_in_use(port):
                if attempt < attempts:
                    continue
                raise _port_busy("PostgreSQL", port, self.data_dir)
            offset = _log_size(self.log_file)
            error = self._pg_ctl_start(bindir, user, port, deadline)
            if error is None:
                self._port = port
                return
            log = _log_tail(self.log_file, offset)
            if may_repick and attempt < attempts and _has_bind_error(log):
                continue
            raise RuntimeError(
                f"PostgreSQL in {self.data_dir} did not start on port {port}: {error}\n"
                f"--- tail of {self.log_file} ---\n{log}"
            )

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (``pg_ctl stop``) and wait until the postmaster is gone.

        Stopping a cluster that is not running is a no-op.

        Args:
            mode: pg_ctl shutdown mode: ``smart``, ``fast`` or ``immediate``.

        Raises:
            ValueError: Unknown mode.
            RuntimeError: The postmaster survived pg_ctl and escalating signals.
        """
        if mode not in _PG_STOP_MODES:
            raise ValueError(f"mode must be one of {_PG_STOP_MODES}, got {mode!r}")
        running = self._running_postmaster()
        if running is None:
            return
        pid = running[0]
        bindir = _require_pg_bindir()
        user = _pg_os_user()
        cmd = [str(bindir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60"]
        with _open_log(self.log_file) as log:
            _run_pg_tool(cmd, user, output=log, timeout=90)
        if _wait_pid_gone(pid, 10, "postgres"):
            return
        # pg_ctl failed or timed out: fall back to PostgreSQL's immediate-shutdown
        # signal, then to SIGKILL, so stop() really leaves nothing behind.
        for sig, grace in ((signal.SIGQUIT, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            if _wait_pid_gone(pid, grace, "postgres"):
                return
        raise RuntimeError(f"PostgreSQL postmaster {pid} for {self.data_dir} does not stop")

    # -- internals --------------------------------------------------------------

    def _running_postmaster(self) -> tuple[int, int] | None:
        """Return ``(pid, port)`` of a live postmaster for ``data_dir``, from postmaster.pid."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        return (pid, port) if _pid_alive(pid, "postgres") else None

    def _prepare_data_dir(self, user: pwd.struct_passwd | None) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if user is not None:
            _check_traversable(self.data_dir, user)
        if not self.data_dir.exists():
            self.data_dir.mkdir(mode=0o700)
        elif not (self.data_dir / "PG_VERSION").exists() and any(self.data_dir.iterdir()):
            raise RuntimeError(
                f"{self.data_dir} is neither empty nor a PostgreSQL data directory; "
                f"refusing to initdb over it. Remove it or point data_dir elsewhere."
            )
        if user is not None and not (self.data_dir / "PG_VERSION").exists():
            os.chown(self.data_dir, user.pw_uid, user.pw_gid)

    def _initdb(self, bindir: Path, user: pwd.struct_passwd | None) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        cmd = [
            str(bindir / "initdb"),
            "-D",
            str(self.data_dir),
            "--auth=trust",
            "--username=postgres",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]
        offset = _log_size(self.log_file)
        with _open_log(self.log_file) as log:
            rc = _run_pg_tool(cmd, user, output=log, timeout=_INITDB_TIMEOUT)
        if rc != 0:
            raise RuntimeError(
                f"initdb failed (exit {rc}) for {self.data_dir}\n"
                f"--- tail of {self.log_file} ---\n{_log_tail(self.log_file, offset)}"
            )

    def _server_options(self, port: int) -> str:
        socket_dir = str(self.data_dir)
        if len(socket_dir) + len("/.s.PGSQL.65535") >= _MAX_SOCKET_PATH or any(c in socket_dir for c in ',"'):
            # A Unix socket path that is too long (or not expressible in the GUC list
            # syntax) would abort startup; TCP alone is enough for this harness.
            socket_dir = ""
        settings = {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "300",
            "shared_buffers": "128MB",
            "logging_collector": "off",
            "log_destination": "stderr",
            **_LOGICAL_REPLICATION,
            **self._extra_settings,
            "listen_addresses": _LOCALHOST,
            "port": str(port),
            "unix_socket_directories": socket_dir,
        }
        # pg_ctl hands -o to /bin/sh, hence shell quoting.
        return " ".join(f"-c {shlex.quote(f'{key}={value}')}" for key, value in settings.items())

    def _pg_ctl_start(self, bindir: Path, user: pwd.struct_passwd | None, port: int, deadline: float) -> str | None:
        """Start the server; return None on success or a short error description."""
        remaining = max(1.0, deadline - time.monotonic())
        # Without -l, the postmaster inherits pg_ctl's stdout, i.e. the log file we
        # opened, so the postgres user needs no write access to the log's directory.
        cmd = [
            str(bindir / "pg_ctl"),
            "start",
            "-D",
            str(self.data_dir),
            "-w",
            "-t",
            str(math.ceil(remaining)),
            "-o",
            self._server_options(port),
        ]
        with _open_log(self.log_file) as log:
            rc = _run_pg_tool(cmd, user, output=log, timeout=remaining + 15)
        if rc != 0:
            self._kill_leftover()
            return "pg_ctl start timed out" if rc == -1 else f"pg_ctl start exited with {rc}"
        try:
            self._wait_accepting(port, deadline)
        except RuntimeError as exc:
            self._kill_leftover()
            return str(exc)
        return None

    def _wait_accepting(self, port: int, deadline: float, *, pid: int | None = None, offset: int | None = None) -> None:
        while not _tcp_accepts(port):
            if pid is not None and not _pid_alive(pid, "postgres"):
                raise RuntimeError(f"PostgreSQL postmaster {pid} for {self.data_dir} exited")
            if time.monotonic() >= deadline:
                message = f"PostgreSQL for {self.data_dir} does not accept connections on port {port}"
                if offset is not None:
                    message += f"\n--- tail of {self.log_file} ---\n{_log_tail(self.log_file, offset)}"
                raise RuntimeError(message)
            time.sleep(_POLL_INTERVAL)

    def _kill_leftover(self) -> None:
        # A half-started postmaster (e.g. pg_ctl gave up waiting) must not outlive a
        # failed start() and squat on the port or the data directory.
        running = self._running_postmaster()
        if running is not None:
            try:
                os.kill(running[0], signal.SIGKILL)
            except ProcessLookupError:
                return
            _wait_pid_gone(running[0], 5, "postgres")


# --------------------------------------------------------------------------- Redis


def _redis_ping(port: int, timeout: float = 0.5) -> bool:
    """Tell whether a Redis server on ``127.0.0.1:port`` answers PING with +PONG."""
    try:
        with socket.create_connection((_LOCALHOST, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n") and len(reply) < 1024:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return False
    return reply.startswith(b"+PONG")


def _redis_conf_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class LocalRedis:
    """A throw-away, non-persistent Redis server living in ``data_dir``.

    The configuration is written to ``<data_dir>/redis.conf`` on every fresh start
    (which is also how a later process learns the port of a reused server) and the
    pid to ``<data_dir>/redis.pid``.

    Attributes:
        data_dir: Absolute path of the server's working directory.
        log_file: File receiving server output; defaults to ``<data_dir>/redis.log``.
    """

    def __init__(self, data_dir: Path, port: int | None = None, log_file: Path | None = None) -> None:
        """Describe the server; nothing is created or started yet.

        Args:
            data_dir: Working directory, created on ``start()``.
            port: Fixed TCP port, or None to pick a free one on first ``start()``.
                Once started, the instance keeps its port across kill/stop/start.
            log_file: Where server output goes.
        """
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.log_file = Path(log_file).expanduser().resolve() if log_file is not None else self.data_dir / "redis.log"
        self._port = _validate_port(port)
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"LocalRedis(data_dir={str(self.data_dir)!r}, port={self._port!r})"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def _pidfile(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def _conffile(self) -> Path:
        return self.data_dir / "redis.conf"

    @property
    def port(self) -> int:
        """TCP port on 127.0.0.1.

        Raises:
            RuntimeError: No port was given, none was picked yet and no server is
                running from ``data_dir``.
        """
        if self._port is None and self._live_pid() is not None:
            self._port = self._configured_port()
        if self._port is None:
            raise RuntimeError(f"{self!r} has no port yet: pass one or call start() first")
        return self._port

    @property
    def url(self) -> str:
        """URL of database 0, e.g. for ``redis.asyncio.from_url``."""
        return f"redis://{_LOCALHOST}:{self.port}/0"

    def is_running(self) -> bool:
        """Tell whether the server of ``data_dir`` is alive and answers PING."""
        if self._live_pid() is None:
            return False
        port = self._port if self._port is not None else self._configured_port()
        return port is not None and _redis_ping(port)

    def start(self, timeout: float = 15) -> None:
        """Start the server, or reuse the one already running from ``data_dir``.

        Args:
            timeout: Seconds to wait for the server to answer PING.

        Raises:
            RuntimeError: Binary missing, port taken, or the server did not come up;
                the message carries the log tail.
        """
        deadline = time.monotonic() + timeout
        pid = self._live_pid()
        if pid is not None:
            port = self._configured_port()
            if port is None:
                raise RuntimeError(f"Redis pid {pid} runs from {self.data_dir} but its port is unknown")
            if self._port is not None and port != self._port:
                raise RuntimeError(
                    f"Redis (pid {pid}) already runs from {self.data_dir} on port {port}, "
                    f"not on the requested port {self._port}; stop it first."
                )
            self._port = port
            while not _redis_ping(port):
                if not _pid_alive(pid, "redis") or time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"Redis pid {pid} from {self.data_dir} does not answer PING on port {port}\n"
                        f"--- tail of {self.log_file} ---\n{_log_tail(self.log_file)}"
                    )
                time.sleep(_POLL_INTERVAL)
            return

        binary = _require_redis_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._reap()
        self._pidfile.unlink(missing_ok=True)
        may_repick = self._port is None
        attempts = _PORT_ATTEMPTS if may_repick else 1
        for attempt in range(1, attempts + 1):
            port = self._port if self._port is not None else free_port()
            if _port_in_use(port):
                if attempt < attempts:
                    continue
                raise _port_busy("Redis", port, self.data_dir)
            offset = _log_size(self.log_file)
            error = self._spawn(binary, port, deadline)
            if error is None:
                self._port = port
                return
            log = _log_tail(self.log_file, offset)
            if may_repick and attempt < attempts and _has_bind_error(log):
                continue
            raise RuntimeError(
                f"Redis in {self.data_dir} did not start on port {port}: {error}\n"
                f"--- tail of {self.log_file} ---\n{log}"
            )

    def stop(self) -> None:
        """Shut the server down (SIGTERM, then SIGKILL after 10 s); no-op if not running."""
        pid = self._live_pid()
        if pid is not None and not self._signal_and_wait(pid, signal.SIGTERM, 10.0):
            self._signal_and_wait(pid, signal.SIGKILL, 5.0)
        self._reap()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would, and wait until it is gone.

        Meant for fault-injection tests; ``start()`` brings it back on the same port.
        """
        pid = self._live_pid()
        if pid is not None:
            self._signal_and_wait(pid, signal.SIGKILL, 5.0)
        self._reap()
        # A crash leaves the pid file behind; drop it so a recycled pid cannot be
        # mistaken for this server later.
        self._pidfile.unlink(missing_ok=True)

    # -- internals --------------------------------------------------------------

    def _live_pid(self) -> int | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        try:
            pid = int(self._pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid, "redis") else None

    def _configured_port(self) -> int | None:
        try:
            for line in self._conffile.read_text().splitlines():
                key, _, value = line.strip().partition(" ")
                if key == "port":
                    return int(value)
        except (OSError, ValueError):
            return None
        return None

    def _write_conf(self, port: int) -> None:
        lines = [
            "# Written by tenantry_devtools.servers.LocalRedis; rewritten on every start.",
            f"bind {_LOCALHOST}",
            f"port {port}",
            f"dir {_redis_conf_quote(str(self.data_dir))}",
            f"pidfile {_redis_conf_quote(str(self._pidfile))}",
            "daemonize no",
            'save ""',
            "appendonly no",
            'logfile ""',
        ]
        self._conffile.write_text("\n".join(lines) + "\n")

    def _spawn(self, binary: Path, port: int, deadline: float) -> str | None:
        """Launch redis-server and wait for PONG; return None or a short error description."""
        self._write_conf(port)
        with _open_log(self.log_file) as log:
            # Not daemonized: we see an early exit immediately, and the process still
            # outlives us because it has its own session.
            self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [str(binary), str(self._conffile)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )
        proc = self._proc
        while not _redis_ping(port):
            if proc.poll() is not None:
                self._proc = None
                return f"redis-server exited with {proc.returncode}"
            if time.monotonic() >= deadline:
                self._signal_and_wait(proc.pid, signal.SIGKILL, 5.0)
                self._reap()
                return "redis-server did not answer PING in time"
            time.sleep(_POLL_INTERVAL)
        return None

    def _signal_and_wait(self, pid: int, sig: signal.Signals, timeout: float) -> bool:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        return _wait_pid_gone(pid, timeout, "redis")

    def _reap(self) -> None:
        # A child we started and that has exited stays a zombie until waited for.
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None
