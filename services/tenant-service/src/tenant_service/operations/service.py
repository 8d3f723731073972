"""Creating, reading and cancelling operations; the runner (:mod:`.runner`) does the work."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_service.audit.service import record
from tenant_service.context import AppContext
from tenant_service.cursors import decode_cursor, split_page
from tenant_service.db.models import Operation
from tenant_service.operations.schemas import (
    FINISHED,
    KINDS,
    STATES,
    OperationPage,
    OperationView,
    operation_view,
)
from tenant_service.tenants.lookup import find_tenant
from tenantry_common.problems import ConflictError, FieldError, InvalidInputError, NotFoundError
from tenantry_common.timeutil import utcnow

#: The checkpoint flag a handler sets when it passes its point of no return (see ``Job.commit_point``).
COMMITTED = "committed"


class OperationNotFoundError(NotFoundError):
    """No operation by that id."""

    code = "operation_not_found"


class OperationInProgressError(ConflictError):
    """The tenant already has a restore, clone or move under way."""

    code = "operation_in_progress"


class OperationNotCancellableError(ConflictError):
    """The operation has finished, or passed the point after which it cannot be undone without loss."""

    code = "operation_not_cancellable"


async def enqueue(
    session: AsyncSession,
    *,
    kind: str,
    tenant_id: uuid.UUID | None,
    params: dict[str, Any],
    actor: str,
    target: str,
    checkpoint: dict[str, Any] | None = None,
    op_id: uuid.UUID | None = None,
) -> Operation:
    """Add a ``pending`` operation (and its audit entry) to the caller's transaction.

    Raises:
        OperationInProgressError: a restore, clone or move of the tenant is already pending or running (checked by
            the registry's partial unique index, so two concurrent requests cannot both pass).
    """
    op = Operation(
        id=op_id or uuid.uuid4(),
        kind=kind,
        state="pending",
        tenant_id=tenant_id,
        params=params,
        progress={"step": "pending"},
        checkpoint=checkpoint or {},
        created_by=actor,
        created_at=utcnow(),
        updated_at=utcnow(),
    )
    session.add(op)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as exc:
        if "uq_operations_exclusive" in str(exc.orig):
            raise OperationInProgressError(
                "the tenant already has a restore, clone or move under way; wait for it or cancel it"
            ) from None
        if "uq_operations_drain" in str(exc.orig):
            raise OperationInProgressError("the server is already being drained") from None
        raise
    record(
        session,
        actor=actor,
        action=f"{kind}.requested",
        target=target,
        tenant_id=tenant_id,
        after={"operation_id": str(op.id), "params": params},
    )
    return op


class OperationService:
    """What the admin API and ``tenantctl`` do with operations."""

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx

    async def get(self, raw_id: str) -> OperationView:
        """One operation.

        Raises:
            OperationNotFoundError: unknown id (or not a UUID).
        """
        async with self._ctx.sessions() as session:
            return operation_view(await _find(session, raw_id))

    async def list(
        self,
        *,
        tenant: str | None = None,
        kind: str | None = None,
        state: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> OperationPage:
        """Newest first, filtered by tenant (id or slug), kind and state."""
        errors = []
        if kind is not None and kind not in KINDS:
            errors.append(FieldError(field="kind", message=f"must be one of {', '.join(KINDS)}"))
        if state is not None and state not in STATES:
            errors.append(FieldError(field="state", message=f"must be one of {', '.join(STATES)}"))
        if errors:
            raise InvalidInputError("invalid filter", errors=errors)
        query = select(Operation).order_by(Operation.created_at.desc(), Operation.id.desc()).limit(limit + 1)
        if kind:
            query = query.where(Operation.kind == kind)
        if state:
            query = query.where(Operation.state == state)
        if cursor:
            after = decode_cursor(cursor)
            query = query.where(tuple_(Operation.created_at, Operation.id) < tuple_(*after))
        async with self._ctx.sessions() as session:
            if tenant:
                query = query.where(Operation.tenant_id == (await find_tenant(session, tenant)).id)
            page, next_cursor = split_page(list((await session.execute(query)).scalars()), limit)
            return OperationPage(items=[operation_view(op) for op in page], next_cursor=next_cursor)

    async def cancel(self, raw_id: str, *, actor: str) -> OperationView:
        """Ask for the operation to stop and be undone; the runner that holds it rolls it back within a second.

        Raises:
            OperationNotFoundError: unknown id.
            OperationNotCancellableError: it has finished, or is past its point of no return.
        """
        async with self._ctx.sessions() as session, session.begin():
            op = await _find(session, raw_id, lock=True)
            if op.state in FINISHED or op.checkpoint.get(COMMITTED):
                raise OperationNotCancellableError(
                    f"the {op.kind} operation is {op.state}"
                    + (" and past the point where it can be undone" if op.state not in FINISHED else "")
                )
            if not op.cancel_requested:
                op.cancel_requested = True
                op.updated_at = utcnow()
                record(
                    session,
                    actor=actor,
                    action=f"{op.kind}.cancel",
                    target=str(op.id),
                    tenant_id=op.tenant_id,
                    before={"state": op.state},
                    after={"cancel_requested": True},
                )
            return operation_view(op)


async def _find(session: AsyncSession, raw_id: str, *, lock: bool = False) -> Operation:
    try:
        op_id = uuid.UUID(raw_id)
    except ValueError:
        raise OperationNotFoundError(f"no operation {raw_id[:64]!r}") from None
    query = select(Operation).where(Operation.id == op_id)
    if lock:
        query = query.with_for_update()
    op = (await session.execute(query)).scalar_one_or_none()
    if op is None:
        raise OperationNotFoundError(f"no operation {raw_id[:64]!r}")
    return op
