"""HTTP endpoints under ``/admin/tenants/{ref}/api-keys``."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, delete, get, post
from litestar.params import JSONBody, PathParameter, QueryParameter

from tenant_service.apikeys.schemas import ApiKeyCreate, ApiKeyCreatedView, ApiKeyPage, ApiKeyRotate
from tenant_service.apikeys.service import ApiKeyService
from tenant_service.auth import actor, admin_guard
from tenant_service.deps import Ctx
from tenant_service.openapi import ADMIN_SECURITY, OptionalBodyOperation, problems

Ref = Annotated[str, PathParameter(description="Tenant id (UUID) or slug", max_length=64)]
KeyId = Annotated[str, PathParameter(description="API key id", max_length=64)]


class ApiKeyController(Controller):
    """API keys of one tenant."""

    path = "/admin/tenants/{ref:str}/api-keys"
    guards = [admin_guard]  # noqa: RUF012
    tags = ["api-keys"]  # noqa: RUF012
    security = ADMIN_SECURITY

    @post("/", status_code=201, summary="Create an API key", responses=problems(401, 404, 409, 413, 415, 422, 503))
    async def create(
        self, request: Request[Any, Any, Any], ctx: Ctx, ref: Ref, data: JSONBody[ApiKeyCreate]
    ) -> ApiKeyCreatedView:
        """The only response that ever contains the key's secret."""
        return await ApiKeyService(ctx).create(ref, data, actor=actor(request))

    @get("/", summary="List API keys", responses=problems(401, 404, 422, 503))
    async def list_keys(
        self,
        ctx: Ctx,
        ref: Ref,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 100,
        cursor: Annotated[str | None, QueryParameter(required=False, max_length=512)] = None,
    ) -> ApiKeyPage:
        """A page of the tenant's keys, newest first, never with secrets; pass ``next_cursor`` back as ``cursor``."""
        return await ApiKeyService(ctx).list(ref, limit=limit, cursor=cursor)

    @delete("/{key_id:str}", status_code=204, summary="Revoke an API key", responses=problems(401, 404, 422, 503))
    async def revoke(self, request: Request[Any, Any, Any], ctx: Ctx, ref: Ref, key_id: KeyId) -> None:
        """The key stops working at every gateway within seconds."""
        await ApiKeyService(ctx).revoke(ref, key_id, actor=actor(request))

    @post(
        "/{key_id:str}/rotate",
        status_code=201,
        summary="Rotate an API key",
        operation_class=OptionalBodyOperation,
        responses=problems(401, 404, 409, 413, 415, 422, 503),
    )
    async def rotate(
        self,
        request: Request[Any, Any, Any],
        ctx: Ctx,
        ref: Ref,
        key_id: KeyId,
        data: JSONBody[ApiKeyRotate | None] = None,
    ) -> ApiKeyCreatedView:
        """A new key; the old one keeps working for ``grace_seconds`` (default 86400)."""
        grace = data.grace_seconds if data else None
        return await ApiKeyService(ctx).rotate(ref, key_id, grace, actor=actor(request))
