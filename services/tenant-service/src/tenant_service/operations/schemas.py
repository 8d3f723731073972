"""The operation object of the admin API (contract §9)."""

from datetime import datetime
from typing import Any, Literal

import msgspec

from tenant_service.db.models import Operation

OperationKind = Literal["backup", "restore", "clone", "export", "move", "drain"]
OperationState = Literal["pending", "running", "succeeded", "failed", "cancelled"]
KINDS: tuple[str, ...] = ("backup", "restore", "clone", "export", "move", "drain")
STATES: tuple[str, ...] = ("pending", "running", "succeeded", "failed", "cancelled")
#: States after which nothing happens to an operation any more.
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class Progress(msgspec.Struct):
    """Where a running operation is: its current step, and how far into it (``done`` of ``total`` units)."""

    step: str | None = None
    done: int | None = None
    total: int | None = None


class OperationError(msgspec.Struct):
    """Why an operation failed: a stable code and a human-readable detail (never a secret or SQL)."""

    code: str
    detail: str


class OperationView(msgspec.Struct):
    """An operation as the admin API shows it."""

    id: str
    kind: str
    state: str
    tenant_id: str | None
    params: dict[str, Any]
    progress: Progress
    error: OperationError | None
    result: dict[str, Any] | None
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested: bool = False


class OperationPage(msgspec.Struct):
    """A page of operations, newest first."""

    items: list[OperationView]
    next_cursor: str | None


def operation_view(op: Operation) -> OperationView:
    """The API view of a registry row."""
    progress = op.progress or {}
    return OperationView(
        id=str(op.id),
        kind=op.kind,
        state=op.state,
        tenant_id=str(op.tenant_id) if op.tenant_id else None,
        params=op.params or {},
        progress=Progress(step=progress.get("step"), done=progress.get("done"), total=progress.get("total")),
        error=OperationError(code=op.error["code"], detail=op.error.get("detail", "")) if op.error else None,
        result=op.result,
        created_by=op.created_by,
        created_at=op.created_at,
        started_at=op.started_at,
        finished_at=op.finished_at,
        cancel_requested=op.cancel_requested,
    )
