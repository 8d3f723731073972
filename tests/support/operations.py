"""Following operations (contract §9) from tests: wait for one to finish, back a tenant up, read its notes."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tenantry_devtools.platform import Platform, Tenant

FINISHED = ("succeeded", "failed", "cancelled")


def wait_operation(admin: httpx.Client, op_id: str, timeout: float = 120.0) -> dict[str, Any]:
    """The operation once it has finished (or fail the test after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = admin.get(f"/admin/operations/{op_id}").json()
        if body.get("state") in FINISHED:
            return body
        assert time.monotonic() < deadline, f"operation still {body.get('state')} after {timeout}s: {body}"
        time.sleep(0.2)


def accepted(response: httpx.Response) -> dict[str, Any]:
    """The operation of a ``202 Accepted`` answer (checked: status, ``Location``)."""
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    assert response.headers["Location"] == f"/admin/operations/{body['id']}"
    return body


def take_backup(admin: httpx.Client, ref: str, note: str | None = None) -> str:
    """Back a tenant up and wait for it; the backup's id."""
    op = accepted(admin.post(f"/admin/tenants/{ref}/backups", json={"note": note} if note else {}))
    done = wait_operation(admin, op["id"])
    assert done["state"] == "succeeded", done
    backup_id: str = done["result"]["backup_id"]
    return backup_id


def all_notes(platform: Platform, tenant: Tenant) -> list[str]:
    """Every note body of the tenant, read through the gateway, newest first."""
    bodies: list[str] = []
    cursor: str | None = None
    while True:
        params = {"cursor": cursor} if cursor else {}
        response = httpx.get(
            platform.gateway.url + "/notes", headers={"X-API-Key": tenant.key}, params=params, timeout=30
        )
        assert response.status_code == 200, response.text
        page = response.json()
        bodies += [n["body"] for n in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            return bodies
