"""The Helm chart, validated offline: lint, render every ci/ scenario, check every object against the Kubernetes
schemas (kubernetes-validate), and hold the chart to what operators rely on (hardening, probes, secrets, hooks).

helm comes from support.helm_tool (HELM, PATH, or the pinned npm package); no cluster is needed.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from support.chart import (
    CHART,
    SCENARIOS,
    component,
    documented_values,
    lint,
    of_kind,
    pod_templates,
    render,
    template,
    value_leaves,
)

KUBERNETES_VERSION = "1.30.0"
# Kinds kubernetes-validate cannot know (CRDs), skipped on purpose, each with the reason.
NOT_VALIDATED: dict[tuple[str, str], str] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "Prometheus Operator CRD, not a built-in Kubernetes kind",
}
EXISTING_SECRET = "tenantry-credentials"
PROBES: dict[str, tuple[str, str, int]] = {
    # component: (liveness path, readiness path, container port)
    "tenant-service": ("/healthz", "/readyz", 8001),
    "gateway": ("/_gateway/healthz", "/_gateway/readyz", 8080),
    "notes": ("/healthz", "/healthz", 8002),
}
LISTEN_HOST_ENV = {"tenant-service": "TENANT_SERVICE_HOST", "gateway": "GATEWAY_HOST", "notes": "APP_HOST"}
SECRET_ENV = {
    "ADMIN_TOKEN",
    "ADMIN_TOKENS",
    "SERVICE_TOKEN",
    "SERVICE_TOKENS",
    "GATEWAY_SERVICE_TOKEN",
    "ENCRYPTION_KEYS",
    "API_KEY_HASH_SECRET",
    "JWT_SIGNING_KEYS",
    "DATABASE_URL",
    "TENANT_DATABASE_URL",
    "REDIS_URL",
}
# PASSWORD_HASH_* are the argon2id cost settings of tenant users, not secrets.
SECRET_LOOKING_KEY = re.compile(r"PASSWORD(?!_HASH_)|SECRET|_TOKENS?$|_KEYS?$|DATABASE_URL|REDIS_URL")
CREDENTIAL_IN_URL = re.compile(r"://[^/\s@]+:[^/\s@]+@")

scenarios = pytest.mark.parametrize("scenario", sorted(SCENARIOS))


def test_the_chart_ships_the_three_scenarios() -> None:
    assert {"default", "existing-secret", "production"} <= set(SCENARIOS)


@scenarios
def test_helm_lint_strict_passes(scenario: str) -> None:
    done = lint(SCENARIOS[scenario])
    assert done.returncode == 0, done.stdout + done.stderr


@scenarios
def test_every_rendered_object_matches_the_kubernetes_schema(scenario: str) -> None:
    objects = render(scenario)
    assert objects
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in NOT_VALIDATED:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{scenario}: {obj['kind']}/{obj['metadata']['name']}: {error}")


@scenarios
def test_every_container_is_hardened_and_bounded(scenario: str) -> None:
    for workload, pod in pod_templates(render(scenario)):
        name = f"{scenario}: {workload['kind']}/{workload['metadata']['name']}"
        pod_ctx = pod.get("securityContext", {})
        assert pod.get("automountServiceAccountToken") is False, name
        for container in pod["containers"]:
            ctx = {**pod_ctx, **container.get("securityContext", {})}
            assert ctx.get("runAsNonRoot") is True, name
            assert ctx.get("runAsUser") == 10001, name
            assert ctx.get("readOnlyRootFilesystem") is True, name
            assert ctx.get("allowPrivilegeEscalation") is False, name
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], name
            assert ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{name}: {bound}"
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp, f"{name}: no writable /tmp"
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            assert "emptyDir" in volumes[tmp[0]["name"]], name


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


@scenarios
def test_deployments_probe_the_real_health_endpoints_and_listen_on_all_interfaces(scenario: str) -> None:
    deployments = of_kind(render(scenario), "Deployment")
    assert deployments
    for deployment in deployments:
        which = component(deployment)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        live_path, ready_path, port = PROBES[which]
        for probe, path in (("livenessProbe", live_path), ("readinessProbe", ready_path)):
            get = container[probe]["httpGet"]
            assert (get["path"], _port_number(container, get["port"])) == (path, port), f"{which} {probe}"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env[LISTEN_HOST_ENV[which]] == "0.0.0.0", which


@scenarios
def test_no_configmap_holds_a_secret(scenario: str) -> None:
    for config_map in of_kind(render(scenario), "ConfigMap"):
        for key, value in config_map.get("data", {}).items():
            assert key not in SECRET_ENV, f"{config_map['metadata']['name']}: {key}"
            assert not SECRET_LOOKING_KEY.search(key), f"{config_map['metadata']['name']}: {key}"
            assert not CREDENTIAL_IN_URL.search(value), f"{config_map['metadata']['name']}: {key}"


def test_inline_secrets_appear_only_in_secrets() -> None:
    inline = yaml.safe_load(SCENARIOS["default"].read_text())["secrets"]
    secrets = of_kind(render("default"), "Secret")
    assert secrets
    for obj in render("default"):
        if obj["kind"] == "Secret":
            continue
        text = yaml.safe_dump(obj)
        for key, value in inline.items():
            assert value not in text, f"secrets.{key} leaks into {obj['kind']}/{obj['metadata']['name']}"


def test_pods_read_secrets_from_the_chart_secret_by_default() -> None:
    objects = render("default")
    names = {s["metadata"]["name"] for s in of_kind(objects, "Secret")}
    for workload, pod in pod_templates(objects):
        for container in pod["containers"]:
            refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
            assert refs, workload["metadata"]["name"]
            assert refs <= names, workload["metadata"]["name"]


def test_the_migration_job_is_a_pre_install_and_pre_upgrade_hook() -> None:
    objects = render("default")
    (job,) = of_kind(objects, "Job")
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert "helm.sh/hook-weight" in annotations
    assert set(annotations["helm.sh/hook-delete-policy"].split(",")) == {"before-hook-creation", "hook-succeeded"}
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"][-3:] == ["-m", "tenant_service", "migrate"]
    # At pre-install the release's own Secret does not exist yet: the Job reads a hook Secret made before it.
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    (hook_secret,) = [s for s in of_kind(objects, "Secret") if s["metadata"]["name"] in refs]
    secret_annotations = hook_secret["metadata"]["annotations"]
    assert secret_annotations["helm.sh/hook"] == annotations["helm.sh/hook"]
    assert int(secret_annotations["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])


@pytest.mark.parametrize("scenario", ["existing-secret", "production"])
def test_with_existing_secret_no_secret_is_rendered_and_pods_use_it(scenario: str) -> None:
    objects = render(scenario)
    assert of_kind(objects, "Secret") == []
    for workload, pod in pod_templates(objects):
        for container in pod["containers"]:
            refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
            assert refs == {EXISTING_SECRET}, workload["metadata"]["name"]


def test_gateway_replicas_share_signing_keys_and_redis_from_the_secret() -> None:
    (gateway,) = [d for d in of_kind(render("default"), "Deployment") if component(d) == "gateway"]
    assert gateway["spec"]["replicas"] >= 2
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    from_secret = {e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert {"JWT_SIGNING_KEYS", "REDIS_URL", "API_KEY_HASH_SECRET"} <= from_secret


def _env_names(container: dict[str, Any]) -> set[str]:
    return {entry["name"] for entry in container.get("env", [])}


@pytest.mark.parametrize("scenario", ["default", "existing-secret"])
def test_the_gateway_and_the_notes_app_hold_separate_scoped_service_tokens(scenario: str) -> None:
    objects = render(scenario)
    containers = {component(d): d["spec"]["template"]["spec"]["containers"][0] for d in of_kind(objects, "Deployment")}
    # The gateway gets its own token and never the apps' one; the notes app never the gateway's.
    assert "GATEWAY_SERVICE_TOKEN" in _env_names(containers["gateway"])
    assert "SERVICE_TOKEN" not in _env_names(containers["gateway"])
    assert "SERVICE_TOKEN" in _env_names(containers["notes"])
    assert "GATEWAY_SERVICE_TOKEN" not in _env_names(containers["notes"])
    required = {
        e["name"]
        for e in containers["gateway"]["env"]
        if "secretKeyRef" in e.get("valueFrom", {}) and not e["valueFrom"]["secretKeyRef"].get("optional")
    }
    assert "GATEWAY_SERVICE_TOKEN" in required
    # The tenant-service knows both tokens, and the scopes: the notes app ("app") may only have credentials vended.
    assert {"SERVICE_TOKEN", "GATEWAY_SERVICE_TOKEN", "SERVICE_TOKENS"} <= _env_names(containers["tenant-service"])
    (config,) = [c for c in of_kind(objects, "ConfigMap") if component(c) == "tenant-service"]
    assert config["data"]["SERVICE_TOKEN_SCOPES"] == "app=credentials:vend"


def test_service_token_scopes_render_from_values(tmp_path: Path) -> None:
    scopes = {"app": ["credentials:vend"], "ops": ["directory:read", "credentials:vend"], "gateway": ["directory:read"]}
    values = _values_file(tmp_path, {"tenantService": {"config": {"serviceTokenScopes": scopes}}})
    done = template(SCENARIOS["default"], values)
    assert done.returncode == 0, done.stderr
    objects = tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)
    (config,) = [c for c in of_kind(objects, "ConfigMap") if component(c) == "tenant-service"]
    assert config["data"]["SERVICE_TOKEN_SCOPES"] == (
        "app=credentials:vend,gateway=directory:read,ops=directory:read+credentials:vend"
    )


def test_production_renders_autoscaling_disruption_budget_network_policy_ingress_and_monitoring() -> None:
    objects = render("production")
    production = yaml.safe_load(SCENARIOS["production"].read_text())
    base_domain = production["config"]["baseDomain"]

    (hpa,) = of_kind(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"].endswith("-gateway")
    (gateway,) = [d for d in of_kind(objects, "Deployment") if component(d) == "gateway"]
    assert "replicas" not in gateway["spec"], "the HPA owns the replica count"

    (pdb,) = of_kind(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"

    policies = {component(p): p for p in of_kind(objects, "NetworkPolicy")}
    assert set(policies) == {"gateway", "tenant-service"}  # notes is disabled
    sources = policies["tenant-service"]["spec"]["ingress"][0]["from"]
    allowed_pods = {
        s["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for s in sources if "podSelector" in s
    }
    assert allowed_pods == {"gateway", "notes", "migrate"}
    assert {"ipBlock": {"cidr": "10.99.0.0/24"}} in sources

    (ingress,) = of_kind(objects, "Ingress")
    hosts = [rule["host"] for rule in ingress["spec"]["rules"]]
    assert hosts[0] == f"*.{base_domain}"
    assert set(production["ingress"]["extraHosts"]) <= set(hosts)
    backends = {r["http"]["paths"][0]["backend"]["service"]["name"] for r in ingress["spec"]["rules"]}
    assert backends == {gateway["metadata"]["name"]}

    monitors = {component(m): m for m in of_kind(objects, "ServiceMonitor")}
    assert {c: m["spec"]["endpoints"][0]["path"] for c, m in monitors.items()} == {
        "tenant-service": "/metrics",
        "gateway": "/_gateway/metrics",
    }
    assert not [d for d in of_kind(objects, "Deployment") if component(d) == "notes"]


def _tenant_service(objects: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tenant-service's pod spec and its ConfigMap's data."""
    (deployment,) = [d for d in of_kind(objects, "Deployment") if component(d) == "tenant-service"]
    (config,) = [c for c in of_kind(objects, "ConfigMap") if component(c) == "tenant-service"]
    return deployment["spec"]["template"]["spec"], config["data"]


def _secret_refs(container: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"].get("optional", False))
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def test_backups_go_to_a_kept_volume_mounted_at_the_store_directory_by_default() -> None:
    objects = render("default")
    pod, config = _tenant_service(objects)
    assert config["BACKUP_STORE_URL"] == "file:///var/lib/tenantry/backups"
    (claim,) = of_kind(objects, "PersistentVolumeClaim")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    volumes = {v["name"]: v for v in pod["volumes"]}
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/var/lib/tenantry/backups"]
    assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    # Only the tenant-service stores backups: the migration Job mounts no claim.
    (job,) = of_kind(objects, "Job")
    assert not [v for v in job["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]


def test_backups_go_to_a_bucket_in_production_with_keys_from_the_existing_secret() -> None:
    objects = render("production")
    pod, config = _tenant_service(objects)
    assert config["BACKUP_STORE_URL"].startswith("s3://")
    assert config["S3_REGION"] == "eu-central-1"
    assert of_kind(objects, "PersistentVolumeClaim") == []
    assert [v["name"] for v in pod["volumes"]] == ["tmp"]
    refs = _secret_refs(pod["containers"][0])
    assert refs["AWS_ACCESS_KEY_ID"] == refs["AWS_SECRET_ACCESS_KEY"] == (EXISTING_SECRET, True)


def test_a_backup_store_claim_or_bucket_secret_of_the_operator_is_used_as_named(tmp_path: Path) -> None:
    values = {"backups": {"persistence": {"existingClaim": "nfs-backups"}, "s3": {"existingSecret": "bucket-keys"}}}
    done = template(SCENARIOS["default"], _values_file(tmp_path, values))
    assert done.returncode == 0, done.stderr
    objects = tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)
    assert of_kind(objects, "PersistentVolumeClaim") == []
    pod, _ = _tenant_service(objects)
    assert {"name": "backups", "persistentVolumeClaim": {"claimName": "nfs-backups"}} in pod["volumes"]
    refs = _secret_refs(pod["containers"][0])
    assert refs["AWS_ACCESS_KEY_ID"] == refs["AWS_SECRET_ACCESS_KEY"] == ("bucket-keys", True)
    assert refs["ENCRYPTION_KEYS"][0] != "bucket-keys"


EU_URL = "postgresql://tenantry_admin:eu-pass-0123@pg-eu.example.internal:5432/postgres"
BIG_URL = "postgresql://tenantry_admin:big-pass-4567@pg-big.example.internal:5432/postgres"
EXTRA_SERVERS: list[dict[str, str]] = [
    {"name": "eu", "url": EU_URL},
    {"name": "big-1", "existingSecret": "pg-big", "key": "url"},
]


def _expanded(container: dict[str, Any], secrets: dict[tuple[str, str], str], name: str) -> str:
    """The value of the container's variable ``name`` as the process sees it: secretKeyRef read from ``secrets``,
    ``$(VAR)`` replaced by the variables defined before it (what the kubelet does)."""
    seen: dict[str, str] = {}
    for entry in container["env"]:
        if "valueFrom" in entry:
            ref = entry["valueFrom"].get("secretKeyRef")
            if ref is None or (ref["name"], ref["key"]) not in secrets:
                continue
            seen[entry["name"]] = secrets[(ref["name"], ref["key"])]
        else:
            seen[entry["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: seen.get(m[1], m[0]), entry["value"]
            )
    return seen[name]


def test_extra_database_servers_reach_the_tenant_service_and_migrations_from_secrets_only(tmp_path: Path) -> None:
    done = template(SCENARIOS["default"], _values_file(tmp_path, {"extraDatabaseServers": EXTRA_SERVERS}))
    assert done.returncode == 0, done.stderr
    objects = tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)
    secrets = {
        (secret["metadata"]["name"], key): base64.b64decode(value).decode()
        for secret in of_kind(objects, "Secret")
        for key, value in secret["data"].items()
    }
    secrets[("pg-big", "url")] = BIG_URL  # the operator's Secret
    readers = set()
    for workload, pod in pod_templates(objects):
        (container,) = pod["containers"]
        if "EXTRA_DATABASE_SERVERS" not in _env_names(container):
            continue
        readers.add(component(workload))
        assert _expanded(container, secrets, "EXTRA_DATABASE_SERVERS") == f"eu={EU_URL};big-1={BIG_URL}"
    assert readers == {"tenant-service", "migrate"}  # like compose: the gateway and the apps never see them
    for obj in objects:
        if obj["kind"] != "Secret":
            text = yaml.safe_dump(obj)
            assert "eu-pass-0123" not in text, f"{obj['kind']}/{obj['metadata']['name']}"
            assert "pg-eu.example.internal" not in text, f"{obj['kind']}/{obj['metadata']['name']}"
        if (obj["apiVersion"], obj["kind"]) not in NOT_VALIDATED:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_extra_database_servers_with_existing_secret_read_the_operators_secrets(tmp_path: Path) -> None:
    servers = [{"name": "eu", "existingSecret": EXISTING_SECRET, "key": "EU_DATABASE_URL"}]
    done = template(SCENARIOS["existing-secret"], _values_file(tmp_path, {"extraDatabaseServers": servers}))
    assert done.returncode == 0, done.stderr
    objects = tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)
    assert of_kind(objects, "Secret") == []
    pod, _ = _tenant_service(objects)
    (container,) = pod["containers"]
    assert _expanded(container, {(EXISTING_SECRET, "EU_DATABASE_URL"): EU_URL}, "EXTRA_DATABASE_SERVERS") == (
        f"eu={EU_URL}"
    )


@scenarios
def test_no_extra_database_servers_by_default(scenario: str) -> None:
    for _, pod in pod_templates(render(scenario)):
        for container in pod["containers"]:
            assert not [name for name in _env_names(container) if "DATABASE_SERVER" in name]


# --- broken values fail, with a message that names the problem -------------------------------------------------


def _values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"gatway": {}}, "(root): Additional property gatway is not allowed"),
        ({"gateway": {"replicaCount": 2}}, "gateway: Additional property replicaCount is not allowed"),
        ({"gateway": {"replicas": -1}}, "gateway.replicas: Must be greater than or equal to 1"),
        ({"gateway": {"config": {"quotaFailureMode": "half"}}}, "gateway.config.quotaFailureMode must be one of"),
        (
            {"tenantService": {"config": {"serviceTokenScopes": {"app": ["admin"]}}}},
            "tenantService.config.serviceTokenScopes.app.0 must be one of",
        ),
        ({"tenantService": {"config": {"serviceTokenScopes": {"app": []}}}}, "serviceTokenScopes.app: Array must have"),
        ({"backups": {"storeUrl": "/var/lib/tenantry/backups"}}, "backups.storeUrl: Does not match pattern"),
        ({"backups": {"storeUrl": "file:///var/my%20backups"}}, "backups.storeUrl: Does not match pattern"),
        (
            {"extraDatabaseServers": [{"name": "default", "url": EU_URL}]},
            "extraDatabaseServers.0.name: Must not validate the schema (not)",
        ),
        (
            {"extraDatabaseServers": [{"name": "eu", "url": "mysql://h/x"}]},
            "extraDatabaseServers.0.url: Does not match",
        ),
        (
            {"extraDatabaseServers": [{"name": "eu", "url": EU_URL, "existingSecret": "s", "key": "k"}]},
            "extraDatabaseServers.0: Additional property",
        ),
        ({"extraDatabaseServers": [{"name": "eu", "existingSecret": "s"}]}, "extraDatabaseServers.0: key is required"),
    ],
    ids=[
        "typo-top-level",
        "typo-nested",
        "negative-replicas",
        "quota-mode",
        "unknown-scope",
        "no-scope",
        "backup-store-path",
        "backup-store-escape",
        "server-named-default",
        "server-not-postgres",
        "server-url-and-secret",
        "server-secret-without-key",
    ],
)
def test_values_against_the_schema_fail_lint_and_template_with_a_clear_message(
    tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    broken = _values_file(tmp_path, values)
    for done in (lint(SCENARIOS["default"], broken), template(SCENARIOS["default"], broken)):
        assert done.returncode != 0
        assert message in done.stdout + done.stderr


# helm lint reports a template's `fail`/`required` only as [INFO]; `helm template` (and install) stop on them.
@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"gateway": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}},
            "gateway.autoscaling.minReplicas (5) must not exceed gateway.autoscaling.maxReplicas (2)",
        ),
        ({"notes": {"enabled": False}}, "gateway.config.defaultUpstream is required when notes.enabled is false"),
        (
            {"gateway": {"config": {"directoryMaxStalenessSeconds": 1, "directoryRefreshSeconds": 2}}},
            "gateway.config.directoryMaxStalenessSeconds (1) must be 0 (off) or more than "
            "gateway.config.directoryRefreshSeconds (2)",
        ),
        (
            {"tenantService": {"replicas": 2}},
            "tenantService.replicas (2) pods share the file store of backups.storeUrl: add ReadWriteMany",
        ),
        (
            {"backups": {"persistence": {"enabled": False}}},
            "backups.persistence.enabled is false: the backups would be lost with the pod",
        ),
        (
            {
                "extraDatabaseServers": [
                    {"name": "eu", "url": EU_URL},
                    {"name": "eu", "existingSecret": "s", "key": "k"},
                ]
            },
            'extraDatabaseServers: the name "eu" is given twice',
        ),
    ],
    ids=[
        "hpa-bounds",
        "no-upstream",
        "staleness-below-refresh",
        "shared-rwo-backups",
        "ephemeral-backups",
        "server-named-twice",
    ],
)
def test_impossible_combinations_fail_template_with_a_clear_message(
    tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    done = template(SCENARIOS["default"], _values_file(tmp_path, values))
    assert done.returncode != 0
    assert message in done.stderr


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("adminToken", "secrets.adminToken (or secrets.adminTokens) is required"),
        ("gatewayServiceToken", "secrets.gatewayServiceToken is required"),
        ("serviceToken", "secrets.serviceToken is required when notes.enabled is true"),
        ("encryptionKeys", "secrets.encryptionKeys is required"),
        ("jwtSigningKeys", "secrets.jwtSigningKeys is required"),
        ("databaseUrl", "secrets.databaseUrl is required"),
        ("redisUrl", "secrets.redisUrl is required"),
    ],
)
def test_a_missing_secret_without_existing_secret_fails_clearly(tmp_path: Path, drop: str, message: str) -> None:
    values = yaml.safe_load(SCENARIOS["default"].read_text())
    del values["secrets"][drop]
    done = template(_values_file(tmp_path, values))
    assert done.returncode != 0
    assert message in done.stderr
    assert "existingSecret" in done.stderr


def test_one_token_for_the_gateway_and_the_notes_app_is_refused(tmp_path: Path) -> None:
    values = yaml.safe_load(SCENARIOS["default"].read_text())
    values["secrets"]["gatewayServiceToken"] = values["secrets"]["serviceToken"]
    done = template(_values_file(tmp_path, values))
    assert done.returncode != 0
    assert "secrets.serviceToken and secrets.gatewayServiceToken must differ" in done.stderr


def test_no_values_at_all_asks_for_secrets() -> None:
    done = template()
    assert done.returncode != 0
    assert "is required: set it under secrets, or name a Secret holding every key with existingSecret" in done.stderr


def test_an_inline_database_server_url_next_to_existing_secret_is_refused(tmp_path: Path) -> None:
    values = {"existingSecret": EXISTING_SECRET, "extraDatabaseServers": [{"name": "eu", "url": EU_URL}]}
    done = template(_values_file(tmp_path, values))
    assert done.returncode != 0
    assert "extraDatabaseServers[0] (eu) has an inline url, but with existingSecret" in done.stderr
    assert "eu-pass-0123" not in done.stderr


def test_inline_secrets_next_to_existing_secret_are_refused(tmp_path: Path) -> None:
    values = {"existingSecret": EXISTING_SECRET, "secrets": {"adminToken": "adm_0123456789abcdef"}}
    done = template(_values_file(tmp_path, values))
    assert done.returncode != 0
    assert "secrets.adminToken is set together with existingSecret" in done.stderr


def test_every_value_is_commented_and_listed_in_the_chart_readme() -> None:
    values_yaml = (CHART / "values.yaml").read_text()
    documented = documented_values(values_yaml)
    undocumented = [
        leaf
        for leaf in value_leaves(yaml.safe_load(values_yaml))
        if not any(".".join(leaf.split(".")[:depth]) in documented for depth in range(1, leaf.count(".") + 2))
    ]
    assert undocumented == [], f"values without a '# --' comment in values.yaml: {undocumented}"
    readme = (CHART / "README.md").read_text()
    missing = [key for key in documented if f"| `{key}` |" not in readme]
    assert missing == [], f"values missing from the table in charts/tenantry/README.md: {missing}"
