"""``kill -9`` of the tenant-service at every step of a backup, a restore and a clone (contract §9).

The service is a real process with a failpoint that SIGKILLs it at one step; a new process (no failpoint) is then
started, and its operation runner takes the operation over. Afterwards the operation has finished (succeeded) or
been rolled back (failed), and nothing is left behind: no extra database or role in the cluster, no stored object
that no completed backup or export names, no half-written file, and the tenant's data is either all the backup's
or all its own.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from support.operations import FINISHED
from support.platform import Installation, TenantServiceProcess, registry, wait_for, with_database

pytestmark = pytest.mark.e2e

BACKUP_POINTS = ("backup.before_dump", "backup.during_upload", "backup.after_upload", "backup.after_record")
RESTORE_POINTS = (
    "restore.after_create",
    "restore.after_pg_restore",
    "restore.before_cutover",
    "restore.between_renames",
    "restore.after_switch",
)
CLONE_POINTS = ("clone.after_create", "clone.before_activate")
FAST = {"OPERATION_POLL_SECONDS": "0.2"}


@pytest.fixture(scope="module")
async def inst(pg_url: str, redis_url: str) -> AsyncIterator[Installation]:
    installation = Installation.isolated(pg_url, redis_url, label="bkcrash")
    await installation.create()
    yield installation
    await installation.drop()


@pytest.fixture(scope="module")
def service(inst: Installation, tmp_path_factory: pytest.TempPathFactory) -> TenantServiceProcess:
    """A healthy service to set the scene with (stopped while a doomed one runs)."""
    return TenantServiceProcess(inst, tmp_path_factory.mktemp("bkcrash") / "service.log", env=FAST)


async def _notes(inst: Installation, database: str) -> list[str]:
    conn = await asyncpg.connect(with_database(inst.pg_url, database))
    try:
        return [r["body"] for r in await conn.fetch("SELECT body FROM notes ORDER BY id")]
    finally:
        await conn.close()


async def _add_note(inst: Installation, database: str, body: str) -> None:
    conn = await asyncpg.connect(with_database(inst.pg_url, database))
    try:
        await conn.execute("INSERT INTO notes (body) VALUES ($1)", body)
    finally:
        await conn.close()


def _tenant(service: TenantServiceProcess, slug: str) -> dict[str, str]:
    with service.client() as client:
        response = client.post("/admin/tenants", json={"slug": slug, "name": slug})
        assert response.status_code == 201, response.text
        body: dict[str, str] = response.json()
    return {"id": body["id"], "slug": slug, "database": body["database"]["name"]}  # type: ignore[index]


def _backup(service: TenantServiceProcess, slug: str) -> str:
    with service.client() as client:
        op = client.post(f"/admin/tenants/{slug}/backups", json={}).json()
        done = _wait(client, op["id"])
    assert done["state"] == "succeeded", done
    return str(done["result"]["backup_id"])


def _wait(client: httpx.Client, op_id: str, timeout: float = 90.0) -> dict[str, object]:
    import time

    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, object] = client.get(f"/admin/operations/{op_id}").json()
        if body["state"] in FINISHED:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


def _crash(inst: Installation, tmp_path: Path, point: str, path: str, body: dict[str, object]) -> str:
    """Start a service that dies at ``point``, ask it for the work, wait for the SIGKILL; the operation's id."""
    doomed = TenantServiceProcess(inst, tmp_path / "killed.log", env={**FAST, "TENANTRY_FAILPOINTS": f"{point}=kill"})
    doomed.start()
    try:
        with doomed.client() as client:
            response = client.post(path, json=body)
            assert response.status_code == 202, response.text
            op_id = str(response.json()["id"])
        assert doomed.wait_exit(timeout=60) == -signal.SIGKILL, doomed.log()[-2000:]
    finally:
        doomed.kill()
    return op_id


def _recover(inst: Installation, tmp_path: Path, op_id: str) -> dict[str, object]:
    recovered = TenantServiceProcess(inst, tmp_path / "recovered.log", env=FAST).start()
    try:
        with recovered.client() as client:
            return _wait(client, op_id)
    finally:
        recovered.stop()


async def _assert_nothing_left(inst: Installation) -> None:
    """Every database and role of the installation belongs to a live tenant; every stored file is the object of a
    completed backup or export (no half-written upload, no object of an undone operation)."""
    tenants = await registry(inst, "SELECT db_name, db_role, status FROM tenants")
    live = {r["db_name"] for r in tenants if r["status"] in ("active", "suspended", "deleted")}
    conn = await asyncpg.connect(inst.pg_url)
    try:
        assert inst.prefix is not None
        dbs = {
            r["datname"]
            for r in await conn.fetch("SELECT datname FROM pg_database WHERE starts_with(datname, $1)", inst.prefix)
        }
        roles = {
            r["rolname"]
            for r in await conn.fetch("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", inst.prefix)
        }
    finally:
        await conn.close()
    assert dbs == live
    assert roles == {r["db_role"] for r in tenants if r["status"] in ("active", "suspended", "deleted")}
    open_ops = await registry(inst, "SELECT id, kind, state FROM operations WHERE state IN ('pending', 'running')")
    assert open_ops == []
    keys = {
        r["object_key"]
        for r in await registry(
            inst,
            "SELECT object_key FROM backups WHERE state = 'completed'"
            " UNION SELECT object_key FROM exports WHERE state = 'completed'",
        )
    }
    assert inst.backup_dir is not None
    files = {str(p.relative_to(inst.backup_dir)) for p in inst.backup_dir.rglob("*") if p.is_file()}
    assert files == keys


@pytest.mark.parametrize("point", BACKUP_POINTS)
async def test_kill_during_a_backup_is_finished_or_rolled_back(
    point: str, inst: Installation, service: TenantServiceProcess, tmp_path: Path
) -> None:
    slug = "kb-" + point.split(".")[1].replace("_", "-")
    service.start()
    try:
        tenant = _tenant(service, slug)
    finally:
        service.stop()
    await _add_note(inst, tenant["database"], "backed up")
    op_id = _crash(inst, tmp_path, point, f"/admin/tenants/{slug}/backups", {})
    done = _recover(inst, tmp_path, op_id)
    assert done["state"] == "succeeded", done
    backups = await registry(inst, "SELECT state FROM backups WHERE tenant_id = $1", uuid.UUID(tenant["id"]))
    assert [r["state"] for r in backups] == ["completed"]
    await _assert_nothing_left(inst)


@pytest.mark.parametrize("point", RESTORE_POINTS)
async def test_kill_during_a_restore_is_finished_or_rolled_back(
    point: str, inst: Installation, service: TenantServiceProcess, tmp_path: Path
) -> None:
    slug = "kr-" + point.split(".")[1].replace("_", "-")
    service.start()
    try:
        tenant = _tenant(service, slug)
        await _add_note(inst, tenant["database"], "in the backup")
        backup_id = _backup(service, slug)
    finally:
        service.stop()
    await _add_note(inst, tenant["database"], "after the backup")
    op_id = _crash(inst, tmp_path, point, f"/admin/tenants/{slug}/restore", {"backup_id": backup_id})
    done = _recover(inst, tmp_path, op_id)
    notes = await _notes(inst, tenant["database"])
    if done["state"] == "succeeded":
        assert notes == ["in the backup"]
    else:
        assert done["state"] == "failed", done
        assert notes == ["in the backup", "after the backup"]
    # Every step is resumable: the restore finishes.
    assert done["state"] == "succeeded", done
    pre = await registry(
        inst, "SELECT state FROM backups WHERE tenant_id = $1 AND kind = 'pre_restore'", uuid.UUID(tenant["id"])
    )
    assert "completed" in [r["state"] for r in pre]
    await _assert_nothing_left(inst)


@pytest.mark.parametrize("point", CLONE_POINTS)
async def test_kill_during_a_clone_is_finished_or_rolled_back(
    point: str, inst: Installation, service: TenantServiceProcess, tmp_path: Path
) -> None:
    stem = point.split(".")[1].replace("_", "-")
    service.start()
    try:
        source = _tenant(service, f"kc-src-{stem}")
        await _add_note(inst, source["database"], "cloned note")
        backup_id = _backup(service, source["slug"])
    finally:
        service.stop()
    op_id = _crash(
        inst, tmp_path, point, "/admin/tenants", {"slug": f"kc-{stem}", "name": "c", "source": {"backup_id": backup_id}}
    )
    done = _recover(inst, tmp_path, op_id)
    assert done["state"] == "succeeded", done
    (row,) = await registry(inst, "SELECT status, db_name FROM tenants WHERE slug = $1", f"kc-{stem}")
    assert row["status"] == "active"
    assert await _notes(inst, row["db_name"]) == ["cloned note"]
    await _assert_nothing_left(inst)


async def test_a_cancelled_backup_and_clone_leave_nothing_behind(inst: Installation, tmp_path: Path) -> None:
    slow = TenantServiceProcess(
        inst,
        tmp_path / "slow.log",
        env={**FAST, "TENANTRY_FAILPOINTS": "backup.before_dump=sleep:30;clone.after_create=sleep:30"},
    ).start()
    try:
        with slow.client() as client:
            created = client.post("/admin/tenants", json={"slug": "kx-cancel", "name": "c"})
            assert created.status_code == 201
            op = client.post("/admin/tenants/kx-cancel/backups", json={}).json()
            await wait_for(lambda: client.get(f"/admin/operations/{op['id']}").json()["state"] == "running", timeout=20)
            cancel = client.post(f"/admin/operations/{op['id']}/cancel")
            assert cancel.status_code == 200, cancel.text
            done = _wait(client, op["id"])
            assert done["state"] == "cancelled"
            (backup,) = await registry(inst, "SELECT state FROM backups WHERE operation_id = $1", uuid.UUID(op["id"]))
            assert backup["state"] == "failed"
    finally:
        slow.stop()
    await _assert_nothing_left(inst)


async def test_two_replicas_run_each_operation_exactly_once(inst: Installation, tmp_path: Path) -> None:
    replicas = [
        TenantServiceProcess(inst, tmp_path / f"replica-{n}.log", env={**FAST, "OPERATION_WORKERS": "2"}).start()
        for n in range(2)
    ]
    try:
        with replicas[0].client() as first, replicas[1].client() as second:
            slug = "kx-replicas"
            assert first.post("/admin/tenants", json={"slug": slug, "name": "r"}).status_code == 201
            ids = [
                (first if n % 2 else second).post(f"/admin/tenants/{slug}/backups", json={}).json()["id"]
                for n in range(8)
            ]
            finished = [_wait(first, op_id) for op_id in ids]
    finally:
        for replica in replicas:
            replica.stop()
    assert [op["state"] for op in finished] == ["succeeded"] * 8
    rows = await registry(
        inst, "SELECT attempts FROM operations WHERE id = ANY($1::uuid[])", [uuid.UUID(i) for i in ids]
    )
    assert [r["attempts"] for r in rows] == [1] * 8  # claimed once each: no operation ran twice
    await _assert_nothing_left(inst)
