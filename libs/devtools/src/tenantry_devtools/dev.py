"""``make dev``: a running platform from a fresh clone, with all state under ``.run/``.

Starts throw-away PostgreSQL and Redis (or uses ``DATABASE_URL`` / ``REDIS_URL``), migrates, starts the
services as child processes, prints how to reach them once every one answers, and on Ctrl-C (or ``make stop``)
stops everything it started. Secrets generated on the first run are kept in ``.run/dev.env`` so a restart resumes
the same platform; an explicitly exported variable always wins, and the file records the values in force (so
``make tenantctl`` reaches the running platform). One ``make dev`` at a time: a second one refuses and changes
nothing. ``make stop`` stops the services by their pid files and the throw-away servers living under ``.run/``
by theirs, on whatever ports they run.

``DEV_SERVERS=2`` adds a second throw-away PostgreSQL (``.run/postgres2``, port ``DEV_PG2_PORT``, default
``DEV_PG_PORT + 1``), which the tenant-service registers as the database server ``second``
(``EXTRA_DATABASE_SERVERS``), so that tenants can be placed on it and moved between the two. Once it exists it is
started by every later ``make dev``, whatever ``DEV_SERVERS`` says: tenants may live on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Final
from urllib.parse import urlsplit

import asyncpg

from tenantry_devtools.platform import SECRET_SETTINGS, Installation, Platform, TenantctlError
from tenantry_devtools.processes import ROOT, StartupError
from tenantry_devtools.servers import LocalPostgres, LocalRedis, ensure_binaries

#: All state of `make dev`; overridable so tests can run a second platform beside a developer's.
RUN: Final = Path(os.environ.get("TENANTRY_RUN_DIR") or ROOT / ".run")
ENV_FILE: Final = RUN / "dev.env"
PIDS: Final = RUN / "pids"
LOGS: Final = RUN / "logs"
#: Held (flock) by the running ``make dev``; holds its pid.
LOCK: Final = RUN / "dev.lock"
MASTER_DB: Final = "tenantry"
#: Generated on the first run, then kept (the rest of dev.env only records what was in force).
SECRET_NAMES: Final = tuple(SECRET_SETTINGS)
#: What else ``.run/dev.env`` records of the values in force.
RECORDED_NAMES: Final = (
    "DATABASE_URL",
    "TENANT_DATABASE_URL",
    "REDIS_URL",
    "BASE_DOMAIN",
    "UPSTREAM_ALLOWLIST",
    "SERVICE_TOKEN_SCOPES",
    "BACKUP_STORE_URL",
    "TENANT_SERVICE_PORT",
    "GATEWAY_PORT",
    "APP_PORT",
    "TENANT_SERVICE_URL",
    "EXTRA_DATABASE_SERVERS",
)
#: The database server name the tenant-service registers the second throw-away PostgreSQL under.
SECOND_SERVER: Final = "second"


def _say(message: str) -> None:
    print(f"[dev] {message}", flush=True)


def _load_env_file() -> dict[str, str]:
    values: dict[str, str] = {}
    if ENV_FILE.exists():
        for line in ENV_FILE.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not line.startswith("#"):
                values[key.strip()] = value.strip()
    return values


def _installation(admin_url: str, redis_url: str) -> Installation:
    """The platform's installation: the registry ``tenantry`` (or ``DATABASE_URL``'s), the service's default template
    and prefix, the secrets of .run/dev.env (generated on the first run); an exported variable always wins."""
    registry_url = os.environ.get("DATABASE_URL")
    installation = Installation(
        pg_url=os.environ.get("TENANT_DATABASE_URL") or admin_url,
        redis_url=redis_url,
        master_db=urlsplit(registry_url).path.lstrip("/") if registry_url else MASTER_DB,
        registry_url=registry_url,
        settings_env={
            "BASE_DOMAIN": os.environ.get("BASE_DOMAIN", "localhost"),
            "UPSTREAM_ALLOWLIST": os.environ.get("UPSTREAM_ALLOWLIST", "127.0.0.0/8,::1/128,localhost"),
            # SERVICE_TOKEN (named "app") is the notes app's: it may have credentials vended, and nothing else.
            # GATEWAY_SERVICE_TOKEN is the gateway's: the tenant-service gives it directory:read by itself.
            "SERVICE_TOKEN_SCOPES": os.environ.get("SERVICE_TOKEN_SCOPES") or "app=credentials:vend",
            "LOG_FORMAT": os.environ.get("LOG_FORMAT", "json"),
            "BACKUP_STORE_URL": os.environ.get("BACKUP_STORE_URL") or (RUN / "backups").resolve().as_uri(),
        },
    )
    exported = {name: os.environ[name] for name in SECRET_NAMES if os.environ.get(name)}
    return installation.with_secrets({**_load_env_file(), **exported})


def _record(env: dict[str, str]) -> None:
    """Write .run/dev.env: the secrets and settings in force (an exported value included)."""
    names = (*SECRET_NAMES, *RECORDED_NAMES)
    ENV_FILE.write_text(
        "# Written by `make dev`: the values in force. `make tenantctl` uses them.\n"
        + "".join(f"{name}={env[name]}\n" for name in names if env.get(name))
    )
    ENV_FILE.chmod(0o600)


def _port(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def _migrate(installation: Installation, *, create: bool) -> str:
    """Create the registry database when ``create`` and it is missing, then migrate; the migration's last line."""
    try:
        done = asyncio.run(installation.create(exist_ok=True)) if create else installation.tenantctl("migrate")
    except TenantctlError as exc:
        raise SystemExit(f"migration failed: {exc}") from None
    except (OSError, asyncpg.PostgresError) as exc:
        raise SystemExit(f"could not create the registry database: {exc}") from None
    return done.stdout.strip().splitlines()[-1]


def _stop_services() -> None:
    if not PIDS.exists():
        return
    for pidfile in PIDS.glob("*.pid"):
        try:
            pid = int(pidfile.read_text())
            os.killpg(pid, signal.SIGTERM)
            for _ in range(50):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)  # our own child stays a zombie, i.e. "alive", until reaped
                os.kill(pid, 0)
                time.sleep(0.1)
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, ValueError, PermissionError):
            pass
        pidfile.unlink(missing_ok=True)


def _local_servers() -> tuple[LocalPostgres, LocalRedis]:
    return (
        LocalPostgres(RUN / "postgres", port=_port("DEV_PG_PORT", 5433), log_file=LOGS / "postgres.log"),
        LocalRedis(RUN / "redis", port=_port("DEV_REDIS_PORT", 6380), log_file=LOGS / "redis.log"),
    )


def _second_postgres() -> LocalPostgres | None:
    """The second throw-away PostgreSQL when ``DEV_SERVERS=2`` asks for it or an earlier run made it, else None."""
    wanted = os.environ.get("DEV_SERVERS") or "1"
    if wanted not in ("1", "2"):
        raise SystemExit(f"DEV_SERVERS must be 1 or 2, not {wanted!r}")
    data_dir = RUN / "postgres2"
    if wanted == "1" and not (data_dir / "PG_VERSION").exists():
        return None
    port = _port("DEV_PG2_PORT", _port("DEV_PG_PORT", 5433) + 1)
    return LocalPostgres(data_dir, port=port, log_file=LOGS / "postgres2.log")


def _extra_servers(second: LocalPostgres | None) -> str:
    """``EXTRA_DATABASE_SERVERS`` for the tenant-service: an exported value, plus the second server."""
    entries = [entry for entry in os.environ.get("EXTRA_DATABASE_SERVERS", "").split(";") if entry.strip()]
    if second is not None and not any(entry.split("=", 1)[0].strip() == SECOND_SERVER for entry in entries):
        entries.append(f"{SECOND_SERVER}={second.url}")
    return ";".join(entries)


def stop() -> None:
    """Stop the services and the throw-away servers of ``make dev`` (only it starts servers under ``.run/``), found
    by their data directories and pid files, not by ports: whatever ``DEV_PG_PORT``/``DEV_REDIS_PORT`` were."""
    _stop_services()
    LocalPostgres(RUN / "postgres", log_file=LOGS / "postgres.log").stop()
    LocalPostgres(RUN / "postgres2", log_file=LOGS / "postgres2.log").stop()
    LocalRedis(RUN / "redis", log_file=LOGS / "redis.log").stop()
    _say("stopped")


def _hold_the_lock() -> IO[str]:
    """Become the one ``make dev`` of this run directory, or refuse with the running one's pid."""
    for folder in (RUN, PIDS, LOGS):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
    handle = LOCK.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        running = handle.read().strip() or "?"
        handle.close()
        raise SystemExit(
            f"make dev is already running here (pid {running}, state in {RUN}); nothing was changed. "
            "Use that one, or stop it first (Ctrl-C in its terminal, or `make stop`)."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def tenantctl(args: list[str]) -> int:
    """Run ``tenantctl`` against the platform of ``make dev``, with the values recorded in .run/dev.env."""
    recorded = _load_env_file()
    if not recorded.get("DATABASE_URL"):
        raise SystemExit(f"no platform of `make dev` recorded in {ENV_FILE}: run `make dev` first")
    env = {**os.environ, **recorded}
    command = [sys.executable, "-m", "tenant_service", *args]  # the operator's own arguments
    return subprocess.run(command, env=env, cwd=ROOT, check=False).returncode  # noqa: S603


def _address(url: str) -> str:
    """``host:port`` of a database URL (never its password)."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def up() -> None:
    """Bring the platform up and keep it in the foreground until interrupted (Ctrl-C, SIGTERM, `make stop`).

    Whatever ends it, during start-up or later, everything it started is stopped on the way out. A second one
    while one runs refuses before touching anything.
    """
    lock = _hold_the_lock()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        _run_platform()
    except KeyboardInterrupt:
        pass
    finally:
        stop()
        lock.close()


def _run_platform() -> None:
    _stop_services()
    use_local_pg = not os.environ.get("DATABASE_URL")
    use_local_redis = not os.environ.get("REDIS_URL")
    second = _second_postgres()
    ensure_binaries(install=True, postgres=use_local_pg or second is not None, redis=use_local_redis)
    pg, redis = _local_servers()
    if use_local_pg:
        pg.start()
        admin_url = pg.url
        _say(f"PostgreSQL on 127.0.0.1:{pg.port} (data in .run/postgres)")
    else:
        admin_url = os.environ.get("TENANT_DATABASE_URL") or os.environ["DATABASE_URL"]
    if second is not None:
        second.start()
        _say(f"PostgreSQL {SECOND_SERVER!r} on 127.0.0.1:{second.port} (data in .run/postgres2)")
    extra_servers = _extra_servers(second)
    if use_local_redis:
        redis.start()
        _say(f"Redis on 127.0.0.1:{redis.port}")
    installation = _installation(admin_url, os.environ.get("REDIS_URL") or redis.url)
    _say(_migrate(installation, create=use_local_pg))
    log_format = installation.settings_env["LOG_FORMAT"]
    gateway_env = {"BASE_DOMAIN": installation.settings_env["BASE_DOMAIN"], "LOG_FORMAT": log_format}
    if os.environ.get("DEFAULT_UPSTREAM"):
        gateway_env["DEFAULT_UPSTREAM"] = os.environ["DEFAULT_UPSTREAM"]
    try:
        # The banner only once every process answers: the gateway with its directory loaded, the example app up.
        platform = Platform.launch(
            installation,
            LOGS,
            service_port=_port("TENANT_SERVICE_PORT", 8001),
            gateway_port=_port("GATEWAY_PORT", 8080),
            notes_port=_port("APP_PORT", 8002),
            service_env={"EXTRA_DATABASE_SERVERS": extra_servers} if extra_servers else None,
            gateway_env=gateway_env,
            notes_env={"LOG_FORMAT": log_format},
            pid_dir=PIDS,
        )
    except StartupError as exc:
        raise SystemExit(f"{exc}\n(logs in {LOGS})") from None
    base, gateway_url = platform.service.url, platform.gateway.url
    gateway_port, app_port = platform.gateway.port, platform.notes.port
    env = {
        **installation.env(),
        **installation.secret_env(),
        "TENANT_SERVICE_PORT": str(platform.service.port),
        "GATEWAY_PORT": str(gateway_port),
        "APP_PORT": str(app_port),
        "TENANT_SERVICE_URL": base,
        "EXTRA_DATABASE_SERVERS": extra_servers,
    }
    _record(env)
    token = env["ADMIN_TOKEN"]
    base_domain = env["BASE_DOMAIN"]
    databases = f"default {_address(installation.pg_url)}"
    if second is not None:
        databases += f", {SECOND_SERVER} {_address(second.url)}"
    print(
        f"""
Tenantry is running (logs in {LOGS}, stop with Ctrl-C or `make stop`)

  tenant-service   {base}          (OpenAPI: {base}/schema)
  admin console    {base}/console          (sign in with the admin token)
  gateway          {gateway_url}          (tenants: http://<slug>.{base_domain}:{gateway_port}/...)
  notes app        http://127.0.0.1:{app_port}          (the default upstream, reached through the gateway)
  database servers {databases}          (GET {base}/admin/servers)

  admin token      {token}
  service token    {env["SERVICE_TOKEN"]}          (SERVICE_TOKEN, the notes app's: credentials:vend)
  gateway token    {env["GATEWAY_SERVICE_TOKEN"]}          (GATEWAY_SERVICE_TOKEN: directory:read)

Create a tenant (the answer holds its first API key, "tk_...", shown once):

  curl -s -X POST {base}/admin/tenants \\
    -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\
    -d '{{"slug": "acme", "name": "Acme Corp"}}'

Exchange that key for an access token at the gateway:

  curl -s -X POST {gateway_url}/_gateway/token -H 'X-API-Key: tk_...'

Write and read notes in acme's own database, through the gateway:

  curl -s -X POST http://acme.{base_domain}:{gateway_port}/notes -H 'X-API-Key: tk_...' \\
    -H 'Content-Type: application/json' -d '{{"body": "hello"}}'
  curl -s http://acme.{base_domain}:{gateway_port}/notes -H 'X-API-Key: tk_...'
  curl -s http://acme.{base_domain}:{gateway_port}/whoami -H 'X-API-Key: tk_...'

The operator's CLI against this platform (values from {ENV_FILE}):

  make tenantctl ARGS="tenants list"
""",
        flush=True,
    )
    while all(process.alive() for process in platform.processes):
        time.sleep(0.5)
    for process in platform.processes:
        if not process.alive():
            _say(f"{process.name} exited with {process.wait_exit()}; see {process.log_path}")


def main() -> None:
    """``python -m tenantry_devtools.dev [up|stop]``."""
    parser = argparse.ArgumentParser(prog="tenantry-dev")
    parser.add_argument("command", choices=["up", "stop", "tenantctl"], nargs="?", default="up")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="tenantctl's arguments")
    args = parser.parse_args()
    if args.command == "stop":
        stop()
    elif args.command == "tenantctl":
        sys.exit(tenantctl(args.args))
    else:
        up()


if __name__ == "__main__":
    main()
