"""The work of backup, restore, clone and export operations, run by the operation runner.

Each ``run`` resumes from its checkpoint after a crash, each ``undo`` removes what its run made (the runner calls
it before a failed or cancelled operation is finished, and for one that crashed too often). Every step that reads
or writes tenant data runs as the tenant's own role (``pg_dump``, ``pg_restore``, the export's reads): nothing a
tenant created in its database runs with the platform's rights.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, Final

import structlog
from prometheus_client import Counter
from sqlalchemy import select, update

from tenant_service.audit.service import SYSTEM_ACTOR
from tenant_service.backups.export import build_export
from tenant_service.backups.objects import (
    BackupCorruptError,
    ObjectGoneError,
    backup_key,
    export_key,
    read_object,
    write_object,
)
from tenant_service.changes import unit_of_work
from tenant_service.context import AppContext
from tenant_service.cutover import HoldNotDrainedError, cutover_hold
from tenant_service.db.models import Backup, Export, Plan, Tenant
from tenant_service.failpoints import failpoint
from tenant_service.operations.runner import Job, OperationFailedError
from tenant_service.provisioning.cluster import PgToolError, TenantCluster, TenantLogin
from tenant_service.provisioning.names import object_marker
from tenant_service.provisioning.provisioner import connection_limit, password_context
from tenant_service.provisioning.schema import SchemaError, apply_migrations, current_version, head_version
from tenantry_common.lifecycle import LOGIN_ALLOWED, TenantStatus
from tenantry_common.limits import merged_limits
from tenantry_common.timeutil import utcnow

_log = structlog.get_logger("tenantry.backups")
STORED_BYTES: Final = Counter(
    "tenantry_backup_stored_bytes_total", "Bytes of archives stored (before encryption), by kind", ["kind"]
)
#: The server every tenant lives on until several servers can be registered.


class TenantUnavailableError(OperationFailedError):
    """The tenant's database cannot be read now (provisioning, failed, being deleted)."""


def _unavailable(tenant: Tenant | None) -> OperationFailedError:
    status = tenant.status if tenant is not None else "gone"
    return OperationFailedError("tenant_unavailable", f"the tenant is {status}")


async def _tenant(ctx: AppContext, tenant_id: uuid.UUID | None) -> Tenant:
    async with ctx.sessions() as session:
        tenant = await session.get(Tenant, tenant_id) if tenant_id else None
    if tenant is None or tenant.status not in LOGIN_ALLOWED:
        raise _unavailable(tenant)
    return tenant


def _login(ctx: AppContext, tenant: Tenant, database: str | None = None) -> TenantLogin:
    password = ctx.box.decrypt(tenant.db_password_enc, password_context(tenant.id))
    return TenantLogin(database=database or tenant.db_name, role=tenant.db_role, password=password)


async def _schema_version(cluster: TenantCluster, login: TenantLogin) -> int:
    async with cluster.tenant_connection(login.database, login.role, login.password) as conn:
        return await current_version(conn)


async def _retention(ctx: AppContext, tenant: Tenant) -> timedelta | None:
    async with ctx.sessions() as session:
        plan = await session.get(Plan, tenant.plan)
    days = merged_limits(plan.limits if plan else {}, tenant.limits).get("backup_retention_days")
    return timedelta(days=int(days)) if days else None


async def dump_into(ctx: AppContext, job: Job, tenant: Tenant, backup_id: uuid.UUID) -> dict[str, Any]:
    """Stream ``pg_dump`` of the tenant's database (as its role) through encryption into the store under the
    backup's key; record the result on the backup row. Returns the row's recorded facts."""
    login = _login(ctx, tenant)
    cluster = await ctx.servers.for_tenant(tenant)
    version = await _schema_version(cluster, login)
    key = backup_key(tenant.id, backup_id)
    await _forget_object(ctx, key)
    await failpoint("backup.before_dump")

    def report(done: int) -> None:
        job.note_progress(done)

    written = await write_object(ctx, tenant.id, key, _with_failpoint(cluster.tools().dump(login)), report)
    STORED_BYTES.labels("backup").inc(written.size)
    await failpoint("backup.after_upload")
    retention = await _retention(ctx, tenant)
    now = utcnow()
    facts = {"size_bytes": written.size, "sha256": written.sha256, "schema_version": version}
    async with ctx.sessions() as session, session.begin():
        await session.execute(
            update(Backup)
            .where(Backup.id == backup_id)
            .values(
                state="completed",
                completed_at=now,
                expires_at=now + retention if retention else None,
                **facts,
            )
        )
    await failpoint("backup.after_record")
    return facts


async def _forget_object(ctx: AppContext, key: str) -> None:
    """Remove what an earlier attempt left under ``key``: the object, or a write a crash interrupted."""
    await ctx.store.cleanup_incomplete(key)
    await ctx.store.delete(key)


async def _with_failpoint(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The dump's chunks, with a failpoint after the first (a crash in the middle of an upload)."""
    first = True
    async for chunk in chunks:
        yield chunk
        if first:
            first = False
            await failpoint("backup.during_upload")


async def restore_into(ctx: AppContext, cluster: TenantCluster, backup: Backup, login: TenantLogin) -> int:
    """Decrypt the backup into ``pg_restore`` running as the tenant's role in ``login.database``; check it, and
    bring it to the schema head. Returns the schema version it ends at.

    Raises:
        OperationFailedError: ``backup_corrupt``, ``backup_not_found``, ``schema_too_new`` or ``restore_failed``.
    """
    archive = read_object(ctx, backup.tenant_id, backup.object_key, backup.sha256)
    try:
        await cluster.tools().restore(login, archive)
    except BackupCorruptError as exc:
        raise OperationFailedError("backup_corrupt", exc.detail or "the backup is corrupt") from None
    except ObjectGoneError as exc:
        raise OperationFailedError("backup_not_found", exc.detail or "the backup is gone") from None
    except PgToolError as exc:
        raise OperationFailedError("restore_failed", str(exc)) from None
    await failpoint("restore.after_pg_restore")
    head = head_version(ctx.migrations)
    async with cluster.tenant_connection(login.database, login.role, login.password) as conn:
        version = await current_version(conn)
        if backup.schema_version is not None and version != backup.schema_version:
            raise OperationFailedError(
                "restore_failed", f"the restored database reports schema {version}, the backup {backup.schema_version}"
            )
        if version > head:
            raise OperationFailedError("schema_too_new", f"the backup's schema {version} is newer than {head}")
        if version < head:
            try:
                version = await apply_migrations(conn, ctx.migrations, owner=None)
            except SchemaError as exc:
                raise OperationFailedError("restore_failed", str(exc)) from None
    return version


async def _backup(ctx: AppContext, backup_id: uuid.UUID) -> Backup:
    async with ctx.sessions() as session:
        backup = await session.get(Backup, backup_id)
    if backup is None or backup.state != "completed":
        raise OperationFailedError("backup_not_found", "the backup is gone or did not complete")
    return backup


class BackupJob:
    """``backup``: ``pg_dump`` of the tenant's database, encrypted into the store."""

    max_attempts = 3

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx

    async def run(self, job: Job) -> dict[str, Any]:
        tenant = await _tenant(self._ctx, job.tenant_id)
        backup_id = uuid.UUID(job.params["backup_id"])
        await job.step("dumping")
        await dump_into(self._ctx, job, tenant, backup_id)
        return {"backup_id": str(backup_id)}

    async def undo(self, job: Job) -> None:
        if job.tenant_id is not None:
            await _forget_object(self._ctx, backup_key(job.tenant_id, uuid.UUID(job.params["backup_id"])))

    async def finished(
        self, job: Job, outcome: str, result: dict[str, Any] | None, error: dict[str, Any] | None
    ) -> None:
        if outcome != "succeeded":
            await _mark(self._ctx, Backup, uuid.UUID(job.params["backup_id"]), "failed")


class ExportJob:
    """``export``: the tenant's data as CSV files with a manifest and its schema, a ``.tar.gz`` in the store."""

    max_attempts = 3

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx

    async def run(self, job: Job) -> dict[str, Any]:
        ctx = self._ctx
        tenant = await _tenant(ctx, job.tenant_id)
        export_id = uuid.UUID(job.params["export_id"])
        key = export_key(tenant.id, export_id)
        await _forget_object(ctx, key)
        await job.step("exporting")
        login = _login(ctx, tenant)
        async with build_export(ctx, tenant, login) as (archive, version):
            written = await write_object(ctx, tenant.id, key, archive)
        STORED_BYTES.labels("export").inc(written.size)
        now = utcnow()
        retention = await _retention(ctx, tenant)
        async with ctx.sessions() as session, session.begin():
            await session.execute(
                update(Export)
                .where(Export.id == export_id)
                .values(
                    state="completed",
                    completed_at=now,
                    size_bytes=written.size,
                    sha256=written.sha256,
                    schema_version=version,
                    expires_at=now + retention if retention else None,
                )
            )
        return {"export_id": str(export_id)}

    async def undo(self, job: Job) -> None:
        if job.tenant_id is not None:
            await _forget_object(self._ctx, export_key(job.tenant_id, uuid.UUID(job.params["export_id"])))

    async def finished(
        self, job: Job, outcome: str, result: dict[str, Any] | None, error: dict[str, Any] | None
    ) -> None:
        if outcome != "succeeded":
            await _mark(self._ctx, Export, uuid.UUID(job.params["export_id"]), "failed")


async def _mark(ctx: AppContext, model: type[Backup] | type[Export], row_id: uuid.UUID, state: str) -> None:
    async with ctx.sessions() as session, session.begin():
        await session.execute(update(model).where(model.id == row_id).values(state=state, completed_at=utcnow()))


class RestoreJob:
    """``restore``: the backup into a new database, checked, a ``pre_restore`` backup of the current data, then
    the switch under the gateways' hold. Undone (the new database dropped) until the switch begins."""

    max_attempts = 3

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx

    def _names(self, job: Job) -> tuple[str, str]:
        prefix = self._ctx.settings.database.tenant_db_prefix
        return f"{prefix}op{job.id.hex}", f"{prefix}old{job.id.hex}"

    async def run(self, job: Job) -> dict[str, Any]:
        ctx = self._ctx
        tenant = await _tenant(ctx, job.tenant_id)
        cluster = await ctx.servers.for_tenant(tenant)
        incoming, aside = self._names(job)
        if not job.committed:
            backup = await _backup(ctx, uuid.UUID(job.params["backup_id"]))
            await job.step("restoring")
            await cluster.drop_database(incoming)  # a crashed attempt's half-restored copy
            marker = object_marker(await ctx.installation_id(), tenant.id)
            await cluster.create_empty_database(incoming, tenant.db_role, marker)
            await failpoint("restore.after_create")
            version = await restore_into(ctx, cluster, backup, _login(ctx, tenant, incoming))
            await job.save(schema_version=version)
            await job.step("pre_restore_backup")
            await self._pre_restore_backup(job, tenant)
            await failpoint("restore.before_cutover")
        await job.step("cutover")
        try:
            async with cutover_hold(ctx, tenant.id, hold_id=job.id.hex):
                if not job.committed:
                    await job.commit_point()
                await self._switch(tenant, incoming, aside)
        except HoldNotDrainedError:
            if not job.committed:
                raise OperationFailedError(
                    "hold_failed", "the gateways did not drain the tenant's requests in time"
                ) from None
            await self._switch(tenant, incoming, aside)  # resumed past the point of no return: finish regardless
        await failpoint("restore.after_switch")
        await job.step("cleanup")
        await cluster.drop_database(aside)
        version = int(job.checkpoint.get("schema_version") or 0)
        pre_id = job.checkpoint.get("pre_restore_backup_id")
        async with unit_of_work(ctx) as work:
            locked = await work.session.get(Tenant, tenant.id, with_for_update=True)
            if locked is not None:
                locked.schema_version = version
                await work.changed(
                    locked,
                    actor=job.created_by,
                    action="tenant.restored_from_backup",
                    after={
                        "backup_id": job.params["backup_id"],
                        "pre_restore_backup_id": pre_id,
                        "operation_id": str(job.id),
                    },
                )
                work.publish("tenant.database_changed", tenant_id=tenant.id)
        return {"backup_id": job.params["backup_id"], "pre_restore_backup_id": pre_id}

    async def _pre_restore_backup(self, job: Job, tenant: Tenant) -> str:
        ctx = self._ctx
        pre_id = job.checkpoint.get("pre_restore_backup_id")
        if pre_id:
            async with ctx.sessions() as session:
                state = await session.scalar(select(Backup.state).where(Backup.id == uuid.UUID(pre_id)))
            if state == "completed":
                return str(pre_id)
            if state is not None:
                await _mark(ctx, Backup, uuid.UUID(pre_id), "failed")
                await _forget_object(ctx, backup_key(tenant.id, uuid.UUID(pre_id)))
        backup_id = uuid.uuid4()
        async with ctx.sessions() as session, session.begin():
            session.add(
                Backup(
                    id=backup_id,
                    tenant_id=tenant.id,
                    state="running",
                    kind="pre_restore",
                    note=f"before restore operation {job.id}",
                    operation_id=job.id,
                    object_key=backup_key(tenant.id, backup_id),
                    server=tenant.server,
                )
            )
        await job.save(pre_restore_backup_id=str(backup_id))
        try:
            await dump_into(ctx, job, tenant, backup_id)
        except PgToolError as exc:
            raise OperationFailedError("backup_failed", f"the pre-restore backup failed: {exc}") from None
        return str(backup_id)

    async def _switch(self, tenant: Tenant, incoming: str, aside: str) -> None:
        ctx = self._ctx
        cluster = await ctx.servers.for_tenant(tenant)
        await cluster.switch_database(tenant.db_name, incoming, aside, tenant.db_role)
        async with ctx.sessions() as session:
            status = await session.scalar(select(Tenant.status).where(Tenant.id == tenant.id))
        await cluster.set_login(tenant.db_role, enabled=status in LOGIN_ALLOWED)

    async def undo(self, job: Job) -> None:
        ctx = self._ctx
        incoming, _ = self._names(job)
        async with ctx.sessions() as session:
            tenant = await session.get(Tenant, job.tenant_id) if job.tenant_id else None
        if tenant is not None:
            await (await ctx.servers.for_tenant(tenant)).drop_database(incoming)
        pre_id = job.checkpoint.get("pre_restore_backup_id")
        if pre_id and job.tenant_id is not None:  # a pre-restore backup the crash or failure cut short
            async with ctx.sessions() as session:
                state = await session.scalar(select(Backup.state).where(Backup.id == uuid.UUID(pre_id)))
            if state == "running":
                await _mark(ctx, Backup, uuid.UUID(pre_id), "failed")
                await _forget_object(ctx, backup_key(job.tenant_id, uuid.UUID(pre_id)))

    async def finished(
        self, job: Job, outcome: str, result: dict[str, Any] | None, error: dict[str, Any] | None
    ) -> None:
        return None


class CloneJob:
    """``clone``: a new tenant whose database is restored from a backup instead of cloned from the template.
    Undone (database and role dropped, the tenant ``failed``) until the tenant is active."""

    max_attempts = 3

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx

    async def run(self, job: Job) -> dict[str, Any]:
        ctx = self._ctx
        async with ctx.sessions() as session:
            tenant = await session.get(Tenant, job.tenant_id)
            plan = await session.get(Plan, tenant.plan) if tenant else None
        if tenant is not None and tenant.status == TenantStatus.ACTIVE:
            return {"tenant_id": str(tenant.id), "backup_id": job.params["backup_id"]}  # resumed after activation
        if tenant is None or tenant.status != TenantStatus.PROVISIONING:
            raise _unavailable(tenant)
        backup = await _backup(ctx, uuid.UUID(job.params["backup_id"]))
        await job.step("creating")
        login = _login(ctx, tenant)
        marker = object_marker(await ctx.installation_id(), tenant.id)
        cluster = await ctx.servers.for_tenant(tenant)
        await cluster.drop_database(tenant.db_name)  # a crashed attempt's half-restored database
        limit = connection_limit(plan.limits if plan else {}, tenant.limits)
        await cluster.ensure_role(tenant.db_role, login.password, limit, marker)
        await cluster.create_empty_database(tenant.db_name, tenant.db_role, marker)
        await failpoint("clone.after_create")
        await job.step("restoring")
        version = await restore_into(ctx, cluster, backup, login)
        await failpoint("clone.before_activate")
        async with unit_of_work(ctx) as work:
            locked = await work.session.get(Tenant, tenant.id, with_for_update=True)
            if locked is None or locked.status != TenantStatus.PROVISIONING:
                raise _unavailable(locked)
            locked.status = TenantStatus.ACTIVE
            locked.schema_version = version
            locked.template_version = head_version(ctx.migrations)
            locked.failure_reason = None
            await work.changed(
                locked,
                actor=SYSTEM_ACTOR,
                action="tenant.provisioned",
                after={"status": "active", "schema_version": version, "source_backup_id": job.params["backup_id"]},
            )
        _log.info("tenant_cloned", tenant_id=str(tenant.id), backup_id=job.params["backup_id"])
        return {"tenant_id": str(tenant.id), "backup_id": job.params["backup_id"]}

    async def undo(self, job: Job) -> None:
        ctx = self._ctx
        async with ctx.sessions() as session:
            tenant = await session.get(Tenant, job.tenant_id)
        if tenant is None or tenant.status != TenantStatus.PROVISIONING:
            return
        cluster = await ctx.servers.for_tenant(tenant)
        await cluster.drop_database(tenant.db_name)
        await cluster.drop_role(tenant.db_role)
        async with unit_of_work(ctx) as work:
            locked = await work.session.get(Tenant, tenant.id, with_for_update=True)
            if locked is not None and locked.status == TenantStatus.PROVISIONING:
                locked.status = TenantStatus.FAILED
                locked.failure_reason = "clone failed or was cancelled"
                await work.changed(
                    locked,
                    actor=SYSTEM_ACTOR,
                    action="tenant.provisioning_failed",
                    after={"status": "failed", "reason": locked.failure_reason},
                )

    async def finished(
        self, job: Job, outcome: str, result: dict[str, Any] | None, error: dict[str, Any] | None
    ) -> None:
        return None


def handlers(ctx: AppContext) -> dict[str, Any]:
    """The handlers of the operation kinds this module runs."""
    return {"backup": BackupJob(ctx), "restore": RestoreJob(ctx), "clone": CloneJob(ctx), "export": ExportJob(ctx)}
