"""HTTP endpoints under ``/admin/tenants``: tenants, their domains, external JWT issuers and usage."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import HeaderParameter, JSONBody, PathParameter, QueryParameter

from tenant_service.auth import actor, admin_guard
from tenant_service.backups.controllers import accepted
from tenant_service.backups.schemas import RestoreRequest
from tenant_service.backups.service import BackupService
from tenant_service.deps import Ctx
from tenant_service.openapi import ADMIN_SECURITY, OptionalBodyOperation, problems
from tenant_service.operations.schemas import OperationView
from tenant_service.tenants.issuers import JwtIssuerService
from tenant_service.tenants.schemas import (
    NO_NUL,
    CloneAccepted,
    JwtIssuerCreate,
    JwtIssuerPage,
    JwtIssuerView,
    TenantCreate,
    TenantCreated,
    TenantPage,
    TenantUpdate,
    TenantUsageHistory,
    TenantView,
)
from tenant_service.tenants.service import TenantService
from tenant_service.tenants.usage import tenant_usage_history
from tenant_service.usage.history import history_window

#: Errors of a lifecycle transition.
_TRANSITION = problems(401, 404, 409, 422, 503)

#: The two bodies of a create's 202: the tenant being provisioned, or a clone's operation with its tenant.
_PROVISIONING_OR_CLONE: Any = TenantCreated | CloneAccepted
Ref = Annotated[str, PathParameter(description="Tenant id (UUID) or slug", max_length=64)]
IssuerId = Annotated[str, PathParameter(description="JWT issuer id (UUID)", max_length=64)]


class DomainCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /admin/tenants/{ref}/domains``."""

    domain: Annotated[str, msgspec.Meta(min_length=1, max_length=253)]


class TenantController(Controller):
    """Tenant lifecycle for platform admins."""

    path = "/admin/tenants"
    guards = [admin_guard]  # noqa: RUF012 - Litestar's declared attribute
    tags = ["tenants"]  # noqa: RUF012
    security = ADMIN_SECURITY

    @post(
        "/",
        status_code=201,
        summary="Create and provision a tenant",
        responses={
            201: ResponseSpec(TenantCreated, description="Created and provisioned", generate_examples=False),
            202: ResponseSpec(
                _PROVISIONING_OR_CLONE,
                description="Accepted: provisioning goes on (`Prefer: respond-async`), or a clone's operation",
                generate_examples=False,
            ),
            **problems(401, 409, 413, 415, 422, 503),
        },
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        ctx: Ctx,
        data: JSONBody[TenantCreate],
        prefer: Annotated[str | None, HeaderParameter(name="Prefer", required=False)] = None,
    ) -> Response[Any]:
        """Create a tenant; ``Prefer: respond-async`` answers 202 at once and provisions in the background. With
        ``source: {"backup_id"}`` the tenant is a clone: 202 with the ``clone`` operation (and the new tenant and its
        first key), its database restored from that backup."""
        wait = "respond-async" not in (prefer or "").lower()
        created = await TenantService(ctx).create(data, actor=actor(request), wait=wait or data.source is not None)
        if created.operation is not None:  # a clone: provisioned by its operation
            request.app.state.background.wake_operations()
            op = created.operation
            fields = {f: getattr(op, f) for f in OperationView.__struct_fields__}
            clone = CloneAccepted(**fields, tenant=created.view, api_key=created.api_key)
            return Response(
                clone, status_code=202, headers={"Location": f"/admin/operations/{op.id}", "Retry-After": "1"}
            )
        if not wait:
            request.app.state.background.spawn_provisioning(created.view.id)
        fields = {f: getattr(created.view, f) for f in TenantView.__struct_fields__}
        body = TenantCreated(**fields, api_key=created.api_key)
        location = f"/admin/tenants/{created.view.id}"
        if created.pending:
            return Response(body, status_code=202, headers={"Location": location, "Retry-After": "1"})
        return Response(body, status_code=201, headers={"Location": location})

    @get("/", summary="List tenants", responses=problems(401, 422, 503))
    async def list_tenants(
        self,
        ctx: Ctx,
        status: Annotated[str | None, QueryParameter(required=False, max_length=32)] = None,
        plan: Annotated[str | None, QueryParameter(required=False, max_length=64, pattern=NO_NUL)] = None,
        q: Annotated[str | None, QueryParameter(required=False, max_length=200, pattern=NO_NUL)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, QueryParameter(required=False, max_length=512)] = None,
    ) -> TenantPage:
        """A page of tenants, oldest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
        return await TenantService(ctx).list(status=status, plan=plan, q=q, limit=limit, cursor=cursor)

    @get("/{ref:str}", summary="Get a tenant", responses=problems(401, 404, 422, 503))
    async def get_tenant(self, ctx: Ctx, ref: Ref) -> TenantView:
        """One tenant by id or slug."""
        return await TenantService(ctx).get(ref)

    @patch("/{ref:str}", summary="Change a tenant", responses=problems(401, 404, 409, 413, 415, 422, 503))
    async def update(
        self, request: Request[Any, Any, Any], ctx: Ctx, ref: Ref, data: JSONBody[TenantUpdate]
    ) -> TenantView:
        """Change ``name``, ``plan``, ``settings``, ``limits`` or ``upstream_url``."""
        return await TenantService(ctx).update(ref, data, actor=actor(request))

    @post("/{ref:str}/suspend", status_code=200, summary="Suspend a tenant", responses=_TRANSITION)
    async def suspend(self, request: Request[Any, Any, Any], ctx: Ctx, ref: Ref) -> TenantView:
        """Gateways refuse its requests (403) from now on."""
        return await TenantService(ctx).transition(ref, "suspend", actor=actor(request))

    @post("/{ref:str}/resume", status_code=200, summary="Resume a suspended tenant", responses=_TRANSITION)
    async def resume(self, request: Request[Any, Any, Any], ctx: Ctx, ref: Ref) -> TenantView:
        """Undo a suspension."""
        return await TenantService(ctx).transition(ref, "resume", actor=actor(request))

    @delete("/{ref:str}", status_code=200, summary="Delete (soft) or purge a tenant", responses=_TRANSITION)
    async def delete_tenant(
        self,
        request: Request[Any, Any, Any],
        ctx: Ctx,
        ref: Ref,
        purge: Annotated[bool, QueryParameter(required=False)] = False,
    ) -> TenantView:
        """Soft delete (database kept for the retention period), or with ``purge=true`` drop everything now."""
        service = TenantService(ctx)
        if purge:
            return await service.purge(ref, actor=actor(request))
        return await service.transition(ref, "delete", actor=actor(request))

    @post(
        "/{ref:str}/restore",
        status_code=200,
        summary="Restore a soft-deleted tenant, or restore a backup",
        operation_class=OptionalBodyOperation,
        responses={
            200: ResponseSpec(TenantView, description="Without a body: the restored tenant", generate_examples=False),
            202: ResponseSpec(
                OperationView, description="With `backup_id`: a `restore` operation", generate_examples=False
            ),
            **_TRANSITION,
        },
    )
    async def restore(
        self, request: Request[Any, Any, Any], ctx: Ctx, ref: Ref, data: JSONBody[RestoreRequest | None] = None
    ) -> Response[Any]:
        """Without a body: undo a soft delete within the retention period (200, the tenant). With ``{"backup_id"}``:
        replace the tenant's data with that backup's (202, a ``restore`` operation; a ``pre_restore`` backup of the
        current data is taken first)."""
        if data is not None:
            op = await BackupService(ctx).request_restore(ref, data.backup_id, actor=actor(request))
            request.app.state.background.wake_operations()
            return accepted(op)
        return Response(await TenantService(ctx).transition(ref, "restore", actor=actor(request)))

    @get(
        "/{ref:str}/usage",
        summary="Quota counters, database size and usage history",
        responses=problems(401, 404, 422, 503),
    )
    async def usage(
        self,
        ctx: Ctx,
        ref: Ref,
        start: Annotated[
            str | None,
            QueryParameter(
                name="from",
                required=False,
                max_length=64,
                description="ISO 8601; default: 24 buckets back (hours) or 30 (days)",
            ),
        ] = None,
        end: Annotated[
            str | None, QueryParameter(name="to", required=False, max_length=64, description="ISO 8601; default: now")
        ] = None,
        granularity: Annotated[
            str | None, QueryParameter(required=False, max_length=8, description="hour (default) or day")
        ] = None,
    ) -> TenantUsageHistory:
        """Current request counters (from the gateways' Redis), the database size, and the history: every hour or
        day bucket of the window, zeros included (docs/usage.md)."""
        window = history_window(granularity, start, end)
        return await tenant_usage_history(ctx, await TenantService(ctx).get(ref), window)

    @post(
        "/{ref:str}/domains",
        status_code=201,
        summary="Add a custom domain",
        responses=problems(401, 404, 409, 413, 415, 422, 503),
    )
    async def add_domain(
        self, request: Request[Any, Any, Any], ctx: Ctx, ref: Ref, data: JSONBody[DomainCreate]
    ) -> TenantView:
        """Route requests whose Host is ``domain`` to this tenant."""
        return await TenantService(ctx).add_domain(ref, data.domain, actor=actor(request))

    @delete(
        "/{ref:str}/domains/{domain:str}",
        status_code=204,
        summary="Remove a custom domain",
        responses=problems(401, 404, 422, 503),
    )
    async def remove_domain(
        self,
        request: Request[Any, Any, Any],
        ctx: Ctx,
        ref: Ref,
        domain: Annotated[str, PathParameter(max_length=253)],
    ) -> None:
        """Stop routing ``domain`` to this tenant."""
        await TenantService(ctx).remove_domain(ref, domain, actor=actor(request))


class JwtIssuerController(Controller):
    """External JWT issuers of one tenant: identity providers whose tokens the gateways accept as the tenant's."""

    path = "/admin/tenants/{ref:str}/jwt-issuers"
    guards = [admin_guard]  # noqa: RUF012
    tags = ["jwt-issuers"]  # noqa: RUF012
    security = ADMIN_SECURITY

    @post(
        "/",
        status_code=201,
        summary="Trust an external JWT issuer",
        responses=problems(401, 404, 409, 413, 415, 422, 503),
    )
    async def add(
        self, request: Request[Any, Any, Any], ctx: Ctx, ref: Ref, data: JSONBody[JwtIssuerCreate]
    ) -> JwtIssuerView:
        """Tokens with this ``iss`` and ``aud``, signed by a key of ``jwks_url`` with one of ``algorithms`` (default
        RS256), authenticate as the tenant. An (issuer, audience) pair is trusted by one tenant at most (409
        ``issuer_taken``); a tenant trusts at most 10 issuers (409 ``too_many_issuers``)."""
        return await JwtIssuerService(ctx).add(ref, data, actor=actor(request))

    @get("/", summary="List external JWT issuers", responses=problems(401, 404, 422, 503))
    async def list_issuers(self, ctx: Ctx, ref: Ref) -> JwtIssuerPage:
        """Every issuer the tenant trusts, oldest first."""
        return JwtIssuerPage(items=await JwtIssuerService(ctx).list(ref))

    @delete(
        "/{issuer_id:str}",
        status_code=204,
        summary="Stop trusting an external JWT issuer",
        responses=problems(401, 404, 422, 503),
    )
    async def remove(self, request: Request[Any, Any, Any], ctx: Ctx, ref: Ref, issuer_id: IssuerId) -> None:
        """Its tokens stop working at every gateway within seconds."""
        await JwtIssuerService(ctx).remove(ref, issuer_id, actor=actor(request))
