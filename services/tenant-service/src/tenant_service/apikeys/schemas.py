"""Request and response bodies of the API key endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

Scope = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9:._*-]{1,64}$")]


class ApiKeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /admin/tenants/{ref}/api-keys``."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[^\x00]*$")]
    scopes: Annotated[list[Scope], msgspec.Meta(max_length=32)] = msgspec.field(default_factory=list)
    expires_at: datetime | None = None


class ApiKeyRotate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST .../api-keys/{key_id}/rotate``."""

    grace_seconds: Annotated[int, msgspec.Meta(ge=0, le=30 * 86400)] | None = None


class ApiKeyView(msgspec.Struct):
    """A key as lists show it: never the secret."""

    id: str
    name: str
    prefix: str
    scopes: list[str]
    status: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    rotated_to: str | None


class ApiKeyCreatedView(ApiKeyView, kw_only=True):
    """A new key: the one response that carries ``key``."""

    key: str
    tenant_id: str
    replaces: str | None = None
    replaced_key_expires_at: datetime | None = None


class ApiKeyPage(msgspec.Struct):
    """A page of a tenant's keys (newest first)."""

    items: list[ApiKeyView]
    next_cursor: str | None = None
