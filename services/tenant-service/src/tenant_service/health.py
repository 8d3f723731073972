"""Liveness, readiness and metrics."""

from __future__ import annotations

import asyncio

import msgspec
from litestar import Response, get
from litestar.openapi.datastructures import ResponseSpec
from sqlalchemy import text

from tenant_service.deps import Ctx


class Health(msgspec.Struct):
    """Health status with the state of each dependency."""

    status: str
    checks: dict[str, str] = msgspec.field(default_factory=dict)


@get("/healthz", tags=["health"], summary="Liveness")
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@get(
    "/readyz",
    tags=["health"],
    summary="Readiness",
    responses={503: ResponseSpec(data_container=Health, description="A dependency is unreachable")},
)
async def readyz(ctx: Ctx) -> Response[Health]:
    """The registry database, the tenant cluster and Redis answer within their timeouts."""
    checks: dict[str, str] = {}

    async def database() -> None:
        async with ctx.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    for name, check in (("database", database), ("tenant_cluster", ctx.cluster.ping)):
        try:
            await asyncio.wait_for(check(), timeout=ctx.settings.database.connect_timeout)
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            checks[name] = f"error: {type(exc).__name__}"
    if ctx.redis is not None:
        try:
            await asyncio.wait_for(ctx.redis.ping(), timeout=ctx.settings.redis_timeout * 2)
            checks["redis"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["redis"] = f"error: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return Response(Health(status="ok" if ready else "unavailable", checks=checks), status_code=200 if ready else 503)
