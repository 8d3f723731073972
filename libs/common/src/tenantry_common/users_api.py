"""Tenant users (contract §12): the shapes the gateway and the tenant-service exchange over the internal API.

The gateway answers ``/_gateway/auth/*``, ``/_gateway/me``, ``/_gateway/tenant``, ``/_gateway/users`` and
``/_gateway/signup``; it holds no password hash and no refresh token. It resolves the tenant from the request's
location sources, then asks the tenant-service (service token with the ``users:authenticate`` scope):

=========================================================  ====================================================
``POST /internal/v1/auth/login``                             :class:`LoginRequest` → :class:`SessionGrant`
``POST /internal/v1/auth/accept-invitation``                 :class:`AcceptInvitationRequest` → :class:`SessionGrant`
``POST /internal/v1/auth/refresh``                           :class:`RefreshRequest` → :class:`SessionGrant`
``POST /internal/v1/auth/logout``                            :class:`RefreshRequest` → 204
``POST /internal/v1/auth/password``                          :class:`PasswordChangeRequest` → 204
``POST /internal/v1/auth/signup``                            :class:`SignupRequest` → 201 :class:`SignupResult`
``GET /internal/v1/tenants/{tid}/users/{uid}``               :class:`UserInfo`
``GET /internal/v1/tenants/{tid}/info``                      :class:`TenantInfo`
``GET|POST /internal/v1/tenants/{tid}/users``                the admin API's user list / create, for the tenant's
``PATCH|DELETE /internal/v1/tenants/{tid}/users/{uid}``      own admins (header ``X-On-Behalf-Of``)
=========================================================  ====================================================

A refusal is a problem+json the gateway relays as it is (status, body, ``Retry-After``). The gateway signs the
access token (claims ``sub`` = the user's id, ``tid``, ``role``, ``sid`` = :attr:`SessionGrant.session_id`).
Sessions revoked in the last day are in the directory feed (``DirectoryTenant.revoked_sessions``): an access
token of a revoked session is refused by every gateway within seconds, before it expires.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

#: The roles a tenant's user (or an external issuer's token, through its ``role_claim``) can have.
ROLES: Final = ("admin", "user", "viewer")
Role = Literal["admin", "user", "viewer"]
#: Who acts for a tenant admin in ``/internal/v1/tenants/{tid}/users``: ``user:<id>`` or ``idp:<issuer id>:<sub>``.
ON_BEHALF_HEADER: Final = "x-on-behalf-of"

_Text = Annotated[str, msgspec.Meta(max_length=1024)]
_Address = Annotated[str, msgspec.Meta(max_length=64)]
_Id = Annotated[str, msgspec.Meta(max_length=64)]


class UserInfo(msgspec.Struct, frozen=True):
    """A tenant's user, as ``/_gateway/me`` shows it (never a password hash or a token)."""

    id: str
    email: str
    name: str | None
    role: Role
    tenant_id: str


class LoginRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A login on the tenant the gateway resolved; ``client_address`` is the client's (brute-force counters)."""

    tenant_id: _Id
    email: _Text
    password: _Text
    client_address: _Address


class AcceptInvitationRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Set the invited user's password; ``tenant_id``: the tenant the request named, if it named one."""

    token: _Text
    password: _Text
    client_address: _Address
    tenant_id: _Id | None = None


class RefreshRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Refresh (or log out) with a refresh token; ``tenant_id``: the tenant the request named, if any."""

    refresh_token: _Text
    tenant_id: _Id | None = None


class PasswordChangeRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A signed-in user changes their password; every other session of the user ends (``session_id`` stays)."""

    tenant_id: _Id
    user_id: _Id
    session_id: _Id
    current_password: _Text
    new_password: _Text
    client_address: _Address


class SignupRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Self-service sign-up: a new tenant on ``DEFAULT_PLAN`` and its first user, an admin."""

    slug: _Text
    name: _Text
    email: _Text
    password: _Text
    client_address: _Address


class SessionGrant(msgspec.Struct, frozen=True):
    """A signed-in user: who, the session (refresh-token family) and its new refresh token (shown once)."""

    user: UserInfo
    session_id: str
    refresh_token: str
    refresh_expires_in: int

    def __repr__(self) -> str:
        return f"SessionGrant(user={self.user!r}, session_id={self.session_id!r}, refresh_token='[redacted]')"


class SignupTenant(msgspec.Struct, frozen=True):
    """The tenant a sign-up created."""

    id: str
    slug: str
    name: str
    plan: str
    status: str


class SignupResult(msgspec.Struct, frozen=True):
    """What a sign-up created, and its admin signed in."""

    tenant: SignupTenant
    grant: SessionGrant


class TenantUsageInfo(msgspec.Struct, frozen=True):
    """A tenant's usage as its own users see it (``None``: not available right now)."""

    requests_today: int | None
    requests_this_minute: int | None
    database_bytes: int | None


class TenantInfo(msgspec.Struct, frozen=True):
    """``GET /_gateway/tenant``: the caller's tenant."""

    id: str
    slug: str
    name: str
    plan: str
    status: str
    limits: dict[str, int]
    usage: TenantUsageInfo


decode_session_grant = msgspec.json.Decoder(SessionGrant).decode
decode_signup_result = msgspec.json.Decoder(SignupResult).decode
decode_user_info = msgspec.json.Decoder(UserInfo).decode
decode_tenant_info = msgspec.json.Decoder(TenantInfo).decode
