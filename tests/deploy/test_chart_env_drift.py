"""Env drift, the Helm side: every environment variable the code reads can be set through the chart's values.

"Reachable" means rendered into a container's environment in the default or production scenario: directly
(`env`), through the component's ConfigMap (`envFrom`), or from the Secret (`secretKeyRef`; with existingSecret
the operator provides the key). The other direction holds too: the chart sets nothing the code does not read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from envscan import deprecated_env_vars, env_vars_read_by_code

from support.chart import SCENARIOS as CHART_SCENARIOS
from support.chart import of_kind, pod_templates, render, template

SCENARIOS = ("default", "production")

# Rendered only when their value is set (empty means "the process's own default"): proven reachable by
# rendering the default scenario plus these values.
ONLY_WHEN_SET: dict[str, dict[str, Any]] = {
    "TENANT_MIGRATIONS_DIR": {"tenantService": {"config": {"tenantMigrationsDir": "/srv/tenant-migrations"}}},
    "PG_BIN_DIR": {"backups": {"pgBinDir": "/usr/lib/postgresql/17/bin"}},
    "EXTRA_DATABASE_SERVERS": {"extraDatabaseServers": [{"name": "eu", "url": "postgresql://u:p@h:5432/postgres"}]},
}

# Read by the code, deliberately not settable through the chart, each with the reason.
NOT_IN_CHART: dict[str, str] = {
    "JWT_SIGNING_KEYS_FILE": "the chart passes JWT_SIGNING_KEYS from its Secret; a changed Secret rolls the pods "
    "(checksum/secret annotation), one at a time, which is the chart's rotation without downtime",
    # Only the listen address and port matter in a pod and they are fixed by the chart (0.0.0.0 and the
    # container port); everything else the code reads is reachable.
}


def _env_in_containers(objects: tuple[dict[str, Any], ...]) -> set[str]:
    config_maps = {c["metadata"]["name"]: set(c.get("data", {})) for c in of_kind(objects, "ConfigMap")}
    secrets = {s["metadata"]["name"]: set(s.get("data", {})) for s in of_kind(objects, "Secret")}
    names: set[str] = set()
    for _, pod in pod_templates(objects):
        for container in pod["containers"]:
            names |= {entry["name"] for entry in container.get("env", [])}
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    names |= config_maps[source["configMapRef"]["name"]]
                if "secretRef" in source:
                    names |= secrets.get(source["secretRef"]["name"], set())
    return names


def _reachable() -> set[str]:
    return set().union(*(_env_in_containers(render(scenario)) for scenario in SCENARIOS))


def test_variables_rendered_only_when_set_are_reachable(tmp_path: Path) -> None:
    for name, values in ONLY_WHEN_SET.items():
        extra = tmp_path / f"{name}.yaml"
        extra.write_text(yaml.safe_dump(values))
        done = template(CHART_SCENARIOS["default"], extra)
        assert done.returncode == 0, done.stderr
        objects = tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)
        assert name in _env_in_containers(objects), f"{name} not rendered with {values}"


def test_every_variable_the_code_reads_is_reachable_through_chart_values() -> None:
    read = env_vars_read_by_code()
    assert read, "the scanner found no environment reads at all"
    missing = sorted(set(read) - _reachable() - set(ONLY_WHEN_SET) - set(NOT_IN_CHART))
    assert missing == [], "not settable through charts/tenantry: " + ", ".join(
        f"{name} (read in {', '.join(sorted(read[name]))})" for name in missing
    )


def test_the_chart_sets_only_variables_the_code_reads() -> None:
    stale = sorted(_reachable() - set(env_vars_read_by_code()))
    assert stale == [], f"charts/tenantry sets variables no code reads: {stale}"


def test_the_chart_sets_no_deprecated_name() -> None:
    assert deprecated_env_vars(), "the scanner found no renamed setting"
    assert sorted(_reachable() & set(deprecated_env_vars())) == []


def test_exclusions_are_still_needed() -> None:
    read = set(env_vars_read_by_code())
    reachable = _reachable()
    assert [name for name in NOT_IN_CHART if name not in read or name in reachable] == []
    assert [name for name in ONLY_WHEN_SET if name not in read or name in reachable] == []
