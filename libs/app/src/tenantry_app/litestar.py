"""The Litestar plugin: requests must carry a valid X-Tenant-Token; handlers get the tenant, a session on its
database and its Redis namespace as dependencies.

Database outages are 503 ``database_unavailable`` with ``Retry-After``. A handler whose connection broke before it
committed anything (say, Postgres restarted under it, or a move's cutover ended it), or whose tenant's database
refused the app's credentials (moved or restored since they were vended), is run once more, on a new engine with
freshly vended credentials; see :func:`_run_again_middleware`. A database that still refuses them is 503
``tenant_unavailable`` with ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import structlog
from litestar import Litestar, Request, Response
from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.plugins import InitPluginProtocol
from litestar.types import (
    ASGIApp,
    HTTPRequestEvent,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)
from litestar.utils.scope.state import CONNECTION_STATE_KEY, ScopeState
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from tenantry_app.credentials import TenantUnavailableError
from tenantry_app.databases import (
    Attempt,
    BudgetExhaustedError,
    CredentialsRefusedError,
    DatabaseUnavailableError,
    connection_lost,
    database_unavailable,
    track_commits,
    worth_running_again,
)
from tenantry_app.identity import InvalidTenantTokenError, TenantIdentity
from tenantry_app.runtime import AppSettings, TenantRuntime
from tenantry_app.tenant_redis import TenantRedis
from tenantry_common.litestar_problems import problem_exception_handlers, problem_response
from tenantry_common.problems import PROBLEM_MEDIA_TYPE, problem_bytes

_log = structlog.get_logger("tenantry.app")
_TENANT = "tenantry_tenant"
_RUN = "tenantry_run"
#: A request body is kept for a second run up to this size; a handler with a larger body is not run again.
_REPLAY_LIMIT = 1 << 20
_DATABASE_RETRY_AFTER = "2"
_TENANT_RETRY_AFTER = "1"
_DATABASE_DOWN = "The tenant's database is unreachable right now; retry shortly."
_DATABASE_REPLACED = "The tenant's database is being moved or replaced and took no connection yet; retry shortly."
_REPLACED_AFTER_COMMIT = (
    "The tenant's database was moved or replaced while this request ran, after it had committed changes; "
    "it was not repeated, and what it committed stays."
)
_LOST_AFTER_COMMIT = (
    "The connection to the tenant's database broke after this request had committed changes; "
    "it was not repeated, and what it committed stays."
)
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


class _Body:
    """The request body as the handler reads it, kept so that a second run can read it again."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._chunks: list[bytes] = []
        self._size = 0
        self._complete = False
        self.replayable = True

    async def receive(self) -> ReceiveMessage:
        message = await self._receive()
        if message["type"] == "http.request" and self.replayable:
            chunk = message.get("body", b"")
            self._size += len(chunk)
            if self._size > _REPLAY_LIMIT:
                self.replayable = False
                self._chunks.clear()
            else:
                self._chunks.append(chunk)
                self._complete = not message.get("more_body", False)
        return message

    def replay(self) -> Receive:
        """A ``receive`` that yields what was read so far, then what is still to come."""
        pending: list[HTTPRequestEvent] = [
            {"type": "http.request", "body": chunk, "more_body": True} for chunk in self._chunks
        ]
        if pending and self._complete:
            pending[-1]["more_body"] = False

        async def receive() -> ReceiveMessage:
            return pending.pop(0) if pending else await self._receive()

        return receive


@dataclass
class _Run:
    """One run of a request's handler."""

    body: _Body
    may_run_again: bool
    database: Attempt | None = None
    started: bool = False
    """The response began: the client has seen part of this run."""
    again: bool = False
    """Run the handler once more: its connection broke, or its credentials were refused, before it committed
    anything."""
    reason: str = ""
    """Why the handler runs again (logged)."""

    def can_run_again(self) -> bool:
        return (
            self.may_run_again
            and not self.started
            and self.body.replayable
            and self.database is not None
            and not self.database.committed
        )

    async def serve(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("state", {})[_RUN] = self

        async def guarded_send(message: Message) -> None:
            if self.again:
                return  # this run's error response: the next run answers instead
            if message["type"] == "http.response.start":
                self.started = True
            await send(message)

        with track_commits() as self.database:
            await app(scope, receive, guarded_send)


def _run_again_middleware(enabled: bool) -> Any:
    """Runs a handler a second time when its database connection broke, or the database refused the credentials,
    before it committed anything. The session that failed has dropped the tenant's engine and credentials
    (:meth:`TenantDatabases.session`), so the second run vends anew and follows a moved database.

    Litestar turns a handler's exception into a response in an exception handler inside every app middleware, so
    the decision is taken there (:func:`_database_error`): it marks the run, and
    this middleware drops that run's error response and runs the handler again, on a scope as it was before the
    first run and with the request body replayed.
    """

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            state_before = dict(scope.setdefault("state", {}))
            body = _Body(receive)
            first = _Run(body=body, may_run_again=enabled)
            await first.serve(app, scope, body.receive, send)
            if not first.again:
                return
            _log.info("handler_run_again", path=scope["path"], reason=first.reason)
            await _Run(body=body, may_run_again=False).serve(
                app, _scope_for_second_run(scope, state_before), body.replay(), send
            )

        return middleware

    return factory


def _scope_for_second_run(scope: Scope, state_before: dict[str, Any]) -> Scope:
    """The scope as the first run found it: Litestar's per-connection cache (body, parsed data, dependencies,
    response flags) starts empty again, except for the exception handlers the router put there."""
    state = {key: value for key, value in state_before.items() if key != CONNECTION_STATE_KEY}
    second = cast("Scope", {**scope, "state": state})
    ScopeState.from_scope(second).exception_handlers = ScopeState.from_scope(scope).exception_handlers
    return second


def _database_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """503 ``database_unavailable`` for an outage (``tenant_unavailable`` when the database refused the
    credentials), deciding whether the handler runs again; any other database error goes to the app's handler for
    ``Exception``."""
    if not database_unavailable(exc):
        fallback = request.app.exception_handlers.get(Exception) or problem_exception_handlers()[Exception]
        return fallback(request, exc)
    run: _Run | None = request.scope.get("state", {}).get(_RUN)
    lost = connection_lost(exc)
    refused = isinstance(exc, CredentialsRefusedError)
    if run is not None and worth_running_again(exc) and run.can_run_again():
        run.again = True
        run.reason = "credentials_refused" if refused else "database_connection_lost"
    tenant: TenantIdentity | None = request.scope.get("state", {}).get(_TENANT)
    committed = run is not None and run.database is not None and run.database.committed
    _log.warning(
        "database_unavailable",
        tenant_id=tenant.tenant_id if tenant else None,
        error_type=type(exc).__name__,
        connection_lost=lost,
        credentials_refused=refused,
        committed=committed,
        run_again=run is not None and run.again,
    )
    if refused:
        return problem_response(
            503,
            "tenant_unavailable",
            headers={"Retry-After": _TENANT_RETRY_AFTER},
            detail=_REPLACED_AFTER_COMMIT if committed else _DATABASE_REPLACED,
            instance=request.url.path,
        )
    return problem_response(
        503,
        "database_unavailable",
        headers={"Retry-After": _DATABASE_RETRY_AFTER},
        detail=_LOST_AFTER_COMMIT if committed else _DATABASE_DOWN,
        instance=request.url.path,
    )


def _tenant(request: Request[Any, Any, Any]) -> TenantIdentity:
    identity: TenantIdentity = request.scope["state"][_TENANT]
    return identity


class TenantryPlugin(InitPluginProtocol):
    """Adds tenant identity, per-tenant database sessions and tenant Redis to a Litestar app.

    Dependencies for handlers: ``tenant: TenantIdentity``, ``db_session: AsyncSession`` (on the tenant's own
    database), ``tenant_redis: TenantRedis``.
    """

    def __init__(
        self,
        settings: AppSettings | None = None,
        *,
        open_paths: tuple[str, ...] = ("/healthz",),
        run_again_on_lost_connection: bool = True,
    ) -> None:
        """Build the runtime; nothing connects before the app starts.

        Args:
            settings: The app's settings (default: from the environment).
            open_paths: Paths served without an X-Tenant-Token.
            run_again_on_lost_connection: Run a handler a second time when its database connection broke before it
                committed anything. Turn it off when handlers have effects outside the database, before their
                commit, that must not happen twice.
        """
        self.runtime = TenantRuntime(settings or AppSettings.from_env())
        self._open_paths = frozenset(open_paths)
        self._run_again = run_again_on_lost_connection

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
            retry = {"Retry-After": _TENANT_RETRY_AFTER} if status == 503 else None
            detail = "The tenant's database cannot be used right now."
            return problem_response(status, code, headers=retry, detail=detail, instance=request.url.path)

        app_config.middleware[:0] = [
            _identity_middleware(runtime, self._open_paths),
            _run_again_middleware(self._run_again),
        ]
        app_config.dependencies.update(
            {
                "tenant": Provide(_tenant, sync_to_thread=False),
                "db_session": Provide(db_session),
                "tenant_redis": Provide(tenant_redis, sync_to_thread=False),
            }
        )
        app_config.exception_handlers.update(
            {
                TenantUnavailableError: unavailable,
                BudgetExhaustedError: unavailable,
                DatabaseUnavailableError: _database_error,
                DBAPIError: _database_error,
            }
        )
        app_config.lifespan.append(lifespan)
        return app_config
