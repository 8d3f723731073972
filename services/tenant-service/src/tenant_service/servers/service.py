"""The server registry (contract §11): registering, checking and changing PostgreSQL servers, and placing new
tenants on them.

Every registered server has the template at the current schema version (made when it is registered, migrated by
``tenantctl migrate``). ``default`` is the server of ``TENANT_DATABASE_URL``: registered at first start, its
connection always comes from that setting (the registry keeps no password of it).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

import asyncpg
import msgspec
import structlog
from prometheus_client import Gauge
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_service.audit.service import SYSTEM_ACTOR, record
from tenant_service.db.models import Operation, Plan, RetiredDatabase, Server, Tenant
from tenant_service.provisioning.cluster import ServerFacts, TenantCluster
from tenant_service.servers.pool import DEFAULT_SERVER, ServerNotFoundError, password_context, split_password
from tenant_service.servers.retired import drop_retired
from tenant_service.servers.schemas import ServerCreate, ServerPage, ServerUpdate, ServerView
from tenantry_common.problems import ConflictError, FieldError, InvalidInputError, UnavailableError
from tenantry_common.timeutil import utcnow

if TYPE_CHECKING:
    from tenant_service.context import AppContext

_log = structlog.get_logger("tenantry.servers")

SERVER_TENANTS: Final = Gauge("tenantry_server_tenants", "Tenant databases a server holds", ["server"])
SERVER_BYTES: Final = Gauge("tenantry_server_database_bytes", "Bytes of a server's tenant databases", ["server"])
SERVER_REACHABLE: Final = Gauge("tenantry_server_reachable", "1 when the server answered its last check", ["server"])
SERVER_CAPACITY: Final = Gauge("tenantry_server_capacity", "Tenant databases a server takes", ["server"])

#: The oldest PostgreSQL a server may run.
MIN_VERSION = 15
#: Seconds a server's size query may take when a server list is shown.
_STATS_TIMEOUT = 3.0


class ServerUnusableError(InvalidInputError):
    """The server cannot hold tenant databases: unreachable, too old, or its role lacks rights."""

    code = "server_unusable"


class ServerExistsError(ConflictError):
    """The name is taken, or the same PostgreSQL cluster is registered under another name."""

    code = "server_exists"


class ServerNotEmptyError(ConflictError):
    """The server still holds tenant databases (drain it first)."""

    code = "server_not_empty"


class ServerRequiredError(ConflictError):
    """``default`` (the server of TENANT_DATABASE_URL) cannot be removed."""

    code = "server_required"


class NoCapacityError(UnavailableError):
    """No active server with room (and the wanted labels) for a new tenant."""

    code = "no_capacity"


async def check_server(cluster: TenantCluster, seconds: float) -> ServerFacts:
    """The server's facts, or :class:`ServerUnusableError` saying why it cannot hold tenant databases."""
    try:
        async with asyncio.timeout(seconds):
            facts = await cluster.facts()
    except TimeoutError:
        raise ServerUnusableError("the server did not answer in time") from None
    except asyncpg.PostgresError as exc:
        raise ServerUnusableError(f"the server refused the connection: {exc.args[0] if exc.args else exc}") from None
    except (OSError, asyncpg.InterfaceError) as exc:
        raise ServerUnusableError(f"the server is unreachable: {type(exc).__name__}: {exc}"[:300]) from None
    if facts.version < MIN_VERSION:
        raise ServerUnusableError(f"PostgreSQL {facts.version} is older than {MIN_VERSION}")
    if not facts.superuser and not (facts.createdb and facts.createrole):
        raise ServerUnusableError("the URL's role lacks CREATEDB or CREATEROLE")
    return facts


async def ensure_configured_servers(ctx: AppContext) -> None:
    """Register ``default`` (the server of TENANT_DATABASE_URL) and every EXTRA_DATABASE_SERVERS entry that is
    missing; refresh ``default``'s facts. An extra server that cannot be registered is logged, not fatal."""
    settings = ctx.settings
    facts: ServerFacts | None = None
    try:
        facts = await check_server(ctx.servers.default, settings.database.connect_timeout)
    except ServerUnusableError as exc:
        _log.warning("default_server_unchecked", reason=exc.detail)
    async with ctx.sessions() as session, session.begin():
        values: dict[str, Any] = {
            "name": DEFAULT_SERVER,
            "host": settings.database.tenant_host,
            "port": settings.database.tenant_port,
            "capacity": settings.servers.default_capacity,
        }
        if facts is not None:
            values |= {
                "version": facts.version,
                "can_move_online": facts.can_move_online,
                "system_identifier": facts.system_identifier,
            }
        refreshed = {k: v for k, v in values.items() if k not in ("name", "capacity")}
        await session.execute(
            insert(Server).values(**values).on_conflict_do_update(index_elements=[Server.name], set_=refreshed)
        )
    for name, url in settings.servers.extra:
        async with ctx.sessions() as session:
            known = await session.get(Server, name)
        if known is not None:
            continue
        try:
            await ServerService(ctx).register(ServerCreate(name=name, url=url), actor=SYSTEM_ACTOR)
        except (ServerUnusableError, ServerExistsError) as exc:
            _log.warning("configured_server_not_registered", server=name, reason=exc.detail)


async def migrate_templates(ctx: AppContext) -> dict[str, int]:
    """Bring every registered server's template to the head; returns the version by server. ``default`` must
    succeed (its error is raised); another server's failure is logged and leaves its recorded version behind."""
    async with ctx.sessions() as session:
        names = list((await session.execute(select(Server.name).order_by(Server.name))).scalars())
    versions: dict[str, int] = {}
    for name in names or [DEFAULT_SERVER]:
        cluster = await ctx.servers.get(name)
        try:
            version = await cluster.migrate_template(ctx.migrations)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if name == DEFAULT_SERVER:
                raise
            _log.warning("template_migration_failed", server=name, error=type(exc).__name__)
            continue
        versions[name] = version
        async with ctx.sessions() as session, session.begin():
            row = await session.get(Server, name, with_for_update=True)
            if row is not None:
                row.template_version = version
                row.updated_at = utcnow()
    return versions


async def tenant_counts(session: AsyncSession) -> dict[str, int]:
    """How many tenant databases each server holds (soft-deleted tenants keep theirs)."""
    rows = await session.execute(select(Tenant.server, func.count()).group_by(Tenant.server))
    return {server: int(count) for server, count in rows}


async def place(
    session: AsyncSession,
    *,
    pin: str | None,
    labels: dict[str, str] | None,
    plan: Plan | None,
    exclude: str | None = None,
) -> Server:
    """The server a new tenant goes to: the pinned one, else the ``active`` server with the lowest
    tenants ÷ capacity among those carrying every wanted label (the create body's, else the plan's). The
    candidates' rows are locked until the caller's transaction ends, so concurrent creates respect capacity.

    Raises:
        InvalidInputError: the pinned server does not exist.
        NoCapacityError: no server with room.
    """
    wanted = labels if labels else (plan.placement_labels if plan is not None else {}) or {}
    query = select(Server).order_by(Server.name).with_for_update()
    query = query.where(Server.name == pin) if pin else query.where(Server.state == "active")
    servers = list((await session.execute(query)).scalars())
    if pin and not servers:
        raise InvalidInputError(
            f"no server {pin!r}", errors=[FieldError(field="server", message="is not a registered server")]
        )
    counts = await tenant_counts(session)
    candidates = [
        s
        for s in servers
        if s.state == "active"
        and s.name != exclude
        and counts.get(s.name, 0) < s.capacity
        and all(s.labels.get(k) == v for k, v in wanted.items())
    ]
    if not candidates:
        where = f"server {pin!r}" if pin else ("an active server" + (f" with labels {wanted}" if wanted else ""))
        raise NoCapacityError(f"no room for a new tenant on {where}", headers={"Retry-After": "60"})
    return min(candidates, key=lambda s: (counts.get(s.name, 0) / s.capacity, s.name))


class ServerService:
    """What the admin API and ``tenantctl servers`` do with servers."""

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx

    async def _database_bytes(self, name: str, databases: list[str]) -> tuple[int | None, bool]:
        try:
            cluster = await self._ctx.servers.get(name)
            async with asyncio.timeout(_STATS_TIMEOUT), cluster.connect() as conn:
                value = await conn.fetchval(
                    "SELECT coalesce(sum(pg_database_size(oid)), 0)::bigint FROM pg_database"
                    " WHERE datname = ANY($1::text[])",
                    databases,
                )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ServerNotFoundError):
            return None, False
        return int(value), True

    async def _views(self, session: AsyncSession, rows: list[Server]) -> list[ServerView]:
        counts = await tenant_counts(session)
        names: dict[str, list[str]] = {row.name: [] for row in rows}
        for server, db in await session.execute(
            select(Tenant.server, Tenant.db_name).where(Tenant.server.in_(list(names)))
        ):
            names[server].append(db)
        stats = await asyncio.gather(*(self._database_bytes(row.name, names[row.name]) for row in rows))
        return [
            ServerView(
                name=row.name,
                host=row.host,
                port=row.port,
                state=row.state,
                capacity=row.capacity,
                labels=dict(row.labels),
                tenants=counts.get(row.name, 0),
                database_bytes=size,
                version=row.version,
                can_move_online=row.can_move_online,
                reachable=reachable,
                template_version=row.template_version,
                created_at=row.created_at,
                updated_at=row.updated_at,
            )
            for row, (size, reachable) in zip(rows, stats, strict=True)
        ]

    async def record_metrics(self) -> None:
        """Set the per-server gauges (tenants, bytes, reachable, capacity) from a fresh look at every server."""
        page = await self.list()
        for server in page.items:
            SERVER_TENANTS.labels(server.name).set(server.tenants)
            SERVER_CAPACITY.labels(server.name).set(server.capacity)
            SERVER_REACHABLE.labels(server.name).set(1 if server.reachable else 0)
            if server.database_bytes is not None:
                SERVER_BYTES.labels(server.name).set(server.database_bytes)

    async def list(self) -> ServerPage:
        """Every registered server, by name."""
        async with self._ctx.sessions() as session:
            rows = list((await session.execute(select(Server).order_by(Server.name))).scalars())
            return ServerPage(items=await self._views(session, rows))

    async def get(self, name: str) -> ServerView:
        """One server.

        Raises:
            ServerNotFoundError: unknown name.
        """
        async with self._ctx.sessions() as session:
            row = await session.get(Server, name)
            if row is None:
                raise ServerNotFoundError(f"no server {name!r}")
            return (await self._views(session, [row]))[0]

    async def register(self, data: ServerCreate, *, actor: str) -> ServerView:
        """Check the server, create and migrate the template there, and register it.

        Raises:
            ServerExistsError: the name is taken, or the cluster is registered already.
            ServerUnusableError: unreachable, older than PostgreSQL 15, or its role lacks rights.
        """
        ctx = self._ctx
        try:
            bare, password = split_password(data.url)
        except Exception:  # noqa: BLE001 - any malformed URL is a field error
            raise InvalidInputError(
                "invalid server URL", errors=[FieldError(field="url", message="must be a postgresql:// URL")]
            ) from None
        if "password=" in bare:
            raise InvalidInputError(
                "the password goes in the URL's user part",
                errors=[FieldError(field="url", message="put the password in user:password@, not the query")],
            )
        async with ctx.sessions() as session:
            if await session.get(Server, data.name) is not None:
                raise ServerExistsError(f"a server named {data.name!r} is registered already")
        cluster = ctx.servers.cluster_for_url(data.name, data.url)
        try:
            facts = await check_server(cluster, ctx.settings.database.connect_timeout)
            async with ctx.sessions() as session:
                same = await session.scalar(
                    select(Server.name).where(Server.system_identifier == facts.system_identifier)
                )
            if same is not None:
                raise ServerExistsError(f"this PostgreSQL cluster is registered already, as {same!r}")
            try:
                version = await cluster.migrate_template(ctx.migrations)
            except asyncpg.PostgresError as exc:
                raise ServerUnusableError(f"the template could not be created there: {exc.args[0]}") from None
            host, port = cluster.endpoint()
        finally:
            await cluster.close()
        now = utcnow()
        async with ctx.sessions() as session, session.begin():
            row = Server(
                name=data.name,
                url=bare,
                password_enc=ctx.box.encrypt(password, password_context(data.name)) if password else None,
                host=host,
                port=port,
                state="active",
                capacity=data.capacity if data.capacity is not None else ctx.settings.servers.default_capacity,
                labels=dict(data.labels),
                version=facts.version,
                can_move_online=facts.can_move_online,
                template_version=version,
                system_identifier=facts.system_identifier,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            try:
                await session.flush()
            except Exception:  # noqa: BLE001 - a concurrent registration of the same name
                raise ServerExistsError(f"a server named {data.name!r} is registered already") from None
            view = (await self._views(session, [row]))[0]
            record(session, actor=actor, action="server.register", target=data.name,
                   after=msgspec.to_builtins(view))  # fmt: skip
        _log.info("server_registered", server=data.name, version=facts.version, online=facts.can_move_online)
        return view

    async def update(self, name: str, patch: ServerUpdate, *, actor: str) -> ServerView:
        """Change the state, capacity or labels.

        Raises:
            ServerNotFoundError: unknown name.
        """
        async with self._ctx.sessions() as session, session.begin():
            row = await session.get(Server, name, with_for_update=True)
            if row is None:
                raise ServerNotFoundError(f"no server {name!r}")
            before = msgspec.to_builtins((await self._views(session, [row]))[0])
            if patch.state is not msgspec.UNSET:
                row.state = patch.state
            if patch.capacity is not msgspec.UNSET:
                row.capacity = patch.capacity
            if patch.labels is not msgspec.UNSET:
                row.labels = dict(patch.labels)
            row.updated_at = utcnow()
            await session.flush()
            view = (await self._views(session, [row]))[0]
            record(session, actor=actor, action="server.update", target=name, before=before,
                   after=msgspec.to_builtins(view))  # fmt: skip
        return view

    async def delete(self, name: str, *, actor: str) -> None:
        """Forget an empty server (its databases kept by moves are dropped first; its template stays).

        Raises:
            ServerNotFoundError: unknown name.
            ServerRequiredError: ``default``.
            ServerNotEmptyError: it holds tenants, or a move to it is under way.
        """
        ctx = self._ctx
        if name == DEFAULT_SERVER:
            raise ServerRequiredError("the default server (TENANT_DATABASE_URL) cannot be removed")
        async with ctx.sessions() as session, session.begin():
            row = await session.get(Server, name, with_for_update=True)
            if row is None:
                raise ServerNotFoundError(f"no server {name!r}")
            held = await session.scalar(select(func.count()).where(Tenant.server == name))
            incoming = await session.scalar(
                select(func.count())
                .select_from(Operation)
                .where(
                    Operation.kind.in_(("move", "drain")),
                    Operation.state.in_(("pending", "running")),
                    (Operation.params["server"].astext == name) | (Operation.params["source"].astext == name),
                )
            )
            if held or incoming:
                raise ServerNotEmptyError(
                    f"server {name!r} holds {held} tenants and has {incoming} moves under way; drain it first"
                )
        await drop_retired(ctx, server=name)
        async with ctx.sessions() as session, session.begin():
            left = await session.scalar(
                select(func.count()).select_from(RetiredDatabase).where(RetiredDatabase.server == name)
            )
            if left:
                raise ServerNotEmptyError(f"server {name!r} still keeps {left} moved databases it could not drop")
            await session.execute(delete(Server).where(Server.name == name))
            record(session, actor=actor, action="server.delete", target=name)
        await ctx.servers.forget(name)
