"""HTTP endpoints under ``/admin/tenants/{ref}/backups`` and ``.../exports`` (contract §10).

Requests for work answer ``202 Accepted`` with the operation and ``Location: /admin/operations/{id}``. Downloads
are verified whole first (an altered object is refused with ``backup_corrupt`` before any byte is sent), then
streamed, audited, and marked uncacheable.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.response import Stream

from tenant_service.auth import actor, admin_guard
from tenant_service.backups.schemas import BackupCreate, BackupPage, BackupView, ExportPage, ExportView
from tenant_service.backups.service import BackupService, Download
from tenant_service.deps import Ctx
from tenant_service.openapi import ADMIN_SECURITY, OptionalBodyOperation, problems
from tenant_service.operations.schemas import OperationView

Ref = Annotated[str, PathParameter(description="Tenant id (UUID) or slug", max_length=64)]
ItemId = Annotated[str, PathParameter(description="Backup or export id (UUID)", max_length=64)]
Limit = Annotated[int, QueryParameter(ge=1, le=200)]
Cursor = Annotated[str | None, QueryParameter(required=False, max_length=512)]


def accepted(op: OperationView) -> Response[OperationView]:
    """``202 Accepted`` with the operation and where to follow it."""
    return Response(op, status_code=202, headers={"Location": f"/admin/operations/{op.id}", "Retry-After": "1"})


def _stream(download: Download) -> Stream:
    headers = {
        "Content-Disposition": f'attachment; filename="{download.filename}"',
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    if download.size is not None:
        headers["Content-Length"] = str(download.size)
    return Stream(download.chunks, media_type=download.media_type, headers=headers)


class BackupController(Controller):
    """Backups of one tenant."""

    path = "/admin/tenants/{ref:str}/backups"
    guards = [admin_guard]  # noqa: RUF012
    tags = ["backups"]  # noqa: RUF012
    security = ADMIN_SECURITY

    @post(
        "/",
        status_code=202,
        summary="Back up the tenant's database",
        operation_class=OptionalBodyOperation,
        responses=problems(401, 404, 409, 413, 415, 422, 503),
    )
    async def create(
        self, request: Request[Any, Any, Any], ctx: Ctx, ref: Ref, data: JSONBody[BackupCreate | None] = None
    ) -> Response[OperationView]:
        """A ``backup`` operation; its ``result.backup_id`` names the backup."""
        op = await BackupService(ctx).request_backup(ref, note=data.note if data else None, actor=actor(request))
        request.app.state.background.wake_operations()
        return accepted(op)

    @get("/", summary="List the tenant's backups", responses=problems(401, 404, 422, 503))
    async def list_backups(self, ctx: Ctx, ref: Ref, limit: Limit = 50, cursor: Cursor = None) -> BackupPage:
        """Newest first; pass ``next_cursor`` back as ``cursor``."""
        return await BackupService(ctx).list_backups(ref, limit=limit, cursor=cursor)

    @get("/{backup_id:str}", summary="One backup", responses=problems(401, 404, 422, 503))
    async def get_backup(self, ctx: Ctx, ref: Ref, backup_id: ItemId) -> BackupView:
        """A backup of this tenant (another tenant's id is 404 here)."""
        return await BackupService(ctx).get_backup(ref, backup_id)

    @delete("/{backup_id:str}", status_code=204, summary="Delete a backup", responses=problems(401, 404, 409, 422, 503))
    async def delete_backup(self, request: Request[Any, Any, Any], ctx: Ctx, ref: Ref, backup_id: ItemId) -> None:
        """The backup and its stored object are deleted."""
        await BackupService(ctx).delete_backup(ref, backup_id, actor=actor(request))

    @get(
        "/{backup_id:str}/download",
        summary="Download a backup (pg_restore custom format)",
        responses=problems(401, 404, 409, 422, 503),
    )
    async def download(self, request: Request[Any, Any, Any], ctx: Ctx, ref: Ref, backup_id: ItemId) -> Stream:
        """The decrypted archive, streamed; ``pg_restore`` reads it."""
        return _stream(await BackupService(ctx).download_backup(ref, backup_id, actor=actor(request)))


class ExportController(Controller):
    """Exports (data portability) of one tenant."""

    path = "/admin/tenants/{ref:str}/exports"
    guards = [admin_guard]  # noqa: RUF012
    tags = ["backups"]  # noqa: RUF012
    security = ADMIN_SECURITY

    @post("/", status_code=202, summary="Export the tenant's data", responses=problems(401, 404, 409, 422, 503))
    async def create(self, request: Request[Any, Any, Any], ctx: Ctx, ref: Ref) -> Response[OperationView]:
        """An ``export`` operation; its ``result.export_id`` names the export."""
        op = await BackupService(ctx).request_export(ref, actor=actor(request))
        request.app.state.background.wake_operations()
        return accepted(op)

    @get("/", summary="List the tenant's exports", responses=problems(401, 404, 422, 503))
    async def list_exports(self, ctx: Ctx, ref: Ref, limit: Limit = 50, cursor: Cursor = None) -> ExportPage:
        """Newest first."""
        return await BackupService(ctx).list_exports(ref, limit=limit, cursor=cursor)

    @get("/{export_id:str}", summary="One export", responses=problems(401, 404, 422, 503))
    async def get_export(self, ctx: Ctx, ref: Ref, export_id: ItemId) -> ExportView:
        """An export of this tenant."""
        return await BackupService(ctx).get_export(ref, export_id)

    @get(
        "/{export_id:str}/download", summary="Download an export (.tar.gz)", responses=problems(401, 404, 409, 422, 503)
    )
    async def download(self, request: Request[Any, Any, Any], ctx: Ctx, ref: Ref, export_id: ItemId) -> Stream:
        """``manifest.json``, ``schema.sql`` and ``data/<schema>.<table>.csv``, streamed."""
        return _stream(await BackupService(ctx).download_export(ref, export_id, actor=actor(request)))
