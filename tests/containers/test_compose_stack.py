"""The platform in containers: deploy/docker/Dockerfile and docker-compose.tenant.yml, built and run for real.

One compose project for the module: the stand-in base images (``standins.py``, built once per recipe and then
reused), the three service images built by compose from the Dockerfile, the stack started with generated
secrets on free ports of 127.0.0.1, every check made through the published ports as a user would, then
``docker compose down -v``. The engine is the one that answers, else the project's own (``tenantry_devtools.
engine``: Debian's docker.io, installed and started when missing, with its own socket and data root, which it
keeps running for the next run). When no engine can be had the tests fail with the fix; they never skip.

Marked ``containers``: ``make test`` runs them; ``PYTEST_ARGS='-m "not containers"'`` leaves them out locally.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from standins import StandInError, StandIns

from tenantry_devtools.engine import Engine, EngineError, compose_command, docker_command, ensure_engine
from tenantry_devtools.platform_secrets import COMPOSE_SECRET_NAMES, new_secret
from tenantry_devtools.servers import free_port
from tenantry_devtools.stack import ROOT, ComposeStack, StackError

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1800)]

APPS = ("tenant-service", "gateway", "notes")
IMAGES = {app: f"tenantry/{app}" for app in APPS}
#: Largest acceptable service layer on top of the Python base (the virtualenv), in MB; measured in docs/deploy.md.
SERVICE_LAYER_BUDGET_MB = 175
PROJECT_PREFIX = "tenantry-test-"
HTTP_TIMEOUT = 10.0
PROPAGATION_DEADLINE = 5.0


@dataclass
class Deployment:
    stack: ComposeStack
    docker: list[str]
    env: dict[str, str]
    values: dict[str, str]
    standins_built: dict[str, float]
    tag: str
    phases: dict[str, float] = field(default_factory=dict)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.stack.published_port(service)}"

    def docker_out(self, *args: str) -> str:
        done = subprocess.run([*self.docker, *args], env=self.env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
        return done.stdout

    def container(self, service: str) -> dict[str, object]:
        (found,) = [c for c in self.stack.containers() if c["Service"] == service]
        return found


@contextmanager
def _timed(phases: dict[str, float], name: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        phases[name] = time.monotonic() - started


def _engine_and_compose() -> tuple[Engine, list[str]]:
    try:
        engine = ensure_engine(install=True)
        return engine, compose_command(engine)
    except EngineError as exc:
        problem = str(exc)
    pytest.fail(f"No Docker engine or Compose for the container tests.\n{problem}", pytrace=False)


def _standin(standins: StandIns, name: str) -> str:
    try:
        return standins.image(name)
    except StandInError as exc:
        problem = str(exc)
    pytest.fail(f"Could not build the {name} stand-in image.\n{problem}", pytrace=False)


def _write_env_file(path: Path, values: dict[str, str]) -> None:
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    path.chmod(0o600)


def _clean_env(engine: Engine) -> dict[str, str]:
    """Only what docker and compose need: a variable exported in the developer's shell must not reach compose."""
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "DOCKER_CONFIG", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY")
    return engine.env({name: os.environ[name] for name in keep if name in os.environ})


def _docker_lines(docker: list[str], env: dict[str, str], *args: str) -> list[str]:
    return subprocess.run([*docker, *args], env=env, capture_output=True, text=True, check=False).stdout.split()


def _down_stale_projects(compose: list[str], docker: list[str], env: dict[str, str], tmp: Path) -> None:
    """Projects of earlier runs whose process is gone (killed before its teardown): down -v and their images."""
    label = "com.docker.compose.project"
    projects = set(
        _docker_lines(docker, env, "ps", "-a", "--filter", f"label={label}", "--format", f'{{{{.Label "{label}"}}}}')
    )
    if images := _docker_lines(docker, env, "image", "ls", "-q", "--filter", f"label={label}"):
        projects |= set(
            _docker_lines(
                docker, env, "image", "inspect", "--format", f'{{{{index .Config.Labels "{label}"}}}}', *images
            )
        )
    for project in sorted(projects):
        pid = project.removeprefix(PROJECT_PREFIX).split("-")[0]
        if project.startswith(PROJECT_PREFIX) and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            subprocess.run([*compose, "-p", project, "down", "-v"], env=env, cwd=tmp, capture_output=True, check=False)
            _remove_project_images(docker, env, project)


def _remove_project_images(docker: list[str], env: dict[str, str], project: str) -> None:
    if ids := _docker_lines(
        docker, env, "image", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}"
    ):
        subprocess.run([*docker, "rmi", "-f", *sorted(set(ids))], env=env, capture_output=True, check=False)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    phases: dict[str, float] = {}
    with _timed(phases, "engine"):
        engine, compose = _engine_and_compose()
        docker = docker_command()
        env = _clean_env(engine)
    standins = StandIns(docker, env)
    with _timed(phases, "python base"):
        python_image = _standin(standins, "python")

    tmp = tmp_path_factory.mktemp("compose")
    _down_stale_projects(compose, docker, env, tmp)
    project = f"{PROJECT_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
    values = {name: new_secret(name) for name in COMPOSE_SECRET_NAMES} | {
        "PYTHON_IMAGE": python_image,
        # The engine routes nothing to the outside: builds reach the package registries on the host's network.
        "BUILD_NETWORK": "host",
        # apt.postgresql.org is out of reach here: the client tools of the base's Debian release, as its server.
        "PG_CLIENT_REPO": "debian",
        "PG_CLIENT_VERSION": "15",
        "TENANTRY_IMAGE_TAG": project,
        "TENANT_SERVICE_PORT": str(free_port()),
        "GATEWAY_PORT": str(free_port()),
        "APP_PORT": str(free_port()),
    }
    env_file = tmp / "stack.env"
    stack = ComposeStack(compose=compose, env=env, project=project, env_file=env_file)
    try:
        with _timed(phases, "build, meanwhile postgres and redis"):
            # The service images need only the Python base: build them while the other stand-ins are made.
            _write_env_file(env_file, values)
            build_log = tmp / "build.log"
            with build_log.open("wb") as log:
                build = subprocess.Popen(stack.command("build"), env=env, cwd=ROOT, stdout=log, stderr=log)
            try:
                values["POSTGRES_IMAGE"] = _standin(standins, "postgres")
                values["REDIS_IMAGE"] = _standin(standins, "redis")
            finally:
                status = build.wait()
            if status != 0:
                tail = "\n".join(build_log.read_text(errors="replace").splitlines()[-60:])
                pytest.fail(f"compose build exited {status}:\n{tail}", pytrace=False)
            _write_env_file(env_file, values)
        with _timed(phases, "up"):
            stack.run("up", "--detach", "--no-build", "--pull", "never", capture=True)
            stack.wait_healthy()
        yield Deployment(stack, docker, env, values, standins.built, project, phases)
    except StackError as exc:
        problem = str(exc)
    else:
        problem = ""
    finally:
        stack.run("down", "--volumes", "--remove-orphans", "--timeout", "10", capture=True, check=False)
        _remove_project_images(docker, env, project)
    if problem:
        pytest.fail(f"The compose stack did not come up.\n{problem}", pytrace=False)


def _admin(deployment: Deployment) -> httpx.Client:
    return httpx.Client(
        base_url=deployment.url("tenant-service"),
        headers={"Authorization": f"Bearer {deployment.values['ADMIN_TOKEN']}"},
        timeout=HTTP_TIMEOUT,
    )


def _gateway(deployment: Deployment, slug: str, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=deployment.url("gateway"),
        headers={"Host": f"{slug}.localhost", "X-API-Key": key},
        timeout=HTTP_TIMEOUT,
    )


def _until_known(gateway: httpx.Client) -> None:
    """Wait until the gateway knows a just-created tenant's key (changes reach every gateway within seconds)."""
    deadline = time.monotonic() + PROPAGATION_DEADLINE
    while (answer := gateway.get("/whoami")).status_code in (401, 404, 503) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert answer.status_code == 200, answer.text


def _create_tenant(deployment: Deployment, slug: str) -> dict[str, object]:
    with _admin(deployment) as admin:
        created = admin.post("/admin/tenants", json={"slug": slug, "name": slug.title()})
    assert created.status_code == 201, created.text
    tenant: dict[str, object] = created.json()
    assert tenant["status"] == "active"
    return tenant


def test_every_service_answers_ready_through_its_published_port(deployment: Deployment) -> None:
    for path, service in (("/readyz", "tenant-service"), ("/_gateway/readyz", "gateway"), ("/healthz", "notes")):
        answer = httpx.get(deployment.url(service) + path, timeout=HTTP_TIMEOUT)
        assert answer.status_code == 200, f"{service}{path}: {answer.status_code} {answer.text}"
    # Litestar builds the OpenAPI document without polyfactory/faker, which the images leave out.
    schema = httpx.get(deployment.url("tenant-service") + "/schema/openapi.json", timeout=HTTP_TIMEOUT)
    assert schema.status_code == 200, schema.text
    assert "/admin/tenants" in schema.json()["paths"]


def test_migrate_ran_once_and_exited_0_before_the_apps(deployment: Deployment) -> None:
    migrate = deployment.container("migrate")
    assert migrate["State"] == "exited"
    assert int(str(migrate["ExitCode"])) == 0
    states = {c["Service"]: c for c in deployment.stack.containers()}
    for service in (*APPS, "postgres", "redis"):
        assert states[service]["State"] == "running", service
        assert states[service]["Health"] == "healthy", service


def test_a_tenant_gets_notes_in_its_own_database_through_the_gateway(deployment: Deployment) -> None:
    tenant = _create_tenant(deployment, "acme")
    key = tenant["api_key"]["key"]  # type: ignore[index]
    with _gateway(deployment, "acme", key) as gateway:
        _until_known(gateway)
        created = gateway.post("/notes", json={"body": "hello from a container"})
        assert created.status_code == 201, created.text
        listed = gateway.get("/notes")
        assert listed.status_code == 200, listed.text
        assert [note["body"] for note in listed.json()["items"]] == ["hello from a container"]
        whoami = gateway.get("/whoami")
    assert whoami.status_code == 200, whoami.text
    assert whoami.json() == {
        "tenant_id": tenant["id"],
        "slug": "acme",
        "database": tenant["database"]["name"],  # type: ignore[index]
    }


def test_a_suspended_tenant_is_refused_at_the_gateway(deployment: Deployment) -> None:
    tenant = _create_tenant(deployment, "globex")
    key = tenant["api_key"]["key"]  # type: ignore[index]
    with _gateway(deployment, "globex", key) as gateway:
        _until_known(gateway)
        with _admin(deployment) as admin:
            suspended = admin.post("/admin/tenants/globex/suspend")
        assert suspended.status_code == 200, suspended.text
        deadline = time.monotonic() + PROPAGATION_DEADLINE
        while (answer := gateway.get("/whoami")).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert answer.status_code == 403, answer.text
    assert answer.json()["code"] == "tenant_suspended"


@pytest.mark.parametrize("service", [*APPS, "migrate"])
def test_service_containers_run_as_non_root_on_a_read_only_root(deployment: Deployment, service: str) -> None:
    container = str(deployment.container(service)["ID"])
    (inspected,) = json.loads(deployment.docker_out("inspect", container))
    assert inspected["Config"]["User"] == "10001:10001"
    assert inspected["HostConfig"]["ReadonlyRootfs"] is True
    assert inspected["HostConfig"]["CapDrop"] == ["ALL"]
    if service == "migrate":
        return  # exited: nothing to look into
    probe = (
        "import os\n"
        "print(os.getuid(), os.getgid())\n"
        "try:\n    open('/app/probe', 'w')\nexcept OSError as exc:\n    print(exc.strerror)\n"
    )
    uid_gid, refused = deployment.docker_out("exec", container, "python", "-c", probe).splitlines()
    assert uid_gid == "10001 10001"
    assert refused == "Read-only file system"


def _major_version(version_line: str) -> int:
    """15 of ``pg_dump (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)``."""
    match = re.search(r"\(PostgreSQL\) (\d+)", version_line)
    assert match, f"not a PostgreSQL tool's version: {version_line!r}"
    return int(match.group(1))


def test_the_tenant_service_dumps_its_server_into_the_backups_volume(deployment: Deployment) -> None:
    tenant_service = str(deployment.container("tenant-service")["ID"])
    postgres = str(deployment.container("postgres")["ID"])
    version_num = deployment.docker_out(
        "exec", postgres, "psql", "-U", "postgres", "-d", "tenantry", "-tAc", "SHOW server_version_num"
    )
    server_major = int(version_num.strip()) // 10000
    for tool in ("pg_dump", "pg_restore"):
        line = deployment.docker_out("exec", tenant_service, tool, "--version").strip()
        # pg_dump refuses a server newer than itself.
        assert _major_version(line) >= server_major, f"{line}: older than the PostgreSQL {server_major} server"
    # As the service user, on the read-only root: a custom-format dump into the volume, read back by pg_restore.
    probe = (
        "set -e; dump=/var/lib/tenantry/backups/probe.dump; "
        'stat -c "%u %a" /var/lib/tenantry/backups; '
        'pg_dump --format=custom --file="$dump" "$DATABASE_URL"; '
        'pg_restore --list "$dump"; rm "$dump"'
    )
    owner_mode, *listing = deployment.docker_out("exec", tenant_service, "sh", "-c", probe).splitlines()
    assert owner_mode == "10001 700"
    assert any(" TABLE DATA public alembic_version " in line for line in listing), "\n".join(listing)


def _size_mb(deployment: Deployment, image: str) -> float:
    return int(deployment.docker_out("image", "inspect", "--format", "{{.Size}}", image).strip()) / 1e6


def test_images_carry_no_build_tools_and_their_sizes_are_reported(
    deployment: Deployment, record_property: pytest.RecordProperty
) -> None:
    python, postgres, redis = (deployment.values[f"{name}_IMAGE"] for name in ("PYTHON", "POSTGRES", "REDIS"))
    base = _size_mb(deployment, python)
    lines = [f"python base (stand-in {python}): {base:.0f} MB"]
    oversized = []
    for app, repository in IMAGES.items():
        image = f"{repository}:{deployment.tag}"
        found = deployment.docker_out(
            "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
            "for tool in uv gcc cc make git curl; do command -v $tool || true; done",
        ).split()  # fmt: skip
        assert found == [], f"{app}'s image carries build tools: {found}"
        total = _size_mb(deployment, image)
        lines.append(f"{app}: {total:.0f} MB ({total - base:.0f} MB on top of the base)")
        if total - base > SERVICE_LAYER_BUDGET_MB:
            oversized.append(app)
    lines.append(f"postgres stand-in: {_size_mb(deployment, postgres):.0f} MB")
    lines.append(f"redis stand-in: {_size_mb(deployment, redis):.0f} MB")
    built = ", ".join(f"{image} ({seconds:.0f} s)" for image, seconds in deployment.standins_built.items())
    built = built or "none (all cached)"
    lines.append(f"stand-ins built by this run: {built}")
    lines.append("phases: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in deployment.phases.items()))
    report = "\n".join(lines)
    print(report)
    record_property("containers_report", report)
    assert not oversized, f"over {SERVICE_LAYER_BUDGET_MB} MB on top of the base: {oversized}\n{report}"
