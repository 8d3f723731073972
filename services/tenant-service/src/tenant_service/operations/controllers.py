"""HTTP endpoints under ``/admin/operations`` (contract §9)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.params import PathParameter, QueryParameter

from tenant_service.auth import actor, admin_guard
from tenant_service.deps import Ctx
from tenant_service.openapi import ADMIN_SECURITY, problems
from tenant_service.operations.schemas import OperationPage, OperationView
from tenant_service.operations.service import OperationService

OpId = Annotated[str, PathParameter(description="Operation id (UUID)", max_length=64)]


class OperationController(Controller):
    """Long-running work: follow it, list it, cancel it."""

    path = "/admin/operations"
    guards = [admin_guard]  # noqa: RUF012
    tags = ["operations"]  # noqa: RUF012
    security = ADMIN_SECURITY

    @get("/", summary="List operations", responses=problems(401, 404, 422, 503))
    async def list_operations(
        self,
        ctx: Ctx,
        tenant: Annotated[str | None, QueryParameter(required=False, max_length=64)] = None,
        kind: Annotated[str | None, QueryParameter(required=False, max_length=32)] = None,
        state_filter: Annotated[str | None, QueryParameter(name="state", required=False, max_length=32)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, QueryParameter(required=False, max_length=512)] = None,
    ) -> OperationPage:
        """Newest first, filtered by tenant (id or slug), kind and state."""
        return await OperationService(ctx).list(
            tenant=tenant, kind=kind, state=state_filter, limit=limit, cursor=cursor
        )

    @get("/{op_id:str}", summary="One operation", responses=problems(401, 404, 422, 503))
    async def get_operation(self, ctx: Ctx, op_id: OpId) -> OperationView:
        """Its state, progress, result or error."""
        return await OperationService(ctx).get(op_id)

    @post(
        "/{op_id:str}/cancel",
        status_code=200,
        summary="Cancel an operation",
        responses=problems(401, 404, 409, 422, 503),
    )
    async def cancel(self, request: Request[Any, Any, Any], ctx: Ctx, op_id: OpId) -> OperationView:
        """200 while it can still be undone without loss (it ends ``cancelled`` within a second or two), else 409
        ``operation_not_cancellable``."""
        return await OperationService(ctx).cancel(op_id, actor=actor(request))
