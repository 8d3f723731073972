"""Schemathesis over the tenant-service's own OpenAPI document, against the service as a real process.

Every operation of ``/schema/openapi.json`` gets generated requests — documented examples, boundary values (the
coverage phase) and random data, both valid (positive) and schema-violating (negative) — with the right token for
its API (admin for ``/admin``, service for ``/internal``). Every response must be: not a 5xx, a documented status
code, a documented content type, a body matching the documented schema, and a 4xx for every request the schema
forbids.

Valid path parameters are pointed at a real tenant (and its API key, domain and JWT issuer), reset before each
operation, so that valid requests reach the handlers instead of ending in 404; schema-violating ones keep their
generated values.
Nothing is excluded.

The run is bounded (``max-examples`` per operation, a fixed seed, deterministic generation) so CI is stable and
quick; it uses an installation of its own because it replaces plans and creates tenants.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation.modes import GenerationMode

from support.assertions import KEYLIKE
from support.platform import Installation, TenantServiceProcess

#: Checks run on every response.
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.negative_data_rejection,
]
MAX_EXAMPLES = 15
SEED = 20240607
TARGET = "fuzz-target"
TARGET_DOMAIN = "fuzz-target.example.com"
TARGET_ISSUER = "https://fuzz-target.example.com/"


def _openapi_document() -> dict[str, Any]:
    """The OpenAPI document as the app renders it, without any I/O (the real process serves the same one)."""
    from tenant_service.app import create_app
    from tenant_service.context import AppContext

    unreachable = Installation.isolated("postgresql://nobody@127.0.0.1:9/none", "redis://127.0.0.1:9/0")
    app = create_app(AppContext.build(unreachable.settings()), run_background=False)
    return app.openapi_schema.to_schema()


CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": True},
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": False},
        },
    }
)
DOCUMENT = _openapi_document()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


@pytest.fixture(scope="module")
async def fuzz_installation(pg_url: str, redis_url: str) -> AsyncIterator[Installation]:
    """An installation of its own: fuzzing replaces plans and creates tenants, which other tests must not see."""
    inst = Installation.isolated(pg_url, redis_url)
    await inst.create()
    yield inst
    await inst.drop()


@pytest.fixture(scope="module")
def fuzz_service(
    fuzz_installation: Installation, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TenantServiceProcess]:
    proc = TenantServiceProcess(fuzz_installation, Path(tmp_path_factory.mktemp("fuzz")) / "tenant-service.log").start()
    yield proc
    proc.stop()
    log = proc.log()
    for secret in (fuzz_installation.admin_token, fuzz_installation.service_token, fuzz_installation.gateway_token):
        assert secret not in log, "the service log leaks a token"
    assert not KEYLIKE.search(log), "the service log contains something like an API key"
    assert "unhandled_error" not in log, "an unhandled error was logged"


@dataclass(frozen=True)
class Target:
    """The real resources that valid path parameters are pointed at."""

    tenant_id: str
    key_id: str
    issuer_id: str
    webhook_id: str


@pytest.fixture
def fuzz_target(fuzz_service: TenantServiceProcess) -> Target:
    """The tenant ``fuzz-target``, active, with an active API key, its domain and an external JWT issuer, and a
    webhook, whatever the last operation did."""
    with fuzz_service.client() as admin:
        got = admin.get(f"/admin/tenants/{TARGET}")
        if got.status_code == 404:
            got = admin.post("/admin/tenants", json={"slug": TARGET, "name": "Fuzz target"})
            assert got.status_code == 201, got.text
        tenant = got.json()
        action = {"suspended": "resume", "deleted": "restore"}.get(tenant["status"])
        if action:
            assert admin.post(f"/admin/tenants/{TARGET}/{action}").status_code == 200
        assert admin.post(f"/admin/tenants/{TARGET}/domains", json={"domain": TARGET_DOMAIN}).status_code == 201
        keys = admin.get(f"/admin/tenants/{TARGET}/api-keys").json()["items"]
        active = [k["id"] for k in keys if k["status"] == "active"]
        if not active:
            made = admin.post(f"/admin/tenants/{TARGET}/api-keys", json={"name": "fuzz"})
            assert made.status_code == 201, made.text
            active = [made.json()["id"]]
        issuers = admin.get(f"/admin/tenants/{TARGET}/jwt-issuers").json()["items"]
        if not issuers:
            made = admin.post(
                f"/admin/tenants/{TARGET}/jwt-issuers",
                json={"issuer": TARGET_ISSUER, "audience": TARGET, "jwks_url": TARGET_ISSUER + "jwks.json"},
            )
            assert made.status_code == 201, made.text
            issuers = [made.json()]
        webhooks = admin.get("/admin/webhooks").json()["items"]
        if not webhooks:
            made = admin.post("/admin/webhooks", json={"url": "http://127.0.0.1:9/fuzz", "events": ["tenant.created"]})
            assert made.status_code == 201, made.text
            webhooks = [made.json()]
        return Target(
            tenant_id=tenant["id"], key_id=active[0], issuer_id=issuers[0]["id"], webhook_id=webhooks[0]["id"]
        )


def authorize(case: Any, inst: Installation) -> None:
    """The right token for the operation's API, unless the case deliberately breaks its headers (then the generated
    ``Authorization``, or its absence, stays and the answer must be 401)."""
    headers = case.meta.components.get(ParameterLocation.HEADER) if case.meta else None
    if headers is not None and headers.mode == GenerationMode.NEGATIVE:
        return
    service = {
        "directory:read": inst.gateway_token,
        "credentials:vend": inst.service_token,
        "users:authenticate": inst.gateway_token,
        "usage:write": inst.gateway_token,
    }
    for requirement in case.operation.definition.raw.get("security", []):
        for scheme, scopes in requirement.items():
            token = inst.admin_token if scheme == "adminToken" else service[scopes[0]]
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}


def point_at_target(case: Any, target: Target) -> None:
    """Valid path parameters name the real tenant, key and domain (schema-violating ones stay as generated)."""
    path = case.meta.components.get(ParameterLocation.PATH) if case.meta else None
    if not case.path_parameters or path is None or path.mode != GenerationMode.POSITIVE:
        return
    real = {
        "ref": TARGET,
        "tenant_id": target.tenant_id,
        "key_id": target.key_id,
        "issuer_id": target.issuer_id,
        "webhook_id": target.webhook_id,
        "domain": TARGET_DOMAIN,
    }
    for name in case.path_parameters:
        if name in real:
            case.path_parameters[name] = real[name]


# The seed as a parameter shows it in the test id, and gives each operation's test an id of its own: under pytest
# 9.2, schemathesis 4 only names the items ("...[POST /admin/tenants]") and pytest-xdist would run one of them.
@schema.parametrize()
@pytest.mark.parametrize("seed", [SEED])
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_its_openapi_says(
    case: Any, seed: int, fuzz_service: TenantServiceProcess, fuzz_target: Target
) -> None:
    assert schema.config.seed == seed
    point_at_target(case, fuzz_target)
    authorize(case, fuzz_service.installation)
    case.call_and_validate(base_url=fuzz_service.url, checks=CHECKS, timeout=30)


def test_the_real_process_serves_the_document_that_was_fuzzed(fuzz_service: TenantServiceProcess) -> None:
    response = httpx.get(fuzz_service.url + "/schema/openapi.json", timeout=30)
    assert response.status_code == 200
    assert json.loads(response.text) == json.loads(json.dumps(DOCUMENT))
    operations = [
        (m, p) for p, ops in DOCUMENT["paths"].items() for m in ops if m in ("get", "post", "put", "patch", "delete")
    ]
    assert len(operations) >= 20
    problem = "application/problem+json"
    for path, ops in DOCUMENT["paths"].items():
        for method, op in ops.items():
            if path.startswith(("/admin", "/internal")):
                assert "401" in op["responses"], (method, path)
                assert op["security"], (method, path)
            for status, response_doc in op["responses"].items():
                if status.startswith("4"):
                    assert problem in response_doc["content"], (method, path, status)
