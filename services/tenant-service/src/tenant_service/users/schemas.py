"""Bodies of the users API: ``/admin/tenants/{ref}/users`` (and the tenant admins' ``/_gateway/users``)."""

from datetime import datetime
from typing import Annotated

import msgspec

from tenantry_common.users_api import Role

#: A deliberately loose shape (one ``@``, something on each side, no spaces or control characters): the address
#: is checked by the invitation reaching its owner, not by a regular expression.
Email = Annotated[str, msgspec.Meta(min_length=3, max_length=254, pattern=r"^[^\s@\x00-\x1f]+@[^\s@\x00-\x1f]+$")]
UserName = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]


class UserCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST .../users``: the user gets an invitation to set their password."""

    email: Email
    role: Role = "user"
    name: UserName | None = None


class UserUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``PATCH .../users/{id}``; a changed role or ``disabled: true`` ends the user's sessions."""

    role: Role | msgspec.UnsetType = msgspec.UNSET
    name: UserName | msgspec.UnsetType | None = msgspec.UNSET
    disabled: bool | msgspec.UnsetType = msgspec.UNSET


class UserView(msgspec.Struct):
    """A user (never a password hash or a token). ``status``: ``invited`` (no password yet), ``active`` or
    ``disabled``."""

    id: str
    tenant_id: str
    email: str
    name: str | None
    role: str
    status: str
    created_at: datetime
    updated_at: datetime
    last_login_at: datetime | None


class InvitationView(msgspec.Struct):
    """A single-use invitation; ``token`` is shown once (``POST /_gateway/auth/accept-invitation`` takes it)."""

    token: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"InvitationView(token='[redacted]', expires_at={self.expires_at!r})"


class UserCreated(msgspec.Struct):
    """Answer of ``POST .../users``."""

    user: UserView
    invitation: InvitationView


class UserPage(msgspec.Struct):
    """A page of users, oldest first; pass ``next_cursor`` back as ``cursor``."""

    items: list[UserView]
    next_cursor: str | None
