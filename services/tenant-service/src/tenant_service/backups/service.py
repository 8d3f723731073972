"""What the admin API and ``tenantctl`` do with backups, restores and exports: requests become operations, reads
come from the registry, downloads are decrypted streams of the stored objects."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_service.audit.service import record
from tenant_service.backups.objects import backup_key, export_key, read_object, verify_object
from tenant_service.backups.schemas import (
    BackupPage,
    BackupView,
    ExportPage,
    ExportView,
    backup_view,
    export_view,
)
from tenant_service.changes import unit_of_work
from tenant_service.context import AppContext
from tenant_service.cursors import decode_cursor, split_page
from tenant_service.db.models import Backup, Export, Operation, Tenant
from tenant_service.operations.schemas import OperationView, operation_view
from tenant_service.operations.service import enqueue
from tenant_service.provisioning.schema import head_version
from tenant_service.tenants.lookup import find_tenant
from tenantry_common.lifecycle import LOGIN_ALLOWED
from tenantry_common.problems import ConflictError, NotFoundError
from tenantry_common.timeutil import utcnow


class BackupNotFoundError(NotFoundError):
    """No backup by that id for this tenant (another tenant's backup is not found either)."""

    code = "backup_not_found"


class ExportNotFoundError(NotFoundError):
    """No export by that id for this tenant."""

    code = "export_not_found"


class BackupNotReadyError(ConflictError):
    """The backup (or export) is still being made, or failed: there is nothing to restore or download."""

    code = "backup_not_ready"


class SchemaTooNewError(ConflictError):
    """The backup comes from a newer tenant schema than this installation's template."""

    code = "schema_too_new"


class TenantUnavailableError(ConflictError):
    """The tenant's database cannot be backed up, restored or exported in its current status."""

    code = "tenant_unavailable"


def new_backup_row(tenant: Tenant, *, kind: str, note: str | None) -> Backup:
    """A ``running`` backup row of ``tenant`` (its object key decided now)."""
    backup_id = uuid.uuid4()
    return Backup(
        id=backup_id,
        tenant_id=tenant.id,
        state="running",
        kind=kind,
        note=note,
        object_key=backup_key(tenant.id, backup_id),
        server=tenant.server,
        created_at=utcnow(),
    )


@dataclass(frozen=True)
class Download:
    """A verified stored object, ready to stream."""

    filename: str
    media_type: str
    size: int | None
    chunks: AsyncIterator[bytes]


def _parse(raw: str, error: NotFoundError) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise error from None


async def find_backup(session: AsyncSession, tenant: Tenant, raw_id: str) -> Backup:
    """The tenant's backup ``raw_id``.

    Raises:
        BackupNotFoundError: not a UUID, unknown, or another tenant's.
    """
    missing = BackupNotFoundError(f"no backup {raw_id[:64]!r} for this tenant")
    backup = await session.get(Backup, _parse(raw_id, missing))
    if backup is None or backup.tenant_id != tenant.id:
        raise missing
    return backup


async def clone_source(session: AsyncSession, ctx: AppContext, raw_id: str) -> Backup:
    """The completed backup a clone starts from (any tenant's).

    Raises:
        BackupNotFoundError: unknown.
        BackupNotReadyError: not completed.
        SchemaTooNewError: newer than the template.
    """
    missing = BackupNotFoundError(f"no backup {raw_id[:64]!r}")
    backup = await session.get(Backup, _parse(raw_id, missing))
    if backup is None:
        raise missing
    _check_restorable(ctx, backup)
    return backup


def _check_restorable(ctx: AppContext, backup: Backup) -> None:
    if backup.state != "completed":
        raise BackupNotReadyError(f"the backup is {backup.state}")
    head = head_version(ctx.migrations)
    if (backup.schema_version or 0) > head:
        raise SchemaTooNewError(
            f"the backup's schema version {backup.schema_version} is newer than the template's {head}"
        )


def _require_readable(tenant: Tenant) -> None:
    if tenant.status not in LOGIN_ALLOWED:
        raise TenantUnavailableError(f"the tenant is {tenant.status}")


Stored = TypeVar("Stored", Backup, Export)


async def _newest_first(
    session: AsyncSession, model: type[Stored], tenant: Tenant, limit: int, cursor: str | None
) -> tuple[Sequence[Stored], str | None]:
    """A page of the tenant's backups or exports, newest first, and the cursor after it."""
    query = (
        select(model)
        .where(model.tenant_id == tenant.id)
        .order_by(model.created_at.desc(), model.id.desc())
        .limit(limit + 1)
    )
    if cursor:
        query = query.where(tuple_(model.created_at, model.id) < tuple_(*decode_cursor(cursor)))
    return split_page(list((await session.execute(query)).scalars()), limit)


class BackupService:
    """Backups, restores and exports of one tenant at a time."""

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx

    async def request_backup(self, ref: str, *, note: str | None, actor: str) -> OperationView:
        """A ``backup`` operation (and its ``running`` backup row)."""
        async with unit_of_work(self._ctx) as work:
            tenant = await work.lock(ref)
            _require_readable(tenant)
            backup = new_backup_row(tenant, kind="manual", note=note)
            work.session.add(backup)
            op = await enqueue(
                work.session,
                kind="backup",
                tenant_id=tenant.id,
                actor=actor,
                target=tenant.slug,
                params={"backup_id": str(backup.id), "kind": "manual"},
            )
            backup.operation_id = op.id
            await work.session.flush()
            return operation_view(op)

    async def request_restore(self, ref: str, backup_id: str, *, actor: str) -> OperationView:
        """A ``restore`` operation of one of the tenant's own backups.

        Raises:
            BackupNotFoundError, BackupNotReadyError, SchemaTooNewError, TenantUnavailableError,
            OperationInProgressError.
        """
        async with unit_of_work(self._ctx) as work:
            tenant = await work.lock(ref)
            backup = await find_backup(work.session, tenant, backup_id)
            _require_readable(tenant)
            _check_restorable(self._ctx, backup)
            op = await enqueue(
                work.session,
                kind="restore",
                tenant_id=tenant.id,
                actor=actor,
                target=tenant.slug,
                params={"backup_id": str(backup.id)},
            )
            await work.session.flush()
            return operation_view(op)

    async def request_export(self, ref: str, *, actor: str) -> OperationView:
        """An ``export`` operation (and its ``running`` export row)."""
        async with unit_of_work(self._ctx) as work:
            tenant = await work.lock(ref)
            _require_readable(tenant)
            export_id = uuid.uuid4()
            op_id = uuid.uuid4()
            work.session.add(
                Export(
                    id=export_id,
                    tenant_id=tenant.id,
                    state="running",
                    operation_id=op_id,
                    object_key=export_key(tenant.id, export_id),
                    server=tenant.server,
                    created_at=utcnow(),
                )
            )
            op = await enqueue(
                work.session,
                kind="export",
                tenant_id=tenant.id,
                actor=actor,
                target=tenant.slug,
                params={"export_id": str(export_id)},
                op_id=op_id,
            )
            await work.session.flush()
            return operation_view(op)

    async def list_backups(self, ref: str, *, limit: int = 50, cursor: str | None = None) -> BackupPage:
        """The tenant's backups, newest first."""
        async with self._ctx.sessions() as session:
            tenant = await find_tenant(session, ref)
            rows, next_cursor = await _newest_first(session, Backup, tenant, limit, cursor)
            return BackupPage(items=[backup_view(b) for b in rows], next_cursor=next_cursor)

    async def get_backup(self, ref: str, backup_id: str) -> BackupView:
        """One of the tenant's backups."""
        async with self._ctx.sessions() as session:
            tenant = await find_tenant(session, ref)
            return backup_view(await find_backup(session, tenant, backup_id))

    async def delete_backup(self, ref: str, backup_id: str, *, actor: str) -> None:
        """Delete a backup and its stored object.

        Raises:
            BackupNotReadyError: it is still being made (cancel its operation instead).
        """
        async with self._ctx.sessions() as session, session.begin():
            tenant = await find_tenant(session, ref)
            backup = await find_backup(session, tenant, backup_id)
            if backup.state == "running":
                raise BackupNotReadyError("the backup is still being made; cancel its operation instead")
            in_use = await session.scalar(
                select(Operation.id).where(
                    Operation.kind.in_(("restore", "clone")),
                    Operation.state.in_(("pending", "running")),
                    Operation.params["backup_id"].astext == str(backup.id),
                )
            )
            if in_use is not None:
                raise BackupNotReadyError("a restore or clone from this backup is under way")
            await session.delete(backup)
            record(
                session,
                actor=actor,
                action="backup.delete",
                target=tenant.slug,
                tenant_id=tenant.id,
                before={"backup_id": str(backup.id), "kind": backup.kind},
                after=None,
            )
        await self._ctx.store.delete(backup.object_key)

    async def download_backup(self, ref: str, backup_id: str, *, actor: str) -> Download:
        """The backup as a ``pg_restore``-readable archive, verified whole before the first byte is sent.

        Raises:
            BackupNotFoundError, BackupNotReadyError, BackupCorruptError, ObjectGoneError.
        """
        async with self._ctx.sessions() as session:
            tenant = await find_tenant(session, ref)
            backup = await find_backup(session, tenant, backup_id)
        name = f"{tenant.slug}-{backup.created_at:%Y%m%dT%H%M%SZ}-{str(backup.id)[:8]}.dump"
        return await self._download(tenant, backup, "backup", name, "application/octet-stream", actor)

    async def list_exports(self, ref: str, *, limit: int = 50, cursor: str | None = None) -> ExportPage:
        """The tenant's exports, newest first."""
        async with self._ctx.sessions() as session:
            tenant = await find_tenant(session, ref)
            rows, next_cursor = await _newest_first(session, Export, tenant, limit, cursor)
            return ExportPage(items=[export_view(e) for e in rows], next_cursor=next_cursor)

    async def _export(self, session: AsyncSession, tenant: Tenant, raw_id: str) -> Export:
        missing = ExportNotFoundError(f"no export {raw_id[:64]!r} for this tenant")
        export = await session.get(Export, _parse(raw_id, missing))
        if export is None or export.tenant_id != tenant.id:
            raise missing
        return export

    async def get_export(self, ref: str, export_id: str) -> ExportView:
        """One of the tenant's exports."""
        async with self._ctx.sessions() as session:
            tenant = await find_tenant(session, ref)
            return export_view(await self._export(session, tenant, export_id))

    async def download_export(self, ref: str, export_id: str, *, actor: str) -> Download:
        """The export's ``.tar.gz``, verified whole before the first byte is sent."""
        async with self._ctx.sessions() as session:
            tenant = await find_tenant(session, ref)
            export = await self._export(session, tenant, export_id)
        name = f"{tenant.slug}-export-{export.created_at:%Y%m%dT%H%M%SZ}.tar.gz"
        return await self._download(tenant, export, "export", name, "application/gzip", actor)

    async def _download(
        self, tenant: Tenant, row: Backup | Export, kind: str, filename: str, media_type: str, actor: str
    ) -> Download:
        """Verify the stored object whole, audit the download, and hand out its decrypted stream."""
        if row.state != "completed":
            raise BackupNotReadyError(f"the {kind} is {row.state}")
        await verify_object(self._ctx, tenant.id, row.object_key, row.sha256)
        async with self._ctx.sessions() as session, session.begin():
            record(session, actor=actor, action=f"{kind}.download", target=tenant.slug, tenant_id=tenant.id,
                   after={f"{kind}_id": str(row.id)})  # fmt: skip
        return Download(
            filename=filename,
            media_type=media_type,
            size=row.size_bytes,
            chunks=read_object(self._ctx, tenant.id, row.object_key, row.sha256),
        )
