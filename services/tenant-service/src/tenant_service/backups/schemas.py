"""Bodies and views of the backup and export admin API (contract §10)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from tenant_service.db.models import Backup, Export

Note = Annotated[str, msgspec.Meta(max_length=500, pattern=r"^[^\x00]*$")]
BackupId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class BackupCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /admin/tenants/{ref}/backups``."""

    note: Note | None = None


class RestoreRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /admin/tenants/{ref}/restore`` that restores a backup (without a body: undo a soft delete)."""

    backup_id: BackupId


class CloneSource(msgspec.Struct, forbid_unknown_fields=True):
    """``source`` of a create body: the new tenant's database is restored from this backup (any tenant's)."""

    backup_id: BackupId


class ExportView(msgspec.Struct):
    """An export as the admin API shows it."""

    id: str
    tenant_id: str
    state: str
    size_bytes: int | None
    schema_version: int | None
    server: str
    sha256: str | None
    created_at: datetime
    completed_at: datetime | None
    expires_at: datetime | None
    operation_id: str | None


class BackupView(ExportView, kw_only=True):
    """A backup as the admin API shows it: what an export shows, and its kind and note."""

    kind: str
    note: str | None


class BackupPage(msgspec.Struct):
    """A page of backups, newest first."""

    items: list[BackupView]
    next_cursor: str | None


class ExportPage(msgspec.Struct):
    """A page of exports, newest first."""

    items: list[ExportView]
    next_cursor: str | None


def _archive_fields(row: Backup | Export) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "tenant_id": str(row.tenant_id),
        "state": row.state,
        "size_bytes": row.size_bytes,
        "schema_version": row.schema_version,
        "server": row.server,
        "sha256": row.sha256,
        "created_at": row.created_at,
        "completed_at": row.completed_at,
        "expires_at": row.expires_at,
        "operation_id": str(row.operation_id) if row.operation_id else None,
    }


def backup_view(row: Backup) -> BackupView:
    """The API view of a backup row."""
    return BackupView(**_archive_fields(row), kind=row.kind, note=row.note)


def export_view(row: Export) -> ExportView:
    """The API view of an export row."""
    return ExportView(**_archive_fields(row))
