"""docker-compose.tenant.yml and deploy/docker/Dockerfile, checked without a Docker daemon.

The compose file is parsed with PyYAML (and, when the ``docker compose`` CLI is installed, validated by
``docker compose config``, which needs no daemon); the Dockerfile is parsed as text, stage by stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from envscan import ROOT

COMPOSE_FILE = ROOT / "docker-compose.tenant.yml"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

APPS = ("tenant-service", "gateway", "notes")
BACKING = ("postgres", "redis")
ONE_SHOT = ("migrate",)
REQUIRED_SECRETS = (
    "POSTGRES_PASSWORD",
    "ADMIN_TOKEN",
    "SERVICE_TOKEN",
    "GATEWAY_SERVICE_TOKEN",
    "ENCRYPTION_KEYS",
    "API_KEY_HASH_SECRET",
    "JWT_SIGNING_KEYS",
)
PUBLISHED = {"tenant-service": 8001, "gateway": 8080, "notes": 8002}
HEALTH_PATHS = {"tenant-service": "/healthz", "gateway": "/_gateway/healthz", "notes": "/healthz"}
MODULES = {"tenant-service": "tenant_service", "gateway": "gateway", "notes": "notes_app"}
PG_CLIENT_ARGS = ("PG_CLIENT_VERSION", "PG_CLIENT_REPO")


# ------------------------------------------------------------------------------------------------ compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def test_compose_has_the_whole_stack(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {*APPS, *BACKING, *ONE_SHOT}
    # The gateway's default upstream is the notes app: it is in the default profile, like everything else.
    for name, service in services.items():
        assert not service.get("profiles"), f"{name} must start with a plain `make up`"


@pytest.mark.parametrize("name", [*APPS, *BACKING])
def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]], name: str) -> None:
    check = services[name].get("healthcheck")
    assert check, f"{name} has no healthcheck"
    assert not check.get("disable"), name
    test = check["test"]
    assert isinstance(test, list)
    assert test[0] in {"CMD", "CMD-SHELL"}
    for key in ("interval", "timeout", "retries"):
        assert key in check, f"{name} healthcheck lacks {key}"
    if name in APPS:
        # slim images have no curl: the check is Python's urllib against the real health endpoint
        command = " ".join(test[1:])
        assert test[1] == "python"
        assert "urllib" in command
        assert f"127.0.0.1:{PUBLISHED[name]}{HEALTH_PATHS[name]}" in command


def test_backing_services_have_volumes(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    named = set(compose.get("volumes") or {})
    for name, path in (("postgres", "/var/lib/postgresql/data"), ("redis", "/data")):
        mounts = services[name]["volumes"]
        assert any(m.split(":")[0] in named and m.split(":")[1] == path for m in mounts), name


def test_migrate_is_one_shot_and_runs_the_tenant_service_image(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate.get("restart", "no") == "no"
    assert "ports" not in migrate
    assert migrate["build"]["target"] == "tenant-service"
    assert migrate["image"] == services["tenant-service"]["image"]
    assert migrate["environment"] == services["tenant-service"]["environment"]
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}


@pytest.mark.parametrize("name", APPS)
def test_apps_wait_for_migration_and_healthy_dependencies(services: dict[str, dict[str, Any]], name: str) -> None:
    depends = services[name]["depends_on"]
    assert isinstance(depends, dict), "depends_on must use the long form with conditions"
    assert depends.get("migrate") == {"condition": "service_completed_successfully"}
    assert "redis" in depends
    for dependency, spec in depends.items():
        if dependency != "migrate":
            assert spec == {"condition": "service_healthy"}, f"{name} → {dependency}"
    if name != "tenant-service":
        assert depends["tenant-service"] == {"condition": "service_healthy"}
    else:
        assert depends["postgres"] == {"condition": "service_healthy"}


def test_dependency_graph_has_no_cycle(services: dict[str, dict[str, Any]]) -> None:
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(name: str) -> None:
        assert name not in visiting, f"dependency cycle through {name}"
        if name in done:
            return
        visiting.add(name)
        for dependency in services[name].get("depends_on") or {}:
            assert dependency in services, f"{name} depends on unknown {dependency}"
            visit(dependency)
        visiting.discard(name)
        done.add(name)

    for name in services:
        visit(name)


@pytest.mark.parametrize("name", [*APPS, *BACKING, *ONE_SHOT])
def test_no_service_is_privileged(services: dict[str, dict[str, Any]], name: str) -> None:
    service = services[name]
    assert not service.get("privileged"), name
    assert not service.get("cap_add"), name
    assert service.get("network_mode") != "host", name
    assert service.get("pid") != "host", name
    assert "no-new-privileges:true" in (service.get("security_opt") or []), name
    for mount in service.get("volumes") or []:
        assert "docker.sock" not in str(mount), name
    if name in APPS or name in ONE_SHOT:
        assert service.get("user") in (None, "10001", "10001:10001"), "the image's non-root user must not be overridden"
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name


def test_ports_bind_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    published: dict[str, int] = {}
    for name, service in services.items():
        for port in service.get("ports") or []:
            assert isinstance(port, str), f"{name}: use the short string form 127.0.0.1:host:container"
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
            published[name] = int(port.rsplit(":", 1)[1])
    assert published == PUBLISHED, "tenant-service, gateway and notes are published; Postgres and Redis are not"


def _default_image(service: dict[str, Any]) -> str:
    """The service's image as a user gets it: compose's interpolation with nothing set."""
    image, missing = _interpolate(service["image"], {})
    assert not missing
    return image


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = _default_image(service)
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: image {image!r} has no tag"
        assert "latest" not in tag, f"{name}: {image!r}"
        if "build" not in service:
            # third-party images: an exact version (major.minor at least), not a floating major
            assert re.match(r"^\d+\.\d+(\.\d+)?-alpine$", tag), f"{name}: pin {image!r} to an exact version"
        else:
            assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile"
            assert service["build"]["target"] in APPS


def test_postgres_and_redis_versions_meet_the_contract(services: dict[str, dict[str, Any]]) -> None:
    pg_major = int(_default_image(services["postgres"]).split(":")[1].split(".")[0])
    redis_major = int(_default_image(services["redis"]).split(":")[1].split(".")[0])
    assert pg_major >= 15
    assert redis_major >= 7


def test_base_images_can_be_replaced_without_editing_files(services: dict[str, dict[str, Any]]) -> None:
    # The container tests run the stack on stand-ins built from Debian packages (no registry is reachable there).
    for name, variable in (("postgres", "POSTGRES_IMAGE"), ("redis", "REDIS_IMAGE")):
        assert _interpolate(services[name]["image"], {variable: "standin:1"})[0] == "standin:1", name
    for name in (*APPS, *ONE_SHOT):
        build = services[name]["build"]
        # Bare names: passed when set, so the Dockerfile's own defaults stay the defaults. Only the tenant-service
        # image (also migrate's) carries the PostgreSQL client tools.
        args = ["PYTHON_IMAGE", *(PG_CLIENT_ARGS if build["target"] == "tenant-service" else ())]
        assert build.get("args") == args, name
        assert _interpolate(build["network"], {})[0] == "default", name
        assert _interpolate(build["network"], {"BUILD_NETWORK": "host"})[0] == "host", name


def test_required_secrets_fail_clearly_when_missing() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    for secret in REQUIRED_SECRETS:
        uses = re.findall(r"\$\{" + secret + r"(?![A-Z0-9_])(:?[?\-+]?)([^}]*)\}", text)
        assert uses, f"{secret} is not used in compose"
        for operator, message in uses:
            assert operator == ":?", f"{secret} must be written ${{{secret}:?message}}"
            assert message.strip(), f"{secret} needs an explanatory message"
    # nothing secret is written into the file itself
    assert not re.search(r"(?i)(password|token|secret|keys)\s*:\s*['\"]?[A-Za-z0-9_\-]{12,}['\"]?\s*$", text, re.M)
    assert "env_file" not in yaml.safe_load(text)["services"]["gateway"], "containers get only what they read"


def test_listen_addresses_are_set_for_containers(services: dict[str, dict[str, Any]]) -> None:
    assert services["tenant-service"]["environment"]["TENANT_SERVICE_HOST"] == "0.0.0.0"
    assert services["gateway"]["environment"]["GATEWAY_HOST"] == "0.0.0.0"
    assert services["notes"]["environment"]["APP_HOST"] == "0.0.0.0"
    # service-to-service addresses use compose's DNS names, not loopback
    assert services["gateway"]["environment"]["TENANT_SERVICE_URL"] == "http://tenant-service:8001"
    assert services["gateway"]["environment"]["DEFAULT_UPSTREAM"] == "http://notes:8002"
    assert services["notes"]["environment"]["GATEWAY_JWKS_URL"] == "http://gateway:8080/_gateway/jwks.json"
    assert "@postgres:5432/" in services["tenant-service"]["environment"]["DATABASE_URL"]


_INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?:(:?[-?])([^}]*))?\}")


def _interpolate_values(node: Any, env: dict[str, str], missing: list[str]) -> Any:
    """Compose interpolates the parsed file's values (comments never), recursively."""
    if isinstance(node, dict):
        return {k: _interpolate_values(v, env, missing) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate_values(v, env, missing) for v in node]
    if isinstance(node, str):
        text, lacking = _interpolate(node, env)
        missing.extend(lacking)
        return text
    return node


def _interpolate(text: str, env: dict[str, str]) -> tuple[str, list[str]]:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?message} substitution; returns the text and the missing names."""
    missing: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        value = env.get(name)
        if op in (":?", "?") and not value:
            missing.append(name)
            return ""
        if op in (":-", "-") and not value:
            return arg
        return value or ""

    return _INTERPOLATION.sub(substitute, text), missing


def _env_file(path: Any) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_env_example_satisfies_every_required_variable_of_the_compose_file() -> None:
    missing: list[str] = []
    rendered = _interpolate_values(
        yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8")), _env_file(ROOT / ".env.example"), missing
    )
    assert missing == []
    assert "$" not in str(rendered["services"]["tenant-service"]["environment"])


def test_a_missing_secret_is_named_by_the_compose_file(tmp_path: Any) -> None:
    partial = tmp_path / "partial.env"
    partial.write_text("POSTGRES_PASSWORD=x\n", encoding="utf-8")
    missing: list[str] = []
    _interpolate_values(yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8")), _env_file(partial), missing)
    assert {"ADMIN_TOKEN", "ENCRYPTION_KEYS", "JWT_SIGNING_KEYS"} <= set(missing)


# --------------------------------------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def _parse_dockerfile() -> tuple[dict[str, str], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(DOCKERFILE.read_text(encoding="utf-8")):
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, flags=re.IGNORECASE)
            assert match, line
            base = match.group(1)
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), base)
            stages.append(Stage(name=(match.group(2) or str(len(stages))).lower(), base=base))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede the first FROM: {line}"
            name, _, default = args.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append((keyword, args))
    return global_args, stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return {stage.name: stage for stage in _parse_dockerfile()[1]}


def _lineage(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    chain = [stages[name]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def test_every_service_has_a_final_stage(stages: dict[str, Stage]) -> None:
    for target in APPS:
        assert target in stages, f"no `--target {target}`"


def test_base_images_are_pinned(stages: dict[str, Stage]) -> None:
    external = {stage.base for stage in stages.values() if stage.base not in stages}
    assert external, "no base image"
    for base in external:
        assert "$" not in base, f"unresolved base {base!r}"
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), (
            f"base {base!r} must be an exact python:3.11.x-slim-bookworm tag"
        )
    # builder and final stages share one base, so the venv's interpreter path is the same in both
    assert len(external) == 1


def test_builder_installs_a_pinned_uv_and_syncs_frozen(stages: dict[str, Stage]) -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"ARG UV_VERSION=\d+\.\d+\.\d+", text)
    assert 'pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"' in text
    assert "UV_PROJECT_ENVIRONMENT=/app/.venv" in text
    for target, package in (
        ("tenant-service", "tenantry-tenant-service"),
        ("gateway", "tenantry-gateway"),
        ("notes", "tenantry-notes"),
    ):
        runs = _lineage(stages, f"build-{target}")[0].all("RUN")
        assert any(f"uv sync --frozen --no-dev --no-install-workspace --package {package}" in r for r in runs)
        assert any(f"uv sync --frozen --no-dev --no-editable --package {package}" in r for r in runs)
    # lock and pyproject files come before the sources, so dependencies are cached across source changes
    assert text.index("COPY pyproject.toml uv.lock") < text.index("COPY libs/common/src")


def test_the_base_image_is_the_only_thing_taken_from_a_registry() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    # A `# syntax=` directive makes BuildKit fetch a frontend image; the builder's own frontend reads this file.
    assert not re.search(r"(?im)^#\s*syntax\s*=", text)
    # The interpreter comes from PYTHON_IMAGE's PATH, so a base with Python elsewhere (a stand-in) works too.
    assert re.search(r"UV_PYTHON=python3\b", text)
    assert "/usr/local/bin/python" not in text


@pytest.mark.parametrize("target", APPS)
def test_final_stage_runs_as_non_root(stages: dict[str, Stage], target: str) -> None:
    users = stages[target].all("USER")
    assert users, f"{target} sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user == "10001"
    runtime_runs = " ".join(run for stage in _lineage(stages, target) for run in stage.all("RUN"))
    assert "--uid 10001" in runtime_runs


@pytest.mark.parametrize("target", APPS)
def test_final_stage_has_healthcheck_stopsignal_and_entrypoint(stages: dict[str, Stage], target: str) -> None:
    stage = stages[target]
    (healthcheck,) = stage.all("HEALTHCHECK")
    assert "urllib.request" in healthcheck
    assert HEALTH_PATHS[target] in healthcheck
    assert "curl" not in healthcheck
    assert stage.all("STOPSIGNAL") == ["SIGTERM"]
    assert stage.all("EXPOSE") == [str(PUBLISHED[target])]
    (entrypoint,) = stage.all("ENTRYPOINT")
    assert entrypoint == f'["python", "-m", "{MODULES[target]}"]'
    envs = " ".join(stage.all("ENV"))
    assert "_HOST=0.0.0.0" in envs


def _installs_the_postgresql_client(run: str) -> bool:
    return "postgresql-client-${PG_CLIENT_VERSION}" in run


@pytest.mark.parametrize("target", APPS)
def test_final_stage_has_no_build_tools_and_no_secrets(stages: dict[str, Stage], target: str) -> None:
    chain = _lineage(stages, target)
    assert all(not stage.name.startswith(("builder", "build-")) for stage in chain), "final stage built on builder"
    for stage in chain:
        for run in stage.all("RUN"):
            tools = ["apk add", "pip install", "uv ", "gcc", "build-essential", "curl", "wget"]
            # The one package installation of a final stage: the tenant-service's pg_dump and pg_restore.
            if not (stage.name == "tenant-service" and _installs_the_postgresql_client(run)):
                tools.append("apt-get install")
            for tool in tools:
                assert tool not in run, f"{stage.name} runs {tool!r}"
        for copy in stage.all("COPY"):
            # only the builder's virtualenv, never files from the build context
            assert copy.startswith("--from=build-"), f"{stage.name}: COPY {copy}"
            assert copy.endswith("/app/.venv /app/.venv"), copy
    for stage in chain:
        for env in stage.all("ENV") + stage.all("ARG"):
            assert not re.search(r"(TOKEN|SECRET|PASSWORD|_KEYS)\s*=", env), f"{stage.name}: {env}"


def test_the_tenant_service_image_gets_a_postgresql_client_no_older_than_the_compose_server(
    stages: dict[str, Stage], services: dict[str, dict[str, Any]]
) -> None:
    global_args, _ = _parse_dockerfile()
    # pg_dump refuses a server newer than itself: the default client must serve the default server.
    server_major = int(_default_image(services["postgres"]).split(":")[1].split(".")[0])
    assert int(global_args["PG_CLIENT_VERSION"]) >= server_major
    assert global_args["PG_CLIENT_REPO"] == "pgdg", "by default from apt.postgresql.org, which has every major"
    stage = stages["tenant-service"]
    assert {arg.partition("=")[0] for arg in stage.all("ARG")} >= set(PG_CLIENT_ARGS)
    (install,) = [run for run in stage.all("RUN") if _installs_the_postgresql_client(run)]
    # Small: no recommended packages, no apt lists or downloaded packages left behind, and the tools work.
    assert "apt-get install -y --no-install-recommends" in install
    assert "rm -rf /var/lib/apt/lists/*" in install
    assert "rm -f ./*.deb" in install
    assert "apt-get clean" in install
    assert "pg_dump --version" in install
    assert "pg_restore --version" in install
    # Before the virtualenv's COPY, so that a change of code does not install the client again.
    assert stage.instructions.index(("RUN", install)) < [kind for kind, _ in stage.instructions].index("COPY")
    for other in ("runtime", "gateway", "notes"):
        assert not any("postgresql" in run for run in stages[other].all("RUN")), other


def test_no_remote_add_and_no_env_files_copied(stages: dict[str, Stage]) -> None:
    for stage in stages.values():
        for add in stage.all("ADD"):
            assert not re.search(r"https?://", add), f"{stage.name}: ADD {add}"
        for copy in stage.all("COPY") + stage.all("ADD"):
            assert ".env" not in copy, f"{stage.name} copies an env file: {copy}"
            assert not re.match(r"^\.\s", copy), f"{stage.name} copies the whole context: {copy}"


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    entries = {
        line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines() if not line.startswith("#")
    }
    for entry in ("**/.venv", "**/.run", "**/.git", "**/.env", "**/__pycache__", "**/.pytest_cache", "tests"):
        assert entry in entries, f".dockerignore lacks {entry}"
    assert not any(entry.startswith("!") and ".env" in entry for entry in entries)
