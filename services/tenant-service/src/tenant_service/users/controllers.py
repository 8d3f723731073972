"""HTTP endpoints of tenant users: the admin API (``/admin/tenants/{ref}/users``) and what gateways ask
(``/internal/v1/auth/*``, ``/internal/v1/tenants/{id}/users|info``, scope ``users:authenticate``)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, delete, get, patch, post
from litestar.params import JSONBody, PathParameter, QueryParameter

from tenant_service.auth import actor, admin_guard, service_guard
from tenant_service.deps import Ctx
from tenant_service.internal.scopes import SCOPE_OPT, USERS_AUTHENTICATE
from tenant_service.openapi import ADMIN_SECURITY, problems, service_security
from tenant_service.tenants.service import TenantService
from tenant_service.tenants.usage import tenant_usage
from tenant_service.users.schemas import InvitationView, UserCreate, UserCreated, UserPage, UserUpdate, UserView
from tenant_service.users.service import Actor, AuthService, UserService, tenant_by_id
from tenant_service.users.signup import sign_up
from tenantry_common.users_api import (
    ON_BEHALF_HEADER,
    AcceptInvitationRequest,
    LoginRequest,
    PasswordChangeRequest,
    RefreshRequest,
    SessionGrant,
    SignupRequest,
    SignupResult,
    TenantInfo,
    TenantUsageInfo,
    UserInfo,
)

Ref = Annotated[str, PathParameter(description="Tenant id (UUID) or slug", max_length=64)]
TenantId = Annotated[str, PathParameter(description="Tenant id (UUID)", max_length=64)]
UserId = Annotated[str, PathParameter(description="User id", max_length=64)]
Limit = Annotated[int, QueryParameter(ge=1, le=200)]
Cursor = Annotated[str | None, QueryParameter(required=False, max_length=512)]


class UserController(Controller):
    """Users of one tenant, for platform admins."""

    path = "/admin/tenants/{ref:str}/users"
    guards = [admin_guard]  # noqa: RUF012
    tags = ["users"]  # noqa: RUF012
    security = ADMIN_SECURITY

    @post("/", status_code=201, summary="Create a user", responses=problems(401, 404, 409, 413, 415, 422, 503))
    async def create(
        self, request: Request[Any, Any, Any], ctx: Ctx, ref: Ref, data: JSONBody[UserCreate]
    ) -> UserCreated:
        """The user and a single-use invitation; its token is shown only here."""
        return await UserService(ctx).create(ref, data, actor=Actor(actor(request)))

    @get("/", summary="List users", responses=problems(401, 404, 422, 503))
    async def list_users(self, ctx: Ctx, ref: Ref, limit: Limit = 100, cursor: Cursor = None) -> UserPage:
        """A page of the tenant's users, oldest first (never a password hash or a token)."""
        return await UserService(ctx).list(ref, limit=limit, cursor=cursor)

    @get("/{user_id:str}", summary="Get a user", responses=problems(401, 404, 422, 503))
    async def get_user(self, ctx: Ctx, ref: Ref, user_id: UserId) -> UserView:
        """One user."""
        return await UserService(ctx).get(ref, user_id)

    @patch("/{user_id:str}", summary="Change a user", responses=problems(401, 404, 409, 413, 415, 422, 503))
    async def update(
        self, request: Request[Any, Any, Any], ctx: Ctx, ref: Ref, user_id: UserId, data: JSONBody[UserUpdate]
    ) -> UserView:
        """``role``, ``name``, ``disabled``; a changed role or a disable ends the user's sessions."""
        return await UserService(ctx).update(ref, user_id, data, actor=Actor(actor(request)))

    @delete("/{user_id:str}", status_code=204, summary="Delete a user", responses=problems(401, 404, 422, 503))
    async def delete_user(self, request: Request[Any, Any, Any], ctx: Ctx, ref: Ref, user_id: UserId) -> None:
        """The user's sessions end; their access tokens are refused by the gateways within seconds."""
        await UserService(ctx).delete(ref, user_id, actor=Actor(actor(request)))

    @post(
        "/{user_id:str}/invitation",
        status_code=201,
        summary="Invite a user again",
        responses=problems(401, 404, 409, 422, 503),
    )
    async def invite(self, request: Request[Any, Any, Any], ctx: Ctx, ref: Ref, user_id: UserId) -> InvitationView:
        """A new single-use invitation (to set a forgotten password, too); earlier unused ones stop working."""
        return await UserService(ctx).invite(ref, user_id, actor=Actor(actor(request)))


_AUTH = {SCOPE_OPT: USERS_AUTHENTICATE}
_AUTH_SECURITY = service_security(USERS_AUTHENTICATE)


class AuthController(Controller):
    """Sign-in for gateways: the password is checked here, the gateway signs the access token."""

    path = "/internal/v1/auth"
    guards = [service_guard]  # noqa: RUF012
    tags = ["internal"]  # noqa: RUF012
    opt = _AUTH
    security = _AUTH_SECURITY

    @post("/login", status_code=200, summary="Sign a user in", responses=problems(401, 403, 404, 422, 429, 503))
    async def login(self, ctx: Ctx, data: JSONBody[LoginRequest]) -> SessionGrant:
        """An unknown email and a wrong password get the same 401 ``invalid_credentials``, in the same time."""
        return await AuthService(ctx).login(data)

    @post(
        "/accept-invitation",
        status_code=200,
        summary="Accept an invitation",
        responses=problems(401, 403, 404, 422, 503),
    )
    async def accept(self, ctx: Ctx, data: JSONBody[AcceptInvitationRequest]) -> SessionGrant:
        """Set the password and sign in; the invitation is spent."""
        return await AuthService(ctx).accept_invitation(data)

    @post("/refresh", status_code=200, summary="Refresh a session", responses=problems(401, 403, 404, 422, 503))
    async def refresh(self, ctx: Ctx, data: JSONBody[RefreshRequest]) -> SessionGrant:
        """The next refresh token; a spent one revokes its whole session."""
        return await AuthService(ctx).refresh(data)

    @post("/logout", status_code=204, summary="End a session", responses=problems(401, 403, 422, 503))
    async def logout(self, ctx: Ctx, data: JSONBody[RefreshRequest]) -> None:
        """The refresh token's whole session ends."""
        await AuthService(ctx).logout(data)

    @post("/password", status_code=204, summary="Change a password", responses=problems(401, 403, 404, 422, 429, 503))
    async def password(self, ctx: Ctx, data: JSONBody[PasswordChangeRequest]) -> None:
        """The user's other sessions end."""
        await AuthService(ctx).change_password(data)

    @post(
        "/signup",
        status_code=201,
        summary="Self-service sign-up",
        responses=problems(401, 403, 404, 409, 422, 429, 503),
    )
    async def signup(self, ctx: Ctx, data: JSONBody[SignupRequest]) -> SignupResult:
        """A new tenant and its admin (404 unless SIGNUP_ENABLED)."""
        return await sign_up(ctx, data)


class TenantFacingController(Controller):
    """What a tenant's own users see through a gateway: a user, the tenant, and (for its admins) its users."""

    path = "/internal/v1/tenants/{tenant_id:str}"
    guards = [service_guard]  # noqa: RUF012
    tags = ["internal"]  # noqa: RUF012
    opt = _AUTH
    security = _AUTH_SECURITY

    @get("/info", summary="A tenant, as its users see it", responses=problems(401, 403, 404, 422, 503))
    async def info(self, ctx: Ctx, tenant_id: TenantId) -> TenantInfo:
        """Name, plan, status, limits and usage (quota counters and database size)."""
        async with ctx.sessions() as session:
            tenant = await tenant_by_id(session, tenant_id)
        view = await TenantService(ctx).get(str(tenant.id))
        usage = await tenant_usage(ctx, view)
        return TenantInfo(
            id=view.id,
            slug=view.slug,
            name=view.name,
            plan=view.plan,
            status=view.status,
            limits=view.limits,
            usage=TenantUsageInfo(
                requests_today=usage.requests_day.used if usage.requests_day else None,
                requests_this_minute=usage.requests_minute.used if usage.requests_minute else None,
                database_bytes=usage.database.size_bytes,
            ),
        )

    @get("/users/{user_id:str}", summary="One user of a tenant", responses=problems(401, 403, 404, 422, 503))
    async def user(self, ctx: Ctx, tenant_id: TenantId, user_id: UserId) -> UserInfo:
        """For ``/_gateway/me``."""
        return await AuthService(ctx).user_info(tenant_id, user_id)

    @get("/users", summary="List a tenant's users (its admins)", responses=problems(401, 403, 404, 422, 503))
    async def list_users(
        self, request: Request[Any, Any, Any], ctx: Ctx, tenant_id: TenantId, limit: Limit = 100, cursor: Cursor = None
    ) -> UserPage:
        """As ``GET /admin/tenants/{ref}/users``, for the admin named by ``X-On-Behalf-Of``."""
        await UserService(ctx).acting_admin(tenant_id, request.headers.get(ON_BEHALF_HEADER))
        return await UserService(ctx).list(tenant_id, limit=limit, cursor=cursor)

    @post(
        "/users",
        status_code=201,
        summary="Create a user (its admins)",
        responses=problems(401, 403, 404, 409, 422, 503),
    )
    async def create_user(
        self, request: Request[Any, Any, Any], ctx: Ctx, tenant_id: TenantId, data: JSONBody[UserCreate]
    ) -> UserCreated:
        """As ``POST /admin/tenants/{ref}/users``."""
        acting = await UserService(ctx).acting_admin(tenant_id, request.headers.get(ON_BEHALF_HEADER))
        return await UserService(ctx).create(tenant_id, data, actor=acting)

    @patch(
        "/users/{user_id:str}", summary="Change a user (its admins)", responses=problems(401, 403, 404, 409, 422, 503)
    )
    async def update_user(
        self,
        request: Request[Any, Any, Any],
        ctx: Ctx,
        tenant_id: TenantId,
        user_id: UserId,
        data: JSONBody[UserUpdate],
    ) -> UserView:
        """As ``PATCH /admin/tenants/{ref}/users/{id}``; an admin cannot demote, disable or delete themselves."""
        acting = await UserService(ctx).acting_admin(tenant_id, request.headers.get(ON_BEHALF_HEADER))
        return await UserService(ctx).update(tenant_id, user_id, data, actor=acting)

    @delete(
        "/users/{user_id:str}",
        status_code=204,
        summary="Delete a user (its admins)",
        responses=problems(401, 403, 404, 409, 422, 503),
    )
    async def delete_user(
        self, request: Request[Any, Any, Any], ctx: Ctx, tenant_id: TenantId, user_id: UserId
    ) -> None:
        """As ``DELETE /admin/tenants/{ref}/users/{id}``."""
        acting = await UserService(ctx).acting_admin(tenant_id, request.headers.get(ON_BEHALF_HEADER))
        await UserService(ctx).delete(tenant_id, user_id, actor=acting)
