"""The Litestar plugin: requests must carry a valid X-Tenant-Token; handlers get the tenant, a session on its
database and its Redis namespace as dependencies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response
from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.plugins import InitPluginProtocol
from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send
from sqlalchemy.ext.asyncio import AsyncSession

from tenantry_app.credentials import TenantUnavailableError
from tenantry_app.databases import BudgetExhaustedError
from tenantry_app.identity import InvalidTenantTokenError, TenantIdentity
from tenantry_app.runtime import AppSettings, TenantRuntime
from tenantry_app.tenant_redis import TenantRedis
from tenantry_common.litestar_problems import problem_response
from tenantry_common.problems import PROBLEM_MEDIA_TYPE, problem_bytes

_TENANT = "tenantry_tenant"
_UNAUTHORIZED = problem_bytes(401, "unauthorized", detail="A valid X-Tenant-Token from the gateway is required.")
_UNAUTHORIZED_START: HTTPResponseStartEvent = {
    "type": "http.response.start",
    "status": 401,
    "headers": [(b"content-type", PROBLEM_MEDIA_TYPE.encode()), (b"content-length", str(len(_UNAUTHORIZED)).encode())],
}
_UNAUTHORIZED_BODY: HTTPResponseBodyEvent = {"type": "http.response.body", "body": _UNAUTHORIZED, "more_body": False}


def _identity_middleware(runtime: TenantRuntime, open_paths: frozenset[str]) -> Any:
    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP or scope["path"] in open_paths:
                await app(scope, receive, send)
                return
            token = next((v for k, v in scope["headers"] if k == b"x-tenant-token"), b"")
            try:
                identity = await runtime.verifier.verify(token.decode("latin-1"))
            except InvalidTenantTokenError:
                await send(_UNAUTHORIZED_START)
                await send(_UNAUTHORIZED_BODY)
                return
            scope.setdefault("state", {})[_TENANT] = identity
            await app(scope, receive, send)

        return middleware

    return factory


def _tenant(request: Request[Any, Any, Any]) -> TenantIdentity:
    identity: TenantIdentity = request.scope["state"][_TENANT]
    return identity


class TenantryPlugin(InitPluginProtocol):
    """Adds tenant identity, per-tenant database sessions and tenant Redis to a Litestar app.

    Dependencies for handlers: ``tenant: TenantIdentity``, ``db_session: AsyncSession`` (on the tenant's own
    database), ``tenant_redis: TenantRedis``.
    """

    def __init__(self, settings: AppSettings | None = None, *, open_paths: tuple[str, ...] = ("/healthz",)) -> None:
        self.runtime = TenantRuntime(settings or AppSettings.from_env())
        self._open_paths = frozenset(open_paths)

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Wire middleware, dependencies, error handlers and lifespan."""
        runtime = self.runtime

        async def db_session(request: Request[Any, Any, Any]) -> AsyncIterator[AsyncSession]:
            async with runtime.databases.session(_tenant(request).tenant_id) as session:
                yield session

        def tenant_redis(request: Request[Any, Any, Any]) -> TenantRedis:
            if runtime.redis is None:
                raise RuntimeError("REDIS_URL is not configured")
            return TenantRedis(runtime.redis, _tenant(request).tenant_id)

        @asynccontextmanager
        async def lifespan(_: Litestar) -> AsyncIterator[None]:
            await runtime.start()
            try:
                yield
            finally:
                await runtime.close()

        def unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
            status = 403 if isinstance(exc, TenantUnavailableError) and exc.status == 403 else 503
            code = "tenant_suspended" if status == 403 else "tenant_unavailable"
            retry = {"Retry-After": "1"} if status == 503 else None
            detail = "The tenant's database cannot be used right now."
            return problem_response(status, code, headers=retry, detail=detail, instance=request.url.path)

        app_config.middleware.insert(0, _identity_middleware(runtime, self._open_paths))
        app_config.dependencies.update(
            {
                "tenant": Provide(_tenant, sync_to_thread=False),
                "db_session": Provide(db_session),
                "tenant_redis": Provide(tenant_redis, sync_to_thread=False),
            }
        )
        app_config.exception_handlers.update({TenantUnavailableError: unavailable, BudgetExhaustedError: unavailable})
        app_config.lifespan.append(lifespan)
        return app_config
