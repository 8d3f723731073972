"""Scopes of service tokens: each internal endpoint names the one it needs, and a token holds only what its app uses.

A gateway reads the directory; a tenant app has credentials vended. Neither needs the other's power, so a leaked
app token cannot map every tenant, and a leaked gateway token cannot fetch any tenant's database password.
"""

from __future__ import annotations

from typing import Final

DIRECTORY_READ: Final = "directory:read"
"""Read the tenant directory feed (``/internal/v1/directory``): what gateways sync from."""

CREDENTIALS_VEND: Final = "credentials:vend"
"""Have a tenant's database credentials vended (``/internal/v1/tenants/{id}/database``): what tenant apps do."""

USERS_AUTHENTICATE: Final = "users:authenticate"
"""Sign a tenant's users in, refresh and end their sessions, sign-ups, and the tenant-facing ``/me``, ``/tenant`` and
``/users`` (``/internal/v1/auth/*``, ``/internal/v1/tenants/{id}/users|info``): what gateways do (contract §12)."""

USAGE_WRITE: Final = "usage:write"
"""Report the requests counted for the usage history (``POST /internal/v1/usage``): what gateways do (contract §13)."""

SERVICE_SCOPES: Final = frozenset({DIRECTORY_READ, CREDENTIALS_VEND, USERS_AUTHENTICATE, USAGE_WRITE})
"""Every scope a service token can hold."""

SCOPE_OPT: Final = "service_scope"
"""Key of a route handler's ``opt`` naming the scope it needs (read by :func:`tenant_service.auth.service_guard`)."""
