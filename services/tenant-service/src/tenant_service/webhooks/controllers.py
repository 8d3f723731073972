"""HTTP endpoints under ``/admin/webhooks`` (contract §13)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Controller, Request, delete, get, patch, post
from litestar.params import JSONBody, PathParameter, QueryParameter

from tenant_service.auth import actor, admin_guard
from tenant_service.context import AppContext
from tenant_service.deps import Ctx
from tenant_service.openapi import ADMIN_SECURITY, OptionalBodyOperation, problems
from tenant_service.webhooks.schemas import (
    DeliveryPage,
    DeliveryView,
    WebhookCreate,
    WebhookCreatedView,
    WebhookPage,
    WebhookRotate,
    WebhookUpdate,
    WebhookView,
)
from tenant_service.webhooks.service import WebhookService

WebhookId = Annotated[str, PathParameter(description="Webhook id (UUID)", max_length=64)]
DeliveryId = Annotated[str, PathParameter(description="Delivery id (UUID)", max_length=64)]
Limit = Annotated[int, QueryParameter(ge=1, le=200)]
Cursor = Annotated[str | None, QueryParameter(required=False, max_length=512)]


def webhook_service(request: Request[Any, Any, Any], ctx: AppContext) -> WebhookService:
    """The service for a request, waking this process's dispatcher when a delivery is queued again (admin API and
    console alike)."""
    background = getattr(request.app.state, "background", None)
    return WebhookService(ctx, wake=getattr(background, "wake_webhooks", None))


class WebhookController(Controller):
    """Webhook subscriptions and their delivery log."""

    path = "/admin/webhooks"
    guards = [admin_guard]  # noqa: RUF012
    tags = ["webhooks"]  # noqa: RUF012
    security = ADMIN_SECURITY

    @post("/", status_code=201, summary="Create a webhook", responses=problems(401, 413, 415, 422, 503))
    async def create(
        self, request: Request[Any, Any, Any], ctx: Ctx, data: JSONBody[WebhookCreate]
    ) -> WebhookCreatedView:
        """The only response that ever contains the webhook's signing ``secret``."""
        return await webhook_service(request, ctx).create(data, actor=actor(request))

    @get("/", summary="List webhooks", responses=problems(401, 422, 503))
    async def list_webhooks(
        self, request: Request[Any, Any, Any], ctx: Ctx, limit: Limit = 50, cursor: Cursor = None
    ) -> WebhookPage:
        """A page of webhooks, oldest first, never with secrets; pass ``next_cursor`` back as ``cursor``."""
        return await webhook_service(request, ctx).list(limit=limit, cursor=cursor)

    @get("/{webhook_id:str}", summary="Get a webhook", responses=problems(401, 404, 422, 503))
    async def get_webhook(self, request: Request[Any, Any, Any], ctx: Ctx, webhook_id: WebhookId) -> WebhookView:
        """One webhook, with its delivery failure state."""
        return await webhook_service(request, ctx).get(webhook_id)

    @patch(
        "/{webhook_id:str}",
        summary="Change a webhook's URL or events",
        responses=problems(401, 404, 413, 415, 422, 503),
    )
    async def update_webhook(
        self, request: Request[Any, Any, Any], ctx: Ctx, webhook_id: WebhookId, data: JSONBody[WebhookUpdate]
    ) -> WebhookView:
        """``url``, ``events`` or both (the rules of creation); queued deliveries go to the new URL."""
        return await webhook_service(request, ctx).update(webhook_id, data, actor=actor(request))

    @post(
        "/{webhook_id:str}/rotate-secret",
        status_code=200,
        summary="Rotate a webhook's signing secret",
        operation_class=OptionalBodyOperation,
        responses=problems(401, 404, 413, 415, 422, 503),
    )
    async def rotate_secret(
        self,
        request: Request[Any, Any, Any],
        ctx: Ctx,
        webhook_id: WebhookId,
        data: JSONBody[WebhookRotate | None] = None,
    ) -> WebhookCreatedView:
        """A new ``secret``, shown this once; the replaced one keeps signing next to it for ``grace_seconds``
        (default 86400; 0: it stops at once)."""
        service = webhook_service(request, ctx)
        return await service.rotate_secret(webhook_id, data or WebhookRotate(), actor=actor(request))

    @delete("/{webhook_id:str}", status_code=204, summary="Delete a webhook", responses=problems(401, 404, 422, 503))
    async def delete_webhook(self, request: Request[Any, Any, Any], ctx: Ctx, webhook_id: WebhookId) -> None:
        """Nothing more is delivered to it; its pending deliveries are dropped."""
        await webhook_service(request, ctx).delete(webhook_id, actor=actor(request))

    @get("/{webhook_id:str}/deliveries", summary="List a webhook's deliveries", responses=problems(401, 404, 422, 503))
    async def deliveries(
        self,
        request: Request[Any, Any, Any],
        ctx: Ctx,
        webhook_id: WebhookId,
        status: Annotated[Literal["pending", "delivered", "failed"] | None, QueryParameter(required=False)] = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> DeliveryPage:
        """Newest first: status, attempts, the last status code and error, and when."""
        return await webhook_service(request, ctx).deliveries(webhook_id, status=status, limit=limit, cursor=cursor)

    @post(
        "/{webhook_id:str}/deliveries/{delivery_id:str}/redeliver",
        status_code=202,
        summary="Redeliver one delivery",
        responses=problems(401, 404, 409, 422, 503),
    )
    async def redeliver(
        self, request: Request[Any, Any, Any], ctx: Ctx, webhook_id: WebhookId, delivery_id: DeliveryId
    ) -> DeliveryView:
        """Queue the delivery again, now, with a fresh retry period (the same event id: receivers deduplicate)."""
        return await webhook_service(request, ctx).redeliver(webhook_id, delivery_id, actor=actor(request))
