"""HTTP endpoints under ``/admin/servers`` and ``/admin/tenants/{ref}/move`` (contract §11)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.params import JSONBody, PathParameter

from tenant_service.auth import actor, admin_guard
from tenant_service.backups.controllers import accepted
from tenant_service.deps import Ctx
from tenant_service.openapi import ADMIN_SECURITY, problems
from tenant_service.operations.schemas import OperationView
from tenant_service.servers.moves import request_drain, request_move
from tenant_service.servers.schemas import MoveRequest, ServerCreate, ServerPage, ServerUpdate, ServerView
from tenant_service.servers.service import ServerService

Name = Annotated[str, PathParameter(description="Server name", max_length=64)]
Ref = Annotated[str, PathParameter(description="Tenant id (UUID) or slug", max_length=64)]


class ServerController(Controller):
    """PostgreSQL servers that hold tenant databases."""

    path = "/admin/servers"
    guards = [admin_guard]  # noqa: RUF012
    tags = ["servers"]  # noqa: RUF012
    security = ADMIN_SECURITY

    @get("/", summary="List servers", responses=problems(401, 503))
    async def list_servers(self, ctx: Ctx) -> ServerPage:
        """Every registered server with its load; never a password."""
        return await ServerService(ctx).list()

    @post("/", status_code=201, summary="Register a server", responses=problems(401, 409, 413, 415, 422, 503))
    async def register(self, request: Request[Any, Any, Any], ctx: Ctx, data: JSONBody[ServerCreate]) -> ServerView:
        """Checked (reachable, PostgreSQL ≥ 15, CREATEDB and CREATEROLE) and given the template; 422
        ``server_unusable`` says why not."""
        return await ServerService(ctx).register(data, actor=actor(request))

    @get("/{name:str}", summary="One server", responses=problems(401, 404, 422, 503))
    async def get_server(self, ctx: Ctx, name: Name) -> ServerView:
        """Its state, capacity, labels and load."""
        return await ServerService(ctx).get(name)

    @patch("/{name:str}", summary="Change a server", responses=problems(401, 404, 413, 415, 422, 503))
    async def update(
        self, request: Request[Any, Any, Any], ctx: Ctx, name: Name, data: JSONBody[ServerUpdate]
    ) -> ServerView:
        """``state`` (``active``, ``draining``, ``disabled``), ``capacity`` and ``labels``."""
        return await ServerService(ctx).update(name, data, actor=actor(request))

    @delete("/{name:str}", status_code=204, summary="Remove a server", responses=problems(401, 404, 409, 422, 503))
    async def remove(self, request: Request[Any, Any, Any], ctx: Ctx, name: Name) -> None:
        """Only once it holds no tenants (409 ``server_not_empty``)."""
        await ServerService(ctx).delete(name, actor=actor(request))

    @post("/{name:str}/drain", status_code=202, summary="Drain a server", responses=problems(401, 404, 409, 422, 503))
    async def drain(self, request: Request[Any, Any, Any], ctx: Ctx, name: Name) -> Response[OperationView]:
        """A ``drain`` operation: every tenant moved off, then the server is ``disabled``."""
        op = await request_drain(ctx, name, actor=actor(request))
        request.app.state.background.wake_operations()
        return accepted(op)


class MoveController(Controller):
    """Moving a tenant's database to another server."""

    path = "/admin/tenants/{ref:str}/move"
    guards = [admin_guard]  # noqa: RUF012
    tags = ["servers"]  # noqa: RUF012
    security = ADMIN_SECURITY

    @post(
        "/",
        status_code=202,
        summary="Move the tenant's database",
        responses=problems(401, 404, 409, 413, 415, 422, 503),
    )
    async def move(
        self, request: Request[Any, Any, Any], ctx: Ctx, ref: Ref, data: JSONBody[MoveRequest]
    ) -> Response[OperationView]:
        """A ``move`` operation; the tenant keeps serving, its requests are held for the cutover only."""
        op = await request_move(ctx, ref, data, actor=actor(request))
        request.app.state.background.wake_operations()
        return accepted(op)
