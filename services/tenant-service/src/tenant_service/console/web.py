"""The console's HTTP layer: the session check and CSRF check before every page, security headers on every response,
HTML error pages, the template engine and the static files."""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit

import structlog
from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Request, Response
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, ValidationException
from litestar.response import Redirect, Template
from litestar.template.config import TemplateConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from tenant_service.console.sessions import COOKIE, SignedIn, load_session
from tenant_service.context import AppContext
from tenantry_common.problems import ProblemError

PACKAGE_DIR: Final = Path(__file__).parent
TEMPLATES_DIR: Final = PACKAGE_DIR / "templates"
STATIC_DIR: Final = PACKAGE_DIR / "static"
PREFIX: Final = "/console"
SIGN_IN: Final = "/console/sign-in"
STATIC: Final = "/console/static"
CSRF_FIELD: Final = "csrf_token"

CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'"
)
_SECURITY_HEADERS: Final = (
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
)
_log = structlog.get_logger("tenantry.console")


def template_config() -> TemplateConfig[Any]:
    """Jinja2 with autoescaping of every template (tenant-controlled strings are always escaped)."""
    from litestar.plugins.jinja import JinjaTemplateEngine  # noqa: PLC0415 - only the console needs Jinja

    environment = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.globals["audit_change"] = audit_change
    return TemplateConfig(engine=JinjaTemplateEngine.from_environment(environment))


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 1] + "…"


def audit_change(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[str]:
    """An audit entry's change in a few lines: each top-level field that differs, ``field: old → new``."""
    before, after = before or {}, after or {}
    lines = []
    for key in sorted(set(before) | set(after)):
        if key in ("updated_at",) or before.get(key) == after.get(key):
            continue
        if key in before and key in after:
            lines.append(f"{key}: {_short(before[key], 40)} → {_short(after[key], 40)}")
        elif key in after:
            lines.append(f"{key}: {_short(after[key])}")
        else:
            lines.append(f"{key}: {_short(before[key])} → (none)")
    return lines[:12]


def security_headers_middleware(app: ASGIApp) -> ASGIApp:
    """Add the console's security headers to every response under ``/console`` (pages, fragments, redirects,
    errors and static files); pages and fragments also get ``Cache-Control: no-store``."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == ScopeType.HTTP else ""
        if not (path == PREFIX or path.startswith(PREFIX + "/")):
            await app(scope, receive, send)
            return
        static = path.startswith(STATIC + "/")

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                for name, value in _SECURITY_HEADERS:
                    headers[name] = value
                if not static:
                    headers["cache-control"] = "no-store"
            await send(message)

        await app(scope, receive, send_wrapper)

    return middleware


def context(request: Request[Any, Any, Any]) -> AppContext:
    """The app's context."""
    ctx: AppContext = request.app.state.ctx
    return ctx


def safe_next(raw: str | None) -> str:
    """Where to go after signing in: a local console path only (never another site, never a scheme-relative URL)."""
    if not raw or len(raw) > 1000 or "\\" in raw or any(ord(c) < 0x20 for c in raw):
        return "/console/tenants"
    parts = urlsplit(raw)
    if parts.scheme or parts.netloc or raw.startswith("//"):
        return "/console/tenants"
    if not (parts.path == PREFIX or parts.path.startswith(PREFIX + "/")) or parts.path.startswith(SIGN_IN):
        return "/console/tenants"
    return quote(raw, safe="/?&=%+-._~")  # a valid Location: spaces and non-ASCII characters percent-encoded


def page(request: Request[Any, Any, Any], name: str, *, status_code: int = 200, **values: Any) -> Template:
    """Render a page (or fragment) with the session's CSRF token and the current path."""
    state = request.scope.get("state", {})
    session: SignedIn | None = state.get("console")
    return Template(
        template_name=name,
        status_code=status_code,
        context={
            "csrf": session.csrf if session else "",
            "actor": session.actor if session else None,
            "path": request.url.path,
            "csrf_field": CSRF_FIELD,
            **values,
        },
    )


def forbidden_page(request: Request[Any, Any, Any], message: str) -> Template:
    """403: a form without a valid CSRF token."""
    return page(request, "error.html", status_code=403, title="Refused", message=message)


async def console_before_request(request: Request[Any, Any, Any]) -> Response[Any] | None:
    """Before every console handler but sign-in: find the session (else 303 to sign-in); on a POST, check the
    form's CSRF token (else 403 and nothing happens)."""
    path = request.url.path
    state = request.scope.setdefault("state", {})
    if path == SIGN_IN:
        return None
    ctx = context(request)
    session = await load_session(ctx, request.cookies.get(COOKIE), ctx.settings.console)
    if session is None:
        # Back to the page after signing in; an action (a POST) is not replayed: back to its tenant list instead.
        target = path + (f"?{request.url.query}" if request.url.query else "") if request.method == "GET" else PREFIX
        return Redirect(f"{SIGN_IN}?next={quote(target, safe='/')}", status_code=303)
    state["console"] = session
    state["actor"] = session.actor  # the audit log's actor, exactly as an admin token's request sets it
    if request.method == "POST":
        form = await request.form()
        if not isinstance(token := form.get(CSRF_FIELD), str) or not _csrf_matches(session, token):
            _log.warning("console_csrf_refused", path=path, actor=session.actor)
            return forbidden_page(
                request, "The form's security token is missing or wrong: reload the page and try again."
            )
    return None


def _csrf_matches(session: SignedIn, token: str) -> bool:
    return hmac.compare_digest(session.csrf.encode(), token.encode())


def problem_page(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """A service error (not found, conflict, bad input) as an HTML page with its status and message."""
    if isinstance(exc, ProblemError):
        status, message = exc.status, exc.detail or exc.code.replace("_", " ")
        fields = [f"{e.field}: {e.message}" for e in exc.errors]
        code = exc.code
    elif isinstance(exc, ValidationException):
        status, message, fields, code = 422, "Some fields are not valid.", [str(exc.detail)], "invalid_input"
    elif isinstance(exc, HTTPException):
        status, message, fields, code = exc.status_code, str(exc.detail), [], "error"
    else:  # pragma: no cover - anything else is a bug, logged by the app's handler
        raise exc
    if status >= 500:
        _log.warning("console_error", code=code, status=status)
    return page(
        request, "error.html", status_code=status, title=f"Error {status}", message=message, fields=fields, code=code
    )
