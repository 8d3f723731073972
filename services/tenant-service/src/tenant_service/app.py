"""Assembly of the tenant-service's HTTP app."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import sqlalchemy.exc
import structlog
from litestar import Litestar, Request, Response
from litestar.datastructures import CacheControlHeader, MutableScopeHeaders, State
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from litestar.static_files import create_static_files_router
from litestar.types import ASGIApp, ExceptionHandlersMap, Message, Receive, Scope, Send

from tenant_service.apikeys.controllers import ApiKeyController
from tenant_service.audit.controllers import AuditController
from tenant_service.auth import warn_about_service_token_scopes
from tenant_service.background import BackgroundWork
from tenant_service.backups.controllers import BackupController, ExportController
from tenant_service.config import Settings
from tenant_service.console.pages import ConsoleController
from tenant_service.console.web import STATIC, STATIC_DIR, security_headers_middleware, template_config
from tenant_service.context import AppContext
from tenant_service.health import healthz, readyz
from tenant_service.internal.controllers import InternalController
from tenant_service.internal.directory import DirectoryController
from tenant_service.openapi import COMPONENTS
from tenant_service.operations.controllers import OperationController
from tenant_service.plans.controllers import PlanController
from tenant_service.servers.controllers import MoveController, ServerController
from tenant_service.servers.service import ensure_configured_servers
from tenant_service.strict_requests import strict_request
from tenant_service.tenants.controllers import JwtIssuerController, TenantController
from tenant_service.usage.controllers import UsageIngestController
from tenant_service.users.controllers import AuthController, TenantFacingController, UserController
from tenant_service.webhooks.controllers import WebhookController
from tenantry_common.litestar_problems import problem_exception_handlers, problem_response
from tenantry_common.logging import configure_logging
from tenantry_common.request_ids import new_request_id, safe_request_id

_access = structlog.get_logger("tenantry.access")
#: Probes and gateway directory polls succeed every second or so; they are logged at debug level only.
_ROUTINE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_STATIC_CACHE = CacheControlHeader(max_age=3600, private=True)


def request_context_middleware(app: ASGIApp) -> ASGIApp:
    """Bind a request id (the client's when :func:`safe_request_id` keeps it, else a new one) to logs and audit
    entries and echo it; write one access log line."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        incoming = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        request_id = safe_request_id(incoming) or new_request_id()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableScopeHeaders.from_message(message)["X-Request-ID"] = request_id
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        finally:
            path = scope.get("path", "")
            routine = status < 400 and (path in _ROUTINE_PATHS or path.startswith("/internal/v1/directory"))
            (_access.debug if routine else _access.info)(
                "request",
                method=scope.get("method"),
                path=scope.get("path"),
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )

    return middleware


def _database_unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """A lost or refused database connection is an outage, not a bug: 503 with Retry-After."""
    _access.warning("database_unavailable", error_type=type(exc).__name__, path=request.url.path)
    return problem_response(
        503,
        "database_unavailable",
        headers={"Retry-After": "2"},
        detail="The database is unreachable right now; retry shortly.",
        instance=request.url.path,
    )


def _exception_handlers() -> ExceptionHandlersMap:
    handlers = dict(problem_exception_handlers())
    for exc_type in (
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
        sqlalchemy.exc.TimeoutError,
        asyncpg.PostgresConnectionError,
        asyncpg.InterfaceError,
        asyncpg.CannotConnectNowError,
        ConnectionError,
        TimeoutError,
    ):
        handlers[exc_type] = _database_unavailable
    return handlers


def _provide_ctx(state: State) -> AppContext:
    ctx: AppContext = state.ctx
    return ctx


class _Metrics(PrometheusController):
    path = "/metrics"
    include_in_schema = False


def create_app(ctx: AppContext | None = None, *, run_background: bool = True) -> Litestar:
    """The Litestar app; builds its context from the environment unless one is given."""
    if ctx is None:
        settings = Settings.from_env()
        configure_logging("tenant-service", fmt=settings.log_format, level=settings.log_level)
        ctx = AppContext.build(settings)
    app_ctx = ctx
    warn_about_service_token_scopes(app_ctx.settings)
    background = BackgroundWork(app_ctx)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # The dummy hash that unknown emails are checked against is made now, not by the first sign-in (which
        # would then take twice as long as the others: a timing difference).
        await app_ctx.passwords.verify(None, "")
        if run_background:
            await _register_servers(app_ctx)
            background.start_reconciler()
            background.start_operations()
            background.start_usage()
            background.start_webhooks()
        try:
            yield
        finally:
            await background.stop()
            await app_ctx.close()

    prometheus = PrometheusConfig(app_name="tenant_service", prefix="tenantry", group_path=True)
    console: list[Any] = []
    if app_ctx.settings.console.enabled:
        console = [
            ConsoleController,
            create_static_files_router(
                path=STATIC, directories=[STATIC_DIR], include_in_schema=False, cache_control=_STATIC_CACHE
            ),
        ]
    return Litestar(
        route_handlers=[
            *console,
            TenantController,
            JwtIssuerController,
            ApiKeyController,
            PlanController,
            AuditController,
            BackupController,
            ExportController,
            OperationController,
            ServerController,
            MoveController,
            UserController,
            InternalController,
            AuthController,
            TenantFacingController,
            DirectoryController,
            UsageIngestController,
            WebhookController,
            healthz,
            readyz,
            _Metrics,
        ],
        dependencies={"ctx": Provide(_provide_ctx, sync_to_thread=False)},
        state=State({"ctx": app_ctx, "background": background}),
        exception_handlers=_exception_handlers(),
        middleware=[request_context_middleware, security_headers_middleware, prometheus.middleware],
        lifespan=[lifespan],
        before_request=strict_request,
        request_max_body_size=app_ctx.settings.http.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Tenantry tenant-service",
            version="0.1.0",
            path="/schema",
            components=COMPONENTS,
            render_plugins=[JsonRenderPlugin(), SwaggerRenderPlugin()],
        ),
        logging_config=None,
        template_config=template_config() if app_ctx.settings.console.enabled else None,
    )


async def _register_servers(ctx: AppContext) -> None:
    """Register ``default`` and the configured servers (contract §11) before work starts; a failure is logged and
    retried by the next start or ``tenantctl migrate`` (the registry's own readiness says whether it is up)."""
    try:
        async with asyncio.timeout(ctx.settings.database.connect_timeout * 4 + 30):
            await ensure_configured_servers(ctx)
    except Exception as exc:  # noqa: BLE001 - the service still starts; /readyz tells whether the registry answers
        structlog.get_logger("tenantry.servers").warning("servers_not_registered", error=type(exc).__name__)


def asgi_factory() -> Any:
    """Entry point for ``uvicorn --factory``."""
    return create_app()
