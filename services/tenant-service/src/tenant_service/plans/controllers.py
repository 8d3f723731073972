"""HTTP endpoints under ``/admin/plans``."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, put
from litestar.params import JSONBody, PathParameter

from tenant_service.auth import actor, admin_guard
from tenant_service.deps import Ctx
from tenant_service.openapi import ADMIN_SECURITY, problems
from tenant_service.plans.service import PLAN_NAME, PlanPage, PlanPut, PlanService, PlanView


class PlanController(Controller):
    """Plans and their limits."""

    path = "/admin/plans"
    guards = [admin_guard]  # noqa: RUF012
    tags = ["plans"]  # noqa: RUF012
    security = ADMIN_SECURITY

    @get("/", summary="List plans", responses=problems(401, 503))
    async def list_plans(self, ctx: Ctx) -> PlanPage:
        """Every plan."""
        return await PlanService(ctx).list()

    @put(
        "/{name:str}",
        status_code=200,
        summary="Create or replace a plan",
        responses=problems(401, 404, 413, 415, 422, 503),
    )
    async def put_plan(
        self,
        request: Request[Any, Any, Any],
        ctx: Ctx,
        name: Annotated[str, PathParameter(pattern=PLAN_NAME.pattern)],
        data: JSONBody[PlanPut],
    ) -> PlanView:
        """Tenants on the plan get the new limits within seconds."""
        return await PlanService(ctx).put(name, data, actor=actor(request))
