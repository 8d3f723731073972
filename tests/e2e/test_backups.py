"""Backups, restores, clones and exports end to end (contract §9, §10): the tenant-service, a gateway and the notes
app as real processes, real PostgreSQL, the file store; what a user sees through the admin API and the gateway."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from support.operations import accepted, all_notes, take_backup, wait_operation
from support.platform import Installation, registry, with_database
from support.s3 import S3Server
from support.stacks import gw, make_tenant, running_platform
from tenantry_devtools.platform import Platform, Tenant

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def inst(pg_url: str, redis_url: str) -> AsyncIterator[Installation]:
    installation = Installation.isolated(pg_url, redis_url, label="backups")
    await installation.create()
    yield installation
    await installation.drop()


@pytest.fixture(scope="module")
def platform(inst: Installation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with running_platform(inst, tmp_path_factory.mktemp("backups")) as started:
        yield started


def write_notes(platform: Platform, tenant: Tenant, *bodies: str) -> None:
    for body in bodies:
        response = gw(platform, "POST", "/notes", tenant, json={"body": body})
        assert response.status_code == 201, response.text


async def delete_note(pg_url: str, tenant: Tenant, body: str) -> None:
    conn = await asyncpg.connect(with_database(pg_url, tenant.database))
    try:
        assert await conn.execute("DELETE FROM notes WHERE body = $1", body) == "DELETE 1"
    finally:
        await conn.close()


def test_restore_brings_back_exactly_the_notes_of_the_backups_moment_without_an_app_restart(
    platform: Platform,
) -> None:
    tenant = make_tenant(platform, "bk-restore")
    write_notes(platform, tenant, "one", "two", "three")
    backup_id = take_backup(platform.admin, tenant.slug, note="before the mistake")
    write_notes(platform, tenant, "four", "five")
    asyncio.run(delete_note(platform.installation.pg_url, tenant, "two"))
    assert all_notes(platform, tenant) == ["five", "four", "three", "one"]
    notes_pid = platform.notes.pid

    op = accepted(platform.admin.post(f"/admin/tenants/{tenant.slug}/restore", json={"backup_id": backup_id}))
    assert op["kind"] == "restore"
    assert op["state"] in ("pending", "running")
    done = wait_operation(platform.admin, op["id"])
    assert done["state"] == "succeeded", done
    assert done["result"]["backup_id"] == backup_id

    assert all_notes(platform, tenant) == ["three", "two", "one"]
    assert platform.notes.pid == notes_pid
    whoami = gw(platform, "GET", "/whoami", tenant).json()
    assert whoami["database"] == tenant.database

    # The data before the restore was kept as a pre_restore backup: the restore itself can be undone.
    backups = platform.admin.get(f"/admin/tenants/{tenant.slug}/backups").json()["items"]
    pre = next(b for b in backups if b["id"] == done["result"]["pre_restore_backup_id"])
    assert pre["kind"] == "pre_restore"
    assert pre["state"] == "completed"
    undo = wait_operation(
        platform.admin,
        accepted(platform.admin.post(f"/admin/tenants/{tenant.slug}/restore", json={"backup_id": pre["id"]}))["id"],
    )
    assert undo["state"] == "succeeded", undo
    assert all_notes(platform, tenant) == ["five", "four", "three", "one"]


def test_backup_object_lists_and_reads_like_the_contract(platform: Platform) -> None:
    tenant = make_tenant(platform, "bk-object")
    write_notes(platform, tenant, "hello")
    backup_id = take_backup(platform.admin, tenant.slug, note="nightly")
    backup = platform.admin.get(f"/admin/tenants/{tenant.slug}/backups/{backup_id}").json()
    assert backup["id"] == backup_id
    assert backup["tenant_id"] == tenant.id
    assert backup["state"] == "completed"
    assert backup["kind"] == "manual"
    assert backup["note"] == "nightly"
    assert backup["size_bytes"] > 0
    assert len(backup["sha256"]) == 64
    assert backup["schema_version"] >= 1
    assert backup["server"] == "default"
    assert backup["completed_at"] is not None
    listed = platform.admin.get(f"/admin/tenants/{tenant.slug}/backups").json()
    assert [b["id"] for b in listed["items"]] == [backup_id]
    assert listed["next_cursor"] is None
    ops = platform.admin.get("/admin/operations", params={"tenant": tenant.slug, "kind": "backup"}).json()["items"]
    assert ops[0]["result"] == {"backup_id": backup_id}
    assert ops[0]["progress"]["step"] == "succeeded"
    assert ops[0]["created_by"].startswith("admin")

    assert platform.admin.delete(f"/admin/tenants/{tenant.slug}/backups/{backup_id}").status_code == 204
    assert platform.admin.get(f"/admin/tenants/{tenant.slug}/backups/{backup_id}").status_code == 404
    backup_dir = platform.installation.backup_dir
    assert backup_dir is not None
    assert not list(backup_dir.rglob(f"{backup_id}*"))


def test_a_download_is_a_custom_format_archive_that_pg_restore_reads(platform: Platform, tmp_path: Path) -> None:
    tenant = make_tenant(platform, "bk-download")
    write_notes(platform, tenant, "downloaded")
    backup_id = take_backup(platform.admin, tenant.slug)
    target = tmp_path / "backup.dump"
    with platform.admin.stream("GET", f"/admin/tenants/{tenant.slug}/backups/{backup_id}/download") as response:
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        assert "attachment" in response.headers["content-disposition"]
        with target.open("wb") as handle:
            for chunk in response.iter_bytes():
                handle.write(chunk)
    backup = platform.admin.get(f"/admin/tenants/{tenant.slug}/backups/{backup_id}").json()
    assert hashlib.sha256(target.read_bytes()).hexdigest() == backup["sha256"]
    listing = subprocess.run(["pg_restore", "--list", str(target)], capture_output=True, text=True, check=True)
    assert "TABLE public notes" in listing.stdout
    audit = platform.admin.get("/admin/audit", params={"tenant": tenant.slug}).json()["items"]
    assert any(entry["action"] == "backup.download" for entry in audit)


def test_a_clone_shows_the_sources_notes_under_a_new_tenant_and_slug(platform: Platform) -> None:
    source = make_tenant(platform, "bk-source")
    write_notes(platform, source, "alpha", "beta")
    backup_id = take_backup(platform.admin, source.slug)
    write_notes(platform, source, "after the backup")

    response = platform.admin.post(
        "/admin/tenants", json={"slug": "bk-clone", "name": "Clone", "source": {"backup_id": backup_id}}
    )
    op = accepted(response)
    assert op["kind"] == "clone"
    body = response.json()
    assert body["tenant"]["slug"] == "bk-clone"
    assert body["tenant"]["status"] == "provisioning"
    done = wait_operation(platform.admin, op["id"])
    assert done["state"] == "succeeded", done
    clone = Tenant(
        id=body["tenant"]["id"],
        slug="bk-clone",
        key=body["api_key"]["key"],
        key_id=body["api_key"]["id"],
        database=body["tenant"]["database"]["name"],
    )
    assert platform.admin.get("/admin/tenants/bk-clone").json()["status"] == "active"
    deadline = time.monotonic() + 10
    while gw(platform, "GET", "/notes", clone).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all_notes(platform, clone) == ["beta", "alpha"]
    assert gw(platform, "GET", "/whoami", clone).json()["database"] == clone.database != source.database
    write_notes(platform, clone, "only in the clone")
    assert "only in the clone" not in all_notes(platform, source)
    # Keys are not copied: the source's key names the source, never the clone.
    assert gw(platform, "GET", "/notes", source, headers={"X-Tenant-ID": clone.id}).status_code == 403


def test_an_exports_csv_row_counts_and_sha256_match_its_manifest(platform: Platform) -> None:
    tenant = make_tenant(platform, "bk-export")
    write_notes(platform, tenant, "plain", 'with "quotes", commas\nand a newline', "ünïcødé")
    op = accepted(platform.admin.post(f"/admin/tenants/{tenant.slug}/exports"))
    done = wait_operation(platform.admin, op["id"])
    assert done["state"] == "succeeded", done
    export_id = done["result"]["export_id"]
    response = platform.admin.get(f"/admin/tenants/{tenant.slug}/exports/{export_id}/download")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as archive:
        names = archive.getnames()
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert "schema.sql" in names
        assert b"CREATE TABLE public.notes" in archive.extractfile("schema.sql").read()  # type: ignore[union-attr]
        assert manifest["tenant"] == {"id": tenant.id, "slug": tenant.slug}
        assert manifest["schema_version"] >= 1
        by_name = {t["name"]: t for t in manifest["tables"]}
        assert by_name["notes"]["rows"] == 3
        assert by_name["notes"]["file"] == "data/public.notes.csv"
        for table in manifest["tables"]:
            data = archive.extractfile(table["file"]).read()  # type: ignore[union-attr]
            assert hashlib.sha256(data).hexdigest() == table["sha256"]
            import csv

            rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
            assert len(rows) - 1 == table["rows"], table
        notes_csv = archive.extractfile("data/public.notes.csv").read().decode()  # type: ignore[union-attr]
        assert "ünïcødé" in notes_csv


def test_another_tenants_backup_id_is_404_under_this_tenant(platform: Platform) -> None:
    owner = make_tenant(platform, "bk-owner")
    intruder = make_tenant(platform, "bk-intruder")
    backup_id = take_backup(platform.admin, owner.slug)
    base = f"/admin/tenants/{intruder.slug}/backups/{backup_id}"
    assert platform.admin.get(base).status_code == 404
    assert platform.admin.get(base).json()["code"] == "backup_not_found"
    assert platform.admin.get(base + "/download").status_code == 404
    assert platform.admin.delete(base).status_code == 404
    restore = platform.admin.post(f"/admin/tenants/{intruder.slug}/restore", json={"backup_id": backup_id})
    assert restore.status_code == 404
    assert restore.json()["code"] == "backup_not_found"
    assert platform.admin.get(f"/admin/tenants/{owner.slug}/backups/{backup_id}").status_code == 200


def test_a_flipped_byte_in_a_stored_object_gives_backup_corrupt_and_changes_nothing(platform: Platform) -> None:
    tenant = make_tenant(platform, "bk-corrupt")
    write_notes(platform, tenant, "kept")
    backup_id = take_backup(platform.admin, tenant.slug)
    write_notes(platform, tenant, "newer")
    backup_dir = platform.installation.backup_dir
    assert backup_dir is not None
    (stored,) = list(backup_dir.rglob(f"{backup_id}*"))
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))

    download = platform.admin.get(f"/admin/tenants/{tenant.slug}/backups/{backup_id}/download")
    assert download.status_code == 409
    assert download.json()["code"] == "backup_corrupt"
    op = accepted(platform.admin.post(f"/admin/tenants/{tenant.slug}/restore", json={"backup_id": backup_id}))
    done = wait_operation(platform.admin, op["id"])
    assert done["state"] == "failed"
    assert done["error"]["code"] == "backup_corrupt"
    assert all_notes(platform, tenant) == ["newer", "kept"]
    leftovers = asyncio.run(
        registry(platform.installation, "SELECT 1 FROM operations WHERE id = $1 AND state = 'failed'", op["id"])
    )
    assert leftovers
    assert asyncio.run(_databases_like(platform.installation, "%op" + op["id"].replace("-", ""))) == []


async def _databases_like(inst: Installation, pattern: str) -> list[str]:
    conn = await asyncpg.connect(inst.pg_url)
    try:
        return [
            r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1", pattern)
        ]
    finally:
        await conn.close()


def test_after_purge_no_backup_of_the_tenant_can_be_restored_or_downloaded(platform: Platform, tmp_path: Path) -> None:
    tenant = make_tenant(platform, "bk-purged")
    write_notes(platform, tenant, "secret")
    backup_id = take_backup(platform.admin, tenant.slug)
    backup_dir = platform.installation.backup_dir
    assert backup_dir is not None
    (stored,) = list(backup_dir.rglob(f"{backup_id}*"))
    copy = tmp_path / "stolen.bin"
    copy.write_bytes(stored.read_bytes())
    assert b"secret" not in copy.read_bytes()  # the store never holds plaintext

    assert platform.admin.delete(f"/admin/tenants/{tenant.slug}", params={"purge": "true"}).status_code == 200
    assert not list(backup_dir.rglob(f"*{tenant.id}*"))
    keys = asyncio.run(
        registry(platform.installation, "SELECT 1 FROM tenant_data_keys WHERE tenant_id = $1", tenant.id)
    )
    assert keys == []
    # A clone from the purged tenant's backup cannot start: the backup is gone from the registry.
    clone = platform.admin.post(
        "/admin/tenants", json={"slug": "bk-thief", "name": "x", "source": {"backup_id": backup_id}}
    )
    assert clone.status_code == 404
    # Even with the stolen object put back, nothing decrypts it: the tenant's data key was destroyed.
    from tenant_service.backups.crypto import CorruptObjectError, decrypt_stream

    async def try_every_key() -> None:
        rows = await registry(platform.installation, "SELECT tenant_id, wrapped FROM tenant_data_keys")
        from tenant_service.backups.crypto import unwrap_data_key
        from tenant_service.secretbox import SecretBox

        box = SecretBox.from_config(platform.installation.encryption_keys)
        key_name = str(stored.relative_to(backup_dir))

        async def chunks() -> AsyncIterator[bytes]:
            yield copy.read_bytes()

        for row in rows:
            key = unwrap_data_key(box, row["tenant_id"], row["wrapped"])
            with pytest.raises(CorruptObjectError):
                async for _ in decrypt_stream(key, key_name, chunks()):
                    pass

    asyncio.run(try_every_key())


def test_requests_during_an_in_place_restore_are_held_not_refused(platform: Platform) -> None:
    # Three clients hammer without a pause: the rate limit is not what this test is about.
    tenant = make_tenant(
        platform, "bk-held", limits={"requests_per_minute": 1_000_000, "requests_per_day": 100_000_000}
    )
    write_notes(platform, tenant, "before")
    backup_id = take_backup(platform.admin, tenant.slug)
    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=platform.gateway.url, headers={"X-API-Key": tenant.key}, timeout=30) as client:
            while not stop.is_set():
                statuses.append(client.get("/notes").status_code)

    workers = [threading.Thread(target=hammer) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.5)
        op = accepted(platform.admin.post(f"/admin/tenants/{tenant.slug}/restore", json={"backup_id": backup_id}))
        done = wait_operation(platform.admin, op["id"])
        time.sleep(0.5)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert done["state"] == "succeeded", done
    assert len(statuses) > 20
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}


def test_backups_of_a_tenant_that_has_no_database_yet_are_refused(platform: Platform) -> None:
    response = platform.admin.post(
        "/admin/tenants", json={"slug": "bk-pending", "name": "p"}, headers={"Prefer": "respond-async"}
    )
    assert response.status_code == 202
    asyncio.run(registry(platform.installation, "UPDATE tenants SET status = 'failed' WHERE slug = 'bk-pending'"))
    for path in ("/admin/tenants/bk-pending/backups", "/admin/tenants/bk-pending/exports"):
        refused = platform.admin.post(path, json={})
        assert refused.status_code == 409, refused.text
        assert refused.json()["code"] == "tenant_unavailable"


def test_a_backup_from_a_newer_schema_is_refused(platform: Platform) -> None:
    tenant = make_tenant(platform, "bk-newer")
    backup_id = take_backup(platform.admin, tenant.slug)
    asyncio.run(registry(platform.installation, "UPDATE backups SET schema_version = 999 WHERE id = $1", backup_id))
    restore = platform.admin.post(f"/admin/tenants/{tenant.slug}/restore", json={"backup_id": backup_id})
    assert restore.status_code == 409
    assert restore.json()["code"] == "schema_too_new"
    clone = platform.admin.post(
        "/admin/tenants", json={"slug": "bk-newer-2", "name": "x", "source": {"backup_id": backup_id}}
    )
    assert clone.status_code == 409
    assert clone.json()["code"] == "schema_too_new"
    assert platform.admin.get("/admin/tenants/bk-newer-2").status_code == 404


def test_a_second_restore_while_one_runs_is_409_and_a_cancelled_one_leaves_nothing(platform: Platform) -> None:
    tenant = make_tenant(platform, "bk-busy")
    write_notes(platform, tenant, "x")
    backup_id = take_backup(platform.admin, tenant.slug)
    # Hold the tenant's registry row so that the first restore cannot get far, then ask for a second one.
    first = accepted(platform.admin.post(f"/admin/tenants/{tenant.slug}/restore", json={"backup_id": backup_id}))
    second = platform.admin.post(f"/admin/tenants/{tenant.slug}/restore", json={"backup_id": backup_id})
    if second.status_code == 202:  # the first already finished: nothing to compare
        wait_operation(platform.admin, second.json()["id"])
    else:
        assert second.status_code == 409
        assert second.json()["code"] == "operation_in_progress"
    done = wait_operation(platform.admin, first["id"])
    assert done["state"] == "succeeded"
    cancel = platform.admin.post(f"/admin/operations/{first['id']}/cancel")
    assert cancel.status_code == 409
    assert cancel.json()["code"] == "operation_not_cancellable"
    assert platform.admin.get("/admin/operations/00000000-0000-0000-0000-000000000000").status_code == 404
    assert platform.admin.get("/admin/operations/nope").json()["code"] == "operation_not_found"


def test_backup_restore_and_download_through_an_s3_compatible_store(
    inst: Installation, s3_server: S3Server, tmp_path: Path
) -> None:
    """The same flow with ``BACKUP_STORE_URL=s3://…`` against a real S3-compatible server process (moto's)."""
    env = {
        "BACKUP_STORE_URL": f"s3://{s3_server.bucket}/e2e-{uuid.uuid4().hex[:8]}",
        "S3_ENDPOINT_URL": s3_server.endpoint_url,
        "S3_REGION": s3_server.region,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
    }
    with running_platform(inst.with_settings(env), tmp_path) as platform:
        tenant = make_tenant(platform, "bk-s3")
        write_notes(platform, tenant, "kept in s3")
        backup_id = take_backup(platform.admin, tenant.slug)
        write_notes(platform, tenant, "lost by the restore")
        keys = asyncio.run(_bucket_keys(s3_server, env["BACKUP_STORE_URL"].rpartition("/")[2]))
        assert any(backup_id in key for key in keys)
        download = platform.admin.get(f"/admin/tenants/{tenant.slug}/backups/{backup_id}/download")
        assert download.status_code == 200
        assert download.content.startswith(b"PGDMP")
        op = accepted(platform.admin.post(f"/admin/tenants/{tenant.slug}/restore", json={"backup_id": backup_id}))
        assert wait_operation(platform.admin, op["id"])["state"] == "succeeded"
        assert all_notes(platform, tenant) == ["kept in s3"]
        assert platform.admin.delete(f"/admin/tenants/{tenant.slug}", params={"purge": "true"}).status_code == 200
        assert asyncio.run(_bucket_keys(s3_server, env["BACKUP_STORE_URL"].rpartition("/")[2])) == []


async def _bucket_keys(s3_server: S3Server, prefix: str) -> list[str]:
    store = s3_server.store(prefix)
    try:
        return await store.list_keys("")
    finally:
        await store.close()
