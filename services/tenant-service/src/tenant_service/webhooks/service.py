"""Webhook subscriptions and their delivery log: everything ``/admin/webhooks`` does (contract §13)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, tuple_, update

from tenant_service.audit.service import record
from tenant_service.cursors import decode_cursor, split_page
from tenant_service.db.models import OutboxEvent, Webhook, WebhookDelivery
from tenant_service.outbox import EVENT_TYPES
from tenant_service.tenants.validation import check_upstream_url
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
from tenant_service.webhooks.signing import new_secret, secret_context
from tenantry_common.problems import ConflictError, FieldError, InvalidInputError, NotFoundError
from tenantry_common.timeutil import utcnow

if TYPE_CHECKING:
    from tenant_service.context import AppContext


class WebhookNotFoundError(NotFoundError):
    """No such webhook."""

    code = "webhook_not_found"


class DeliveryNotFoundError(NotFoundError):
    """No such delivery of this webhook."""

    code = "delivery_not_found"


class WebhookDisabledError(ConflictError):
    """The webhook is disabled: nothing is sent to it."""

    code = "webhook_disabled"


class DeliveryInProgressError(ConflictError):
    """The delivery is being attempted right now."""

    code = "delivery_in_progress"


def _uuid(raw: str, error: NotFoundError) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise error from None


def _fields(row: Webhook) -> dict[str, Any]:
    until = row.previous_secret_until
    return {
        "id": str(row.id),
        "url": row.url,
        "events": list(row.events),
        "created_at": row.created_at,
        "created_by": row.created_by,
        "updated_at": row.updated_at,
        "rotation_ends_at": until if until is not None and until > utcnow() else None,
        "consecutive_failures": row.consecutive_failures,
        "last_success_at": row.last_success_at,
        "last_failure_at": row.last_failure_at,
        "last_error": row.last_error,
        "failing_since": row.failing_since,
        "enabled": row.disabled_at is None,
        "disabled_at": row.disabled_at,
        "disabled_reason": row.disabled_reason,
    }


def webhook_view(row: Webhook) -> WebhookView:
    """The API view of a subscription (never its secret)."""
    return WebhookView(**_fields(row))


def delivery_view(row: WebhookDelivery, event_type: str) -> DeliveryView:
    """The API view of a delivery."""
    return DeliveryView(
        id=str(row.id),
        webhook_id=str(row.webhook_id),
        event_id=row.event_id,
        event_type=event_type,
        status=row.status,
        attempts=row.attempts,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        created_at=row.created_at,
        last_attempt_at=row.last_attempt_at,
        next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
        delivered_at=row.delivered_at,
    )


def check_events(events: list[str]) -> list[str]:
    """The subscribed event names, deduplicated in the contract's order.

    Raises:
        InvalidInputError: ``unknown_event``, naming the first unknown one.
    """
    for i, name in enumerate(events):
        if name not in EVENT_TYPES:
            raise InvalidInputError(
                f"unknown event {name!r}",
                code="unknown_event",
                errors=[FieldError(field=f"events[{i}]", message=f"must be one of {', '.join(EVENT_TYPES)}")],
            )
    wanted = set(events)
    return [name for name in EVENT_TYPES if name in wanted]


class WebhookService:
    """Subscriptions, shared by the HTTP API and the CLI."""

    def __init__(self, ctx: AppContext, *, wake: Callable[[], None] | None = None) -> None:
        self._ctx = ctx
        self._wake = wake

    async def create(self, data: WebhookCreate, *, actor: str) -> WebhookCreatedView:
        """A new subscription with a fresh signing secret, returned this once (stored sealed).

        Raises:
            InvalidInputError: a malformed URL, or an unknown event (``unknown_event``).
            UpstreamNotAllowedError: the URL's host is outside ``UPSTREAM_ALLOWLIST`` or never allowed.
        """
        ctx = self._ctx
        url = check_upstream_url(data.url, ctx.settings.lifecycle.upstream_allowlist, field="url")
        events = check_events(data.events)
        secret = new_secret()
        webhook_id = uuid.uuid4()
        async with ctx.sessions() as session, session.begin():
            row = Webhook(
                id=webhook_id,
                url=url,
                events=events,
                secret_enc=ctx.box.encrypt(secret, secret_context(webhook_id)),
                created_by=actor,
                created_at=utcnow(),
                consecutive_failures=0,
            )
            session.add(row)
            await session.flush()
            record(session, actor=actor, action="webhook.create", target=str(webhook_id),
                   after={"url": url, "events": events})  # fmt: skip
            fields = _fields(row)
        return WebhookCreatedView(**fields, secret=secret)

    async def list(self, *, limit: int = 50, cursor: str | None = None) -> WebhookPage:
        """A page of subscriptions, oldest first, never with secrets."""
        after = decode_cursor(cursor) if cursor else None
        query = select(Webhook)
        if after is not None:
            query = query.where(tuple_(Webhook.created_at, Webhook.id) > tuple_(*after))
        async with self._ctx.sessions() as session:
            rows = await session.execute(query.order_by(Webhook.created_at, Webhook.id).limit(limit + 1))
            page, next_cursor = split_page(list(rows.scalars()), limit)
        return WebhookPage(items=[webhook_view(r) for r in page], next_cursor=next_cursor)

    async def get(self, raw_id: str) -> WebhookView:
        """One subscription."""
        async with self._ctx.sessions() as session:
            return webhook_view(await self._find(session, raw_id))

    async def _find(self, session: Any, raw_id: str, *, lock: bool = False) -> Webhook:
        error = WebhookNotFoundError(f"no webhook {raw_id!r}")
        row = await session.get(Webhook, _uuid(raw_id, error), with_for_update=lock)
        if row is None:
            raise error
        return row  # type: ignore[no-any-return]

    async def update(self, raw_id: str, data: WebhookUpdate, *, actor: str) -> WebhookView:
        """A new URL and/or new events; the deliveries already queued go to the new URL, events emitted from now on
        are matched against the new list.

        Raises:
            InvalidInputError: nothing to change, a malformed URL, or an unknown event (``unknown_event``).
            UpstreamNotAllowedError: the URL's host is outside ``UPSTREAM_ALLOWLIST`` or never allowed.
        """
        ctx = self._ctx
        if data.url is None and data.events is None and data.enabled is None:
            raise InvalidInputError(
                "nothing to change", errors=[FieldError(field="body", message="give url, events or enabled")]
            )
        url = check_upstream_url(data.url, ctx.settings.lifecycle.upstream_allowlist, field="url") if data.url else None
        events = check_events(data.events) if data.events is not None else None
        async with ctx.sessions() as session, session.begin():
            row = await self._find(session, raw_id, lock=True)
            before = {"url": row.url, "events": list(row.events), "enabled": row.disabled_at is None}
            if url is not None:
                row.url = url
            if events is not None:
                row.events = events
            now = utcnow()
            if data.enabled is True and row.disabled_at is not None:
                # A new start: the failing run (and its clock towards disabling) begins again with the next failure.
                row.disabled_at = row.disabled_reason = row.failing_since = None
            elif data.enabled is False and row.disabled_at is None:
                row.disabled_at, row.disabled_reason = now, f"disabled by {actor}"
            row.updated_at = now
            await session.flush()
            after = {"url": row.url, "events": list(row.events), "enabled": row.disabled_at is None}
            record(session, actor=actor, action="webhook.update", target=str(row.id), before=before, after=after)
            view = webhook_view(row)
        if data.enabled and self._wake is not None:
            self._wake()  # its pending deliveries may be due
        return view

    async def rotate_secret(self, raw_id: str, data: WebhookRotate, *, actor: str) -> WebhookCreatedView:
        """A fresh signing secret, returned this once. The replaced one keeps signing, next to it, for
        ``grace_seconds`` (every delivery then carries both signatures), so a receiver can switch without losing a
        delivery; a secret replaced earlier and still in its grace period stops at once."""
        ctx = self._ctx
        secret = new_secret()
        async with ctx.sessions() as session, session.begin():
            row = await self._find(session, raw_id, lock=True)
            now = utcnow()
            context = secret_context(row.id)
            if data.grace_seconds > 0:
                row.previous_secret_enc = row.secret_enc
                row.previous_secret_until = now + timedelta(seconds=data.grace_seconds)
            else:
                row.previous_secret_enc = row.previous_secret_until = None
            row.secret_enc = ctx.box.encrypt(secret, context)
            row.updated_at = now
            await session.flush()
            record(session, actor=actor, action="webhook.rotate_secret", target=str(row.id),
                   after={"grace_seconds": data.grace_seconds})  # fmt: skip
            fields = _fields(row)
        return WebhookCreatedView(**fields, secret=secret)

    async def delete(self, raw_id: str, *, actor: str) -> None:
        """Remove a subscription and its pending deliveries: nothing more is sent to it."""
        async with self._ctx.sessions() as session, session.begin():
            row = await self._find(session, raw_id)
            before = {"url": row.url, "events": list(row.events)}
            await session.delete(row)
            record(session, actor=actor, action="webhook.delete", target=str(row.id), before=before)

    async def deliveries(
        self, raw_id: str, *, status: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> DeliveryPage:
        """A page of the subscription's deliveries, newest first."""
        if status is not None and status not in ("pending", "delivered", "failed"):
            raise InvalidInputError(
                "invalid status filter",
                errors=[FieldError(field="status", message="must be one of pending, delivered, failed")],
            )
        after = decode_cursor(cursor) if cursor else None
        async with self._ctx.sessions() as session:
            webhook = await self._find(session, raw_id)
            query = (
                select(WebhookDelivery, OutboxEvent.type)
                .join(OutboxEvent, OutboxEvent.id == WebhookDelivery.event_id)
                .where(WebhookDelivery.webhook_id == webhook.id)
            )
            if status is not None:
                query = query.where(WebhookDelivery.status == status)
            if after is not None:
                query = query.where(tuple_(WebhookDelivery.created_at, WebhookDelivery.id) < tuple_(*after))
            query = query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc()).limit(limit + 1)
            rows = list((await session.execute(query)).all())
        types = {row[0].id: row[1] for row in rows}
        page, next_cursor = split_page([row[0] for row in rows], limit)
        return DeliveryPage(items=[delivery_view(d, types[d.id]) for d in page], next_cursor=next_cursor)

    async def redeliver(self, raw_id: str, raw_delivery: str, *, actor: str) -> DeliveryView:
        """Queue one delivery again, now (whatever its state), with a fresh retry period.

        Raises:
            DeliveryInProgressError: it is being attempted right now.
            WebhookDisabledError: the webhook is disabled (enable it first).
        """
        ctx = self._ctx
        missing = DeliveryNotFoundError(f"no delivery {raw_delivery!r} of this webhook")
        async with ctx.sessions() as session, session.begin():
            webhook = await self._find(session, raw_id)
            row = await session.get(WebhookDelivery, _uuid(raw_delivery, missing), with_for_update=True)
            if row is None or row.webhook_id != webhook.id:
                raise missing
            now = utcnow()
            if row.status == "pending" and row.lease_until is not None and row.lease_until > now:
                raise DeliveryInProgressError("the delivery is being attempted right now; try again shortly")
            if webhook.disabled_at is not None:
                raise WebhookDisabledError("the webhook is disabled: enable it first (PATCH with enabled: true)")
            before = {"status": row.status, "attempts": row.attempts}
            await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == row.id)
                .values(
                    status="pending",
                    next_attempt_at=now,
                    lease_until=None,
                    retry_until=now + timedelta(hours=ctx.settings.webhooks.retry_hours),
                )
            )
            record(session, actor=actor, action="webhook.redeliver", target=str(row.id),
                   after={**before, "status": "pending", "webhook_id": str(webhook.id)})  # fmt: skip
            await session.refresh(row)
            event_type = await session.scalar(select(OutboxEvent.type).where(OutboxEvent.id == row.event_id))
            view = delivery_view(row, event_type or "")
        if self._wake is not None:
            self._wake()
        return view
