"""One small engine per active tenant, under a global connection budget.

With thousands of tenant databases, "a pool per tenant" exhausts Postgres. Here each tenant's engine holds at
most ``per_tenant`` connections (no overflow), and at most ``budget // per_tenant`` engines exist at once —
engines still closing count too — so the app never has more than ``budget`` connections open, however many
tenants are active. A new tenant takes the place of the least recently used engine that has no session in use;
when every engine is busy, the request waits (up to ``acquire_timeout``) rather than exceed the budget.

Around server restarts and outages: a pooled connection the server has closed is replaced at checkout, without a
round trip (asyncpg sees the closed socket at once); a connection that cannot be made raises
:class:`DatabaseUnavailableError`; and :func:`track_commits` tells whether a unit of work that lost its connection
may have committed something, i.e. whether it can safely be run again.

Around moves and restores (the tenant's database replaced, maybe on another server): the old database's sessions
are ended and it refuses the old credentials (:class:`CredentialsRefusedError`). A session that sees either drops
its tenant's engine and cached credentials, so the next session vends anew and connects to the new database; so
does the ``tenant.database_changed`` event (:meth:`TenantDatabases.forget`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from tenantry_app.credentials import CredentialClient
from tenantry_common.internal_api import DatabaseCredentials

_log = structlog.get_logger("tenantry.app.databases")
#: SQLSTATEs with which a server refuses a new connection that fresh credentials may get: bad password (rotated),
#: role not permitted to log in (28000: made NOLOGIN by a move's or restore's cutover), database not accepting
#: connections (55000: the old database of a move), no such database (3D000: dropped). Only at connect: from a
#: statement, 55000 means something else (e.g. ``currval`` before ``nextval``).
_REFUSED_AT_CONNECT = frozenset({"28P01", "28000", "55000", "3D000"})
#: SQLSTATEs (besides class 08, connection exception) of an open connection the server ended: admin or crash shutdown.
_ENDED_BY_SERVER = frozenset({"57P01", "57P02"})
#: What ``asyncpg.connect`` raises when the server cannot take a connection now: refused, unreachable or timed out
#: (``OSError``), starting up or shutting down, out of connection slots.
_CONNECT_FAILURES = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)
_CONNECT_TIMEOUT = 5.0


class BudgetExhaustedError(Exception):
    """Every connection of the budget stayed in use for the whole wait."""


class DatabaseUnavailableError(Exception):
    """The tenant's database server took no connection: down, restarting, unreachable or out of slots."""


class CredentialsRefusedError(DatabaseUnavailableError):
    """The tenant's database refused the app's cached credentials at connect: it was moved or restored (the old
    role cannot log in, the old database takes no connections), dropped, or its password changed.

    The tenant's engine and credentials are dropped when this is raised: a new attempt vends fresh credentials.
    """


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is an open connection that broke (server restart, terminated backend, network).

    The server rolls back whatever the connection had not committed.
    """
    if not isinstance(exc, DBAPIError):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    return exc.connection_invalidated or sqlstate.startswith("08") or sqlstate in _ENDED_BY_SERVER


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the tenant's database cannot be used right now (rather than a bug or a bad query)."""
    return isinstance(exc, DatabaseUnavailableError) or connection_lost(exc)


def worth_running_again(exc: BaseException) -> bool:
    """Whether a unit of work that failed with ``exc`` may succeed when run again at once: its connection broke
    (:func:`connection_lost`), or the database refused the credentials (:class:`CredentialsRefusedError`) and fresh
    ones will be vended. Only safe if it committed nothing (:func:`track_commits`).

    A server that took no connection at all (:class:`DatabaseUnavailableError`) is not: it would only fail again.
    """
    return isinstance(exc, CredentialsRefusedError) or connection_lost(exc)


@dataclass
class Attempt:
    """One try of a unit of work (in the Litestar plugin: one run of a request handler)."""

    committed: bool = False
    """The server may have committed something of it: a COMMIT was sent, or a statement ran outside a transaction."""


_attempt: ContextVar[Attempt | None] = ContextVar("tenantry_app_attempt", default=None)


@contextlib.contextmanager
def track_commits() -> Iterator[Attempt]:
    """Note, for the block, whether any tenant session may have committed something.

    A block whose connection was lost (:func:`connection_lost`) while ``committed`` is still false left nothing
    behind in the database and can be run again.
    """
    attempt = Attempt()
    token = _attempt.set(attempt)
    try:
        yield attempt
    finally:
        _attempt.reset(token)


def _may_have_committed() -> None:
    if (attempt := _attempt.get()) is not None:
        attempt.committed = True


def _on_commit(conn: Connection) -> None:
    # A COMMIT on a connection already known dead never reaches the server. Any other may have been applied even
    # if its answer is lost, so it counts.
    driver = None if conn.invalidated else conn.connection.driver_connection
    if driver is not None and not driver.is_closed():
        _may_have_committed()


def _before_statement(conn: Connection, *_: object) -> None:
    if getattr(conn.connection.dbapi_connection, "autocommit", False):
        _may_have_committed()  # AUTOCOMMIT isolation: every statement commits by itself


def _after_statement(conn: Connection, *_: object) -> None:
    driver = conn.connection.driver_connection
    if driver is not None and not driver.is_in_transaction():
        _may_have_committed()  # the server left the transaction block: COMMIT in the SQL itself, or a procedure's


def _on_checkout(_dbapi: object, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection) -> None:
    # The server closes its end when it restarts or terminates the backend, and asyncpg notices at once (the event
    # loop watches the socket): a dead pooled connection is known here without the round trips of a pre-ping.
    # DisconnectionError makes the pool discard it and hand out a fresh one.
    if record.driver_connection is None or record.driver_connection.is_closed():
        raise DisconnectionError("the server closed this pooled connection")


@dataclass
class _Engine:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    leases: int = 0
    last_used: float = field(default_factory=time.monotonic)
    retired: bool = False
    """Taken out while sessions still used it: the last of them to end closes it."""


class TenantDatabases:
    """Sessions bound to each tenant's own database, within one global connection budget."""

    def __init__(
        self,
        credentials: CredentialClient,
        *,
        budget: int = 20,
        per_tenant: int = 1,
        idle_seconds: float = 60.0,
        acquire_timeout: float = 10.0,
        application_name: str = "tenantry-app",
    ) -> None:
        if budget < 1 or per_tenant < 1 or per_tenant > budget:
            raise ValueError("budget and per_tenant must be at least 1, and per_tenant at most budget")
        self._credentials = credentials
        self.budget = budget
        self._per_tenant = per_tenant
        self._max_engines = budget // per_tenant
        self._idle_seconds = idle_seconds
        self._acquire_timeout = acquire_timeout
        self._application_name = application_name
        self._engines: OrderedDict[str, _Engine] = OrderedDict()
        self._closing = 0
        self._changed = asyncio.Event()
        self._reaper: asyncio.Task[None] | None = None
        self._closers: set[asyncio.Task[None]] = set()

    def active_tenants(self) -> list[str]:
        """Tenants that have an engine now, least recently used first."""
        return list(self._engines)

    def _connector(self, creds: DatabaseCredentials) -> Callable[[], Awaitable[Any]]:
        async def connect() -> Any:
            try:
                return await asyncpg.connect(
                    host=creds.host,
                    port=creds.port,
                    user=creds.user,
                    password=creds.password,
                    database=creds.database,
                    timeout=_CONNECT_TIMEOUT,
                    server_settings={"application_name": self._application_name},
                )
            except _CONNECT_FAILURES as exc:
                # Raised as our own type: a bare OSError or TimeoutError would be indistinguishable from one of
                # the app's own.
                raise DatabaseUnavailableError(f"no connection to the tenant's database: {type(exc).__name__}") from exc
            except asyncpg.PostgresError as exc:
                if exc.sqlstate in _REFUSED_AT_CONNECT:
                    raise CredentialsRefusedError(
                        f"the tenant's database refused the credentials ({exc.sqlstate})"
                    ) from exc
                raise

        return connect

    def _create(self, creds: DatabaseCredentials) -> _Engine:
        engine = create_async_engine(
            "postgresql+asyncpg://",
            async_creator=self._connector(creds),
            pool_size=self._per_tenant,
            max_overflow=0,
            pool_timeout=self._acquire_timeout,
            pool_recycle=1800,
        )
        sync_engine = engine.sync_engine
        event.listen(sync_engine, "checkout", _on_checkout)
        event.listen(sync_engine, "commit", _on_commit)
        event.listen(sync_engine, "before_cursor_execute", _before_statement)
        event.listen(sync_engine, "after_cursor_execute", _after_statement)
        return _Engine(engine=engine, sessions=async_sessionmaker(engine, expire_on_commit=False))

    async def _lease(self, tenant_id: str) -> _Engine:
        deadline = time.monotonic() + self._acquire_timeout
        while True:
            entry = self._engines.get(tenant_id)
            if entry is not None:
                self._engines.move_to_end(tenant_id)
                entry.leases += 1
                return entry
            if len(self._engines) + self._closing < self._max_engines:
                creds = await self._credentials.get(tenant_id)
                if tenant_id in self._engines or len(self._engines) + self._closing >= self._max_engines:
                    continue  # another request got there first while the credentials were fetched
                entry = self._create(creds)
                self._engines[tenant_id] = entry
                entry.leases += 1
                return entry
            victim = next((tid for tid, e in self._engines.items() if e.leases == 0), None)
            if victim is not None:
                # The victim's connection closes in the background (its slot stays counted until it has) while
                # this request fetches its credentials: the two waits overlap instead of adding up.
                self._dispose_soon(victim)
                await self._credentials.get(tenant_id)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BudgetExhaustedError(f"all {self.budget} connections stayed busy")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def _take(self, tenant_id: str) -> _Engine | None:
        """Take the tenant's engine out; it counts against the budget (as closing) until :meth:`_close` ends."""
        entry = self._engines.pop(tenant_id, None)
        if entry is not None:
            self._closing += 1
        return entry

    async def _close(self, entry: _Engine) -> None:
        try:
            await entry.engine.dispose()
        finally:
            self._closing -= 1
            self._changed.set()

    async def _dispose(self, tenant_id: str) -> None:
        if (entry := self._take(tenant_id)) is not None:
            await self._close(entry)

    def _dispose_soon(self, tenant_id: str) -> None:
        """Like :meth:`_dispose`, with the close in a task."""
        if (entry := self._take(tenant_id)) is not None:
            self._close_soon(entry)

    def _close_soon(self, entry: _Engine) -> None:
        task = asyncio.create_task(self._close(entry))
        self._closers.add(task)
        task.add_done_callback(self._closed)

    def _closed(self, task: asyncio.Task[None]) -> None:
        self._closers.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            _log.warning("engine_close_failed", error=type(exc).__name__)

    @contextlib.asynccontextmanager
    async def session(self, tenant_id: str) -> AsyncIterator[AsyncSession]:
        """An ``AsyncSession`` on the tenant's own database, as the tenant's own role.

        A connection that broke (:func:`connection_lost`) or credentials the database refused
        (:class:`CredentialsRefusedError`) drop the tenant's engine and credentials on the way out: the server may
        have ended the connection because the tenant's database moved, and the next session vends anew.

        Raises:
            BudgetExhaustedError: no connection could be had within ``acquire_timeout``.
            TenantUnavailableError: the tenant-service refused the credentials.
            DatabaseUnavailableError: the server took no connection (from the session's first statement).
            CredentialsRefusedError: the database refused the credentials (moved, restored, dropped).
        """
        entry = await self._lease(tenant_id)
        try:
            async with entry.sessions() as session:
                yield session
        except (CredentialsRefusedError, DBAPIError) as exc:
            if worth_running_again(exc) and self._engines.get(tenant_id) is entry:
                # Only the engine this session used: a newer one (after the event, say) has fresh credentials.
                _log.info("tenant_engine_dropped", tenant_id=tenant_id, error_type=type(exc).__name__)
                self._forget_now(tenant_id)
            raise
        finally:
            entry.leases -= 1
            entry.last_used = time.monotonic()
            if entry.retired and entry.leases == 0:
                self._close_soon(entry)
            self._changed.set()

    async def forget(self, tenant_id: str) -> None:
        """Drop the tenant's engine and cached credentials (database moved or restored, tenant suspended or purged).

        New sessions get a new engine on freshly vended credentials at once; sessions in use keep their connection
        until they end, and the old engine counts against the budget until it is closed.
        """
        retiring = self._forget_now(tenant_id)
        if retiring is not None:
            await self._close(retiring)

    def _forget_now(self, tenant_id: str) -> _Engine | None:
        """Take the tenant's engine out and forget its credentials; returns the engine if it is for the caller to
        close (no session uses it), else it is closed when its last session ends."""
        self._credentials.forget(tenant_id)
        entry = self._take(tenant_id)
        if entry is None:
            return None
        if entry.leases == 0:
            return entry
        entry.retired = True
        return None

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self._idle_seconds / 2))
            cutoff = time.monotonic() - self._idle_seconds
            for tenant_id, entry in list(self._engines.items()):
                if entry.leases == 0 and entry.last_used < cutoff:
                    await self._dispose(tenant_id)

    def start(self) -> None:
        """Start disposing engines idle for longer than ``idle_seconds``."""
        self._reaper = asyncio.create_task(self._reap())

    async def close(self) -> None:
        """Dispose every engine."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for tenant_id in list(self._engines):
            await self._dispose(tenant_id)
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)
