"""Bearer-token guards: admin tokens for ``/admin``, service tokens for ``/internal``.

Every configured token is compared, in constant time, on every request, so timing says nothing about which
token (or how much of one) matched.
"""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from tenantry_common.problems import UnauthorizedError

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tenantry"'}


def _bearer(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def match_token(presented: str, tokens: dict[str, str]) -> str | None:
    """The name of the token equal to ``presented``, comparing against all of them in constant time."""
    found: str | None = None
    encoded = presented.encode()
    for name, token in tokens.items():
        if hmac.compare_digest(encoded, token.encode()) and presented:
            found = name
    return found


def _guard(connection: ASGIConnection[Any, Any, Any, Any], tokens: dict[str, str], kind: str) -> None:
    name = match_token(_bearer(connection), tokens)
    if name is None:
        raise UnauthorizedError("a valid bearer token is required", headers=_CHALLENGE)
    connection.scope.setdefault("state", {})["actor"] = f"{kind}:{name}"


def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Allow only admin tokens."""
    _guard(connection, connection.app.state.ctx.settings.security.admin_tokens, "admin")


def service_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Allow only service (tenant app) tokens."""
    _guard(connection, connection.app.state.ctx.settings.security.service_tokens, "service")


def actor(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """Who is acting, as set by a guard."""
    return str(connection.scope.get("state", {}).get("actor", "unknown"))
