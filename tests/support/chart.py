"""Rendering the Tenantry Helm chart for the deploy tests: `helm template` / `helm lint` with a scenario file."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from support.helm_tool import helm_binary

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tenantry"
SCENARIOS: dict[str, Path] = {p.name.removesuffix("-values.yaml"): p for p in sorted(CHART.glob("ci/*-values.yaml"))}
RELEASE = "tenantry"
NAMESPACE = "tenantry"
HELM_TIMEOUT_SECONDS = 60


def helm(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run helm (never raises on failure: callers assert on returncode and output)."""
    return subprocess.run(
        [str(helm_binary()), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=HELM_TIMEOUT_SECONDS,
        check=False,
    )


def template(*values_files: Path) -> subprocess.CompletedProcess[str]:
    args: list[str | Path] = ["template", RELEASE, CHART, "--namespace", NAMESPACE]
    for values in values_files:
        args += ["-f", values]
    return helm(*args)


def lint(*values_files: Path) -> subprocess.CompletedProcess[str]:
    args: list[str | Path] = ["lint", "--strict", CHART, "--namespace", NAMESPACE]
    for values in values_files:
        args += ["-f", values]
    return helm(*args)


@cache
def render(scenario: str) -> tuple[dict[str, Any], ...]:
    """Every object `helm template` renders for one ci/ scenario (hooks included)."""
    done = template(SCENARIOS[scenario])
    assert done.returncode == 0, f"helm template failed for {scenario}:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def of_kind(objects: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def pod_templates(objects: tuple[dict[str, Any], ...]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec) of every Deployment and Job."""
    for obj in objects:
        if obj["kind"] in {"Deployment", "Job"}:
            yield obj, obj["spec"]["template"]["spec"]


def component(obj: dict[str, Any]) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def documented_values(values_yaml: str) -> dict[str, str]:
    """Value path → its ``# --`` description, read from values.yaml (two-space indentation, like the chart's)."""
    documented: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    for line in values_yaml.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped.removeprefix("# --").strip()]
            continue
        if stripped.startswith("#") and pending:
            pending.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"^( *)([A-Za-z][\w-]*):", line)
        if not match:
            if not stripped.startswith("-"):
                pending = []
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        if pending:
            documented[".".join(key for _, key in stack)] = " ".join(pending)
        pending = []
    return documented


def value_leaves(node: Any, prefix: str = "") -> list[str]:
    """Paths of the scalars, lists and empty maps of a values tree."""
    if isinstance(node, dict) and node:
        return [leaf for key, child in node.items() for leaf in value_leaves(child, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]
