"""Drift: every environment variable the product's code reads is documented and reaches the compose stack.

The list of variables comes from the code itself (:mod:`envscan`, an ``ast`` scan), so a new setting that is not
documented, or not passed to its container, fails here. The Helm chart's part of the check lives with the chart.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from envscan import (
    EXCLUDED,
    ROOT,
    deprecated_aliases_in_source,
    deprecated_env_vars,
    env_vars_in_source,
    env_vars_read_by_code,
)

COMPOSE_FILE = ROOT / "docker-compose.tenant.yml"
ENV_EXAMPLE = ROOT / ".env.example"

# Which compose services run the code of a source tree (libs/common runs everywhere).
TREE_TO_SERVICES: dict[str, tuple[str, ...]] = {
    "services/tenant-service/": ("tenant-service", "migrate"),
    "services/gateway/": ("gateway",),
    "services/notes/": ("notes",),
    "libs/app/": ("notes",),
    "libs/common/": ("tenant-service", "migrate", "gateway", "notes"),
}

CODE_VARS = env_vars_read_by_code()
DEPRECATED_VARS = deprecated_env_vars()

# Read by a service's code, deliberately not passed to that compose service, each with the reason.
NOT_PASSED: dict[tuple[str, str], str] = {
    ("SERVICE_TOKEN", "gateway"): "the gateway's legacy fallback when GATEWAY_SERVICE_TOKEN is unset; compose gives "
    "the gateway its own token (directory:read), never the apps' token (credentials:vend)",
}


def _documented_vars() -> set[str]:
    """Variables named in backticks on a table row of docs/*.md (the configuration tables)."""
    names: set[str] = set()
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for line in doc.read_text(encoding="utf-8").splitlines():
            if line.lstrip().startswith("|"):
                names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", line))
    return names


def _env_example_vars() -> set[str]:
    names: set[str] = set()
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\s*([A-Z][A-Z0-9_]*)=", line)
        if match:
            names.add(match.group(1))
    return names


def _compose_environment() -> dict[str, set[str]]:
    """Compose service → names its ``environment`` sets (mapping or list form)."""
    doc = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    result: dict[str, set[str]] = {}
    for name, service in doc["services"].items():
        env = service.get("environment") or {}
        if isinstance(env, dict):
            result[name] = set(env)
        else:
            result[name] = {item.split("=", 1)[0] for item in env}
    return result


def _services_for(path: str) -> tuple[str, ...]:
    for prefix, services in TREE_TO_SERVICES.items():
        if path.startswith(prefix):
            return services
    raise AssertionError(f"{path}: unknown source tree; add it to TREE_TO_SERVICES")


def test_scan_finds_the_well_known_variables() -> None:
    # A scanner that silently finds nothing would make every drift check pass.
    for name in ("DATABASE_URL", "ADMIN_TOKEN", "ADMIN_TOKENS", "REDIS_URL", "JWT_SIGNING_KEYS", "APP_PORT"):
        assert name in CODE_VARS, name
    assert len(CODE_VARS) >= 40


def test_scan_understands_every_read_form() -> None:
    source = """
import os
from os import environ
from typing import Final
from tenantry_common.settings import env_int, env_name, env_str, named_tokens
_NAME: Final = "FROM_CONSTANT"
a = env_str("HELPER", "x")
b = named_tokens("LIST_FORM", "SINGLE_FORM", "admin")
c = os.environ.get("ENVIRON_GET")
d = os.getenv("GETENV")
e = os.environ["SUBSCRIPT"]
f = os.environ.get(_NAME, "")
g = environ.get("BARE_ENVIRON")
h = os.environ.get(some_variable)
i = env_int(env_name("RENAMED", deprecated="OLD_NAME"), 1)
"""
    assert deprecated_aliases_in_source(source) == {"OLD_NAME": {"RENAMED"}}
    assert env_vars_in_source(source) == {
        "RENAMED",
        "HELPER",
        "LIST_FORM",
        "SINGLE_FORM",
        "ENVIRON_GET",
        "GETENV",
        "SUBSCRIPT",
        "FROM_CONSTANT",
        "BARE_ENVIRON",
    }


def test_exclusions_are_not_product_configuration() -> None:
    # Each exclusion carries its reason; none of them may be something the containers are configured with.
    compose_vars = set().union(*_compose_environment().values())
    for name, reason in EXCLUDED.items():
        assert reason.strip(), name
        assert name not in compose_vars, f"{name} is excluded from the drift check ({reason}) but set in compose"
        assert name not in _env_example_vars(), name


@pytest.mark.parametrize("name", sorted(CODE_VARS))
def test_variable_is_documented(name: str) -> None:
    assert name in _documented_vars(), (
        f"{name} is read by {sorted(CODE_VARS[name])} but is in no configuration table of docs/*.md"
    )


@pytest.mark.parametrize("name", sorted(CODE_VARS))
def test_variable_reaches_its_compose_services(name: str) -> None:
    environment = _compose_environment()
    if name in _env_example_vars() and name not in {v for s in environment.values() for v in s}:
        pytest.fail(f"{name} is in .env.example but compose passes it to no container")
    missing = []
    for path in sorted(CODE_VARS[name]):
        for service in _services_for(path):
            if service not in environment:
                missing.append(f"{service} (no such compose service)")
            elif name not in environment[service] and (name, service) not in NOT_PASSED:
                missing.append(f"{service} (reads it in {path})")
    assert not missing, f"{name} is not set in docker-compose.tenant.yml for: {', '.join(sorted(set(missing)))}"


def test_deliberate_omissions_are_still_needed() -> None:
    environment = _compose_environment()
    for (name, service), reason in NOT_PASSED.items():
        assert reason.strip()
        assert name not in environment[service], f"{name} is passed to {service} after all: drop it from NOT_PASSED"
        assert any(service in _services_for(path) for path in CODE_VARS.get(name, ())), (
            f"{service} no longer reads {name}"
        )


def test_scan_finds_the_renamed_settings() -> None:
    assert deprecated_env_vars() == {
        "REDIS_TIMEOUT": {"TENANT_SERVICE_REDIS_TIMEOUT", "GATEWAY_REDIS_TIMEOUT"},
        "MAX_REQUEST_BODY_BYTES": {"TENANT_SERVICE_MAX_REQUEST_BODY_BYTES", "GATEWAY_MAX_REQUEST_BODY_BYTES"},
    }


@pytest.mark.parametrize("old", sorted(DEPRECATED_VARS))
def test_a_deprecated_name_is_documented_but_set_nowhere(old: str) -> None:
    # Still honoured by the code for one release, so the docs say what replaced it; compose and .env.example use
    # only the new names (the chart's side is in test_chart_env_drift).
    assert old in _documented_vars(), f"{old} (deprecated) is in no configuration table of docs/*.md"
    assert old not in CODE_VARS, f"{old} is read under its old name somewhere without the fallback helper"
    assert not DEPRECATED_VARS[old] - set(CODE_VARS)
    setting = {service for service, names in _compose_environment().items() if old in names}
    assert not setting, f"docker-compose.tenant.yml still sets the deprecated {old} for {sorted(setting)}"
    assert old not in _env_example_vars()


def test_env_example_holds_only_placeholders() -> None:
    # Every required secret is present, and none has a value that looks real.
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    values = dict(match.groups() for match in re.finditer(r"^([A-Z][A-Z0-9_]*)=(.*)$", text, flags=re.MULTILINE))
    secrets = ("POSTGRES_PASSWORD", "ADMIN_TOKEN", "SERVICE_TOKEN", "GATEWAY_SERVICE_TOKEN", "ENCRYPTION_KEYS",
               "API_KEY_HASH_SECRET")  # fmt: skip
    for secret in secrets:
        assert secret in values, secret
        assert values[secret].startswith("change-me"), f"{secret} in .env.example must be a placeholder"
    assert values["JWT_SIGNING_KEYS"].startswith("change-me")
    assert "python -m tenant_service generate-key" in text
    assert "generate_signing_key" in text


def test_env_file_is_git_ignored() -> None:
    # .env holds the real secrets; only .env.example is committed.
    ignored = Path(ROOT / ".gitignore").read_text(encoding="utf-8").split()
    assert ".env" in ignored
