"""Request and response bodies of ``/admin/webhooks`` (contract §13)."""

from datetime import datetime
from typing import Annotated

import msgspec

Url = Annotated[str, msgspec.Meta(min_length=1, max_length=2048, pattern=r"^[^\x00]*$")]
EventName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[^\x00]*$")]


class WebhookCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /admin/webhooks``: where to deliver, and which events (contract §13's names)."""

    url: Url
    events: Annotated[list[EventName], msgspec.Meta(min_length=1, max_length=32)]


class WebhookUpdate(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Body of ``PATCH /admin/webhooks/{id}``: a new URL, new events, ``enabled`` (false: nothing is sent to it;
    true: a disabled webhook's pending deliveries go on), or several (what is left out stays)."""

    url: Url | None = None
    events: Annotated[list[EventName], msgspec.Meta(min_length=1, max_length=32)] | None = None
    enabled: bool | None = None


#: The longest a replaced secret may keep signing after a rotation: a week.
MAX_GRACE_SECONDS = 7 * 24 * 3600


class WebhookRotate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /admin/webhooks/{id}/rotate-secret``: how long the replaced secret keeps signing, next to the
    new one (0: it stops at once)."""

    grace_seconds: Annotated[int, msgspec.Meta(ge=0, le=MAX_GRACE_SECONDS)] = 24 * 3600


class WebhookView(msgspec.Struct, kw_only=True):
    """A webhook subscription as the admin API shows it (never its secret), with how its deliveries go."""

    id: str
    url: str
    events: list[str]
    created_at: datetime
    created_by: str
    updated_at: datetime | None
    #: Until when the signing key the last rotation replaced still signs next to the current one (None: it does not).
    #: (Named so that no listing ever holds the word "secret".)
    rotation_ends_at: datetime | None
    consecutive_failures: int
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_error: str | None
    #: When the current run of failed attempts began (None: the last attempt succeeded, or none failed yet).
    failing_since: datetime | None
    #: False once disabled (every attempt failed for WEBHOOK_DISABLE_AFTER_HOURS, or by an admin): no event is queued
    #: for it and its pending deliveries wait until it is enabled again.
    enabled: bool
    disabled_at: datetime | None
    disabled_reason: str | None


class WebhookCreatedView(WebhookView, kw_only=True):
    """The created webhook (or the one whose secret was rotated) with its signing secret: the only responses that
    ever show it."""

    secret: str


class WebhookPage(msgspec.Struct):
    """A page of webhooks, oldest first."""

    items: list[WebhookView]
    next_cursor: str | None


class DeliveryView(msgspec.Struct, kw_only=True):
    """One event's delivery to one webhook: its state, attempts and the last answer."""

    id: str
    webhook_id: str
    event_id: str
    event_type: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None


class DeliveryPage(msgspec.Struct):
    """A page of deliveries, newest first."""

    items: list[DeliveryView]
    next_cursor: str | None
