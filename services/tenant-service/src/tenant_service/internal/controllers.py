"""HTTP endpoints under ``/internal/v1`` for tenant apps (service tokens with the ``credentials:vend`` scope)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.params import PathParameter

from tenant_service.auth import actor, service_guard
from tenant_service.deps import Ctx
from tenant_service.internal.scopes import CREDENTIALS_VEND, SCOPE_OPT
from tenant_service.internal.service import vend_credentials
from tenant_service.openapi import problems, service_security
from tenantry_common.internal_api import DatabaseCredentials


class InternalController(Controller):
    """What tenant apps may ask the tenant-service."""

    path = "/internal/v1"
    guards = [service_guard]  # noqa: RUF012
    tags = ["internal"]  # noqa: RUF012

    @get(
        "/tenants/{tenant_id:str}/database",
        summary="Credentials of one tenant's database",
        responses=problems(401, 403, 404, 422, 500, 503),
        opt={SCOPE_OPT: CREDENTIALS_VEND},
        security=service_security(CREDENTIALS_VEND),
    )
    async def database(
        self,
        request: Request[Any, Any, Any],
        ctx: Ctx,
        tenant_id: Annotated[str, PathParameter(max_length=64)],
    ) -> DatabaseCredentials:
        """That tenant's own role and password, nothing broader. Every call is audited."""
        return await vend_credentials(ctx, tenant_id, actor=actor(request))
