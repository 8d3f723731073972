"""Bearer-token guards: admin tokens for ``/admin``, service tokens (with the endpoint's scope) for ``/internal``.

Every configured token is compared, in constant time, on every request, so timing says nothing about which
token (or how much of one) matched.
"""

from __future__ import annotations

import hmac
from typing import Any

import structlog
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from tenant_service.config import Settings
from tenant_service.internal.scopes import SCOPE_OPT, SERVICE_SCOPES
from tenantry_common.problems import ForbiddenError, UnauthorizedError

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tenantry"'}
_log = structlog.get_logger("tenantry.auth")


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


def _authenticate(connection: ASGIConnection[Any, Any, Any, Any], tokens: dict[str, str], kind: str) -> str:
    """The name of the presented token, recorded as the actor; 401 when it is none of ``tokens``."""
    name = match_token(_bearer(connection), tokens)
    if name is None:
        raise UnauthorizedError("a valid bearer token is required", headers=_CHALLENGE)
    connection.scope.setdefault("state", {})["actor"] = f"{kind}:{name}"
    return name


def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Allow only admin tokens."""
    _authenticate(connection, connection.app.state.ctx.settings.security.admin_tokens, "admin")


def service_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Allow only service tokens that hold the scope the handler names in ``opt[SCOPE_OPT]``.

    An unknown token gets 401; a known one without that scope 403 ``insufficient_scope`` (RFC 6750). A handler
    that names no scope is open to no token at all.
    """
    tokens = connection.app.state.ctx.settings.security.service_tokens
    name = _authenticate(connection, {n: t.token for n, t in tokens.items()}, "service")
    needed = handler.opt.get(SCOPE_OPT)
    if needed not in tokens[name].scopes:
        _log.warning("service_scope_denied", service=name, scope=needed, path=connection.url.path)
        raise ForbiddenError(
            f"the service token {name!r} does not hold the scope {needed!r} this endpoint needs",
            code="insufficient_scope",
            headers={"WWW-Authenticate": f'Bearer realm="tenantry", error="insufficient_scope", scope="{needed}"'},
        )


def actor(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """Who is acting, as set by a guard."""
    return str(connection.scope.get("state", {}).get("actor", "unknown"))


def warn_about_service_token_scopes(settings: Settings) -> None:
    """Say at every start which service tokens are unscoped (every scope, for this release only) and which scoped
    names have no token."""
    for name in settings.security.unused_scope_names:
        _log.warning(
            "service_token_scopes_unused",
            service=name,
            detail=f"SERVICE_TOKEN_SCOPES gives scopes to {name!r}, but no service token has that name",
        )
    for name, token in settings.security.service_tokens.items():
        if token.legacy:
            _log.warning(
                "service_token_unscoped",
                service=name,
                detail=f"SERVICE_TOKEN_SCOPES does not name {name!r}, so it holds every scope; unscoped service "
                "tokens are deprecated and will hold none in the next release: set "
                f"SERVICE_TOKEN_SCOPES={name}=<scope>[+<scope>] with the scopes it needs "
                f"({', '.join(sorted(SERVICE_SCOPES))})",
            )
