"""HTTP endpoints of the usage history: the gateways' flushes (``POST /internal/v1/usage``, scope ``usage:write``)."""

from __future__ import annotations

from litestar import Controller, post
from litestar.params import JSONBody

from tenant_service.auth import service_guard
from tenant_service.deps import Ctx
from tenant_service.internal.scopes import SCOPE_OPT, USAGE_WRITE
from tenant_service.openapi import problems, service_security
from tenant_service.usage.ingest import ingest_batch
from tenantry_common.usage_api import UsageAck, UsageBatch


class UsageIngestController(Controller):
    """What gateways report: the requests each worker counted, in batches retried under their id."""

    path = "/internal/v1/usage"
    guards = [service_guard]  # noqa: RUF012
    tags = ["internal"]  # noqa: RUF012

    @post(
        "/",
        status_code=200,
        summary="Add a gateway's usage batch (counted once per batch id)",
        responses=problems(401, 403, 413, 415, 422, 503),
        opt={SCOPE_OPT: USAGE_WRITE},
        security=service_security(USAGE_WRITE),
    )
    async def ingest(self, ctx: Ctx, data: JSONBody[UsageBatch]) -> UsageAck:
        """Counts a batch once: a batch id already seen is acknowledged with ``duplicate: true`` and counts nothing."""
        return await ingest_batch(ctx, data)
