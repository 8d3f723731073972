"""Administrative operations on the Postgres cluster that hosts the template and the tenant databases.

Every statement here is a utility statement that Postgres cannot parameterise, so every identifier goes through
:func:`quote_ident` (which refuses anything but a plain lowercase name) and no password is ever sent: roles get
a SCRAM verifier computed locally.

Ownership: what the migrations create in the template belongs to ``pg_database_owner``, the predefined role whose
only member is, in each database, that database's owner. A clone made ``OWNER <tenant role>`` is therefore owned
inside by the tenant's role from the first moment, without a connection to the new database. Templates made by
earlier versions (objects owned by ``<template>_owner``) are converted by the next template migration; until
then a clone is secured the old way (``REASSIGN OWNED`` inside the new database).

This module is the only way into the tenant cluster, and it keeps one rule: **nothing a tenant can create or alter
runs, or is trusted, with the platform's rights.**

* Admin connections pin ``search_path`` to ``pg_catalog`` in their startup packet, which overrides any
  database- or role-level setting a tenant made; an overload a tenant puts in ``public`` is never a candidate.
* Admin connections go to the maintenance database and the template only; the one exception,
  :meth:`TenantCluster.secure_database` (templates of earlier versions), runs ``REASSIGN OWNED`` there, which
  executes no tenant code, and reads nothing of the tenant's.
* Whatever reads or writes tenant objects (schema migrations, the schema version) logs in **as the tenant's own
  role** (:meth:`TenantCluster.tenant_connection`). ``SET ROLE`` from an admin session is not enough: tenant code
  (a trigger, a CHECK, an index expression, a view) can ``RESET ROLE`` and act as the session's superuser.
* Database-level properties the owner can change are not trusted: orphan decisions come from the registry (a
  marker comment is only a hint), and ``IS_TEMPLATE`` is reset before a drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
import zlib
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import structlog

from tenant_service.config import DatabaseSettings, asyncpg_dsn
from tenant_service.failpoints import failpoint
from tenant_service.provisioning.names import (
    object_marker,
    parse_marker,
    quote_ident,
    quote_literal,
    template_owner_role,
)
from tenant_service.provisioning.schema import SchemaMigration, apply_migrations, current_version
from tenant_service.provisioning.scram import scram_sha256_verifier

_log = structlog.get_logger("tenantry.cluster")

#: SQLSTATE 55006: "source database is being accessed by other users".
_OBJECT_IN_USE = "55006"
#: Databases every cluster has that PUBLIC may connect to by default; tenant roles must not.
MAINTENANCE_DATABASES = ("postgres", "template1")
_MAINTENANCE_LOCK = zlib.crc32(b"tenantry:maintenance-databases")
#: The predefined role whose member is, in each database, that database's owner (Postgres 14+).
DATABASE_OWNER = "pg_database_owner"
#: Comment on the template database once its objects belong to :data:`DATABASE_OWNER`; ends with the version.
_TEMPLATE_MARK = "tenantry:template:owner=pg_database_owner:schema="
#: ``application_name`` of the platform's sessions: as admin, and as a tenant's role (migrations).
_ADMIN_APP = "tenantry-provisioner"
_TENANT_APP = "tenantry-maintenance"
#: Admin connections to the maintenance database kept open for provisioning and housekeeping.
ADMIN_POOL_SIZE = 8
#: An idle pooled admin connection is closed after this many seconds.
ADMIN_POOL_IDLE_SECONDS = 60.0


#: Bytes read from ``pg_dump`` per chunk (and the pipe buffer behind it).
TOOL_CHUNK_BYTES = 1 << 20
#: A ``pg_dump``/``pg_restore`` that neither writes nor reads for this long is killed.
TOOL_IDLE_TIMEOUT_SECONDS = 600.0
#: Session settings of the platform's ``pg_dump``/``pg_restore`` runs, given as startup options so that they beat
#: whatever the tenant set on its role or database (a statement timeout would cut its own backup short).
_TOOL_OPTIONS = (
    "-c statement_timeout=0 -c lock_timeout=0 -c idle_in_transaction_session_timeout=0 "
    "-c default_transaction_read_only=off"
)


class PgToolError(RuntimeError):
    """``pg_dump`` or ``pg_restore`` failed; the message is its last error line (never a password)."""


@dataclass(frozen=True)
class TenantLogin:
    """What the platform needs to act as a tenant's own role in a database (the tenant's or a new one of it).

    ``user``: the role that logs in, when it is not ``role`` itself: a move's stand-in (a member of the tenant's
    role and of nothing else, see :meth:`TenantCluster.ensure_stand_in`), which then acts as ``role`` with
    ``SET ROLE``. Whatever the tenant's code does in such a session (``RESET ROLE`` included), it has the tenant's
    rights and no more.
    """

    database: str
    role: str
    password: str = ""
    user: str | None = None

    @property
    def login_user(self) -> str:
        """The role named in the startup packet."""
        return self.user or self.role

    def __repr__(self) -> str:
        return f"TenantLogin(database={self.database!r}, role={self.role!r}, user={self.user!r})"


@dataclass(frozen=True)
class ServerFacts:
    """What registering a server (and deciding how a move runs) needs to know of it."""

    version: int
    """The major version (``server_version_num`` // 10000)."""
    superuser: bool
    createdb: bool
    createrole: bool
    wal_level: str
    max_replication_slots: int
    system_identifier: str
    """The cluster's identity: two registrations of one cluster share it."""

    @property
    def can_move_online(self) -> bool:
        """Whether the server can take part in a logical-replication move: ``wal_level = logical``, slots, and an
        admin that may create subscriptions (superuser on PostgreSQL 15)."""
        return self.wal_level == "logical" and self.max_replication_slots > 0 and self.superuser


class TemplateBusyError(RuntimeError):
    """The template stayed in use by other sessions through every retry of CREATE DATABASE."""


@dataclass(frozen=True)
class Clone:
    """The outcome of :meth:`TenantCluster.ensure_database`."""

    created: bool
    #: The template's schema version at the clone, when the clone needs no securing step (None: it does).
    version: int | None


@dataclass(frozen=True)
class MarkedObjects:
    """Tenant databases and roles of this installation found in the cluster, by tenant id."""

    databases: dict[str, uuid.UUID]
    roles: dict[str, uuid.UUID]


class TenantCluster:
    """The cluster of tenant databases, reached with an administrative role."""

    def __init__(self, settings: DatabaseSettings, *, url: str | None = None, name: str = "default") -> None:
        self._settings = settings
        self._dsn = asyncpg_dsn(url or settings.tenant_cluster_url)
        #: The registered server's name (``default``: the server of TENANT_DATABASE_URL).
        self.name = name
        self.template = settings.template_name
        self.template_owner = template_owner_role(settings.template_name)
        quote_ident(self.template)
        self._template_lock = zlib.crc32(f"tenantry:template:{self.template}".encode())
        self._pool: asyncpg.Pool | None = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None

    def _connect_kwargs(self, *, search_path: str = "pg_catalog", application_name: str = _ADMIN_APP) -> dict[str, Any]:
        return {
            "timeout": self._settings.connect_timeout,
            "command_timeout": self._settings.statement_timeout_ms / 1000,
            # Startup parameters beat ALTER DATABASE/ROLE ... SET, which the tenant controls for its own database.
            "server_settings": {
                "application_name": application_name,
                "search_path": search_path,
                "default_transaction_read_only": "off",
            },
        }

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[Any]:
        """An admin connection to the maintenance database, from a small pool.

        A new backend costs a few milliseconds of server CPU; provisioning would otherwise start one per tenant.
        On release the pool resets the session, advisory locks included.
        """
        pool = await self._admin_pool()
        conn = await pool.acquire(timeout=self._settings.connect_timeout)
        try:
            yield conn
        finally:
            with contextlib.suppress(Exception):
                await pool.release(conn, timeout=2)

    @contextlib.asynccontextmanager
    async def _admin_in(self, database: str) -> AsyncIterator[Any]:
        """A new admin connection to ``database``: the template, or a tenant database for ``secure_database``."""
        conn = await asyncpg.connect(self._dsn, database=database, **self._connect_kwargs())
        try:
            yield conn
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=2)

    @contextlib.asynccontextmanager
    async def tenant_connection(
        self, database: str, role: str, password: str, *, user: str | None = None
    ) -> AsyncIterator[Any]:
        """A connection to a tenant's database **as the tenant's own role**, for anything that touches its objects.

        The session user is the tenant (or ``user``, a stand-in that is a member of the tenant's role only, acting
        as ``role`` from the startup packet on), so whatever its functions, triggers or views do, they do with its
        rights only. ``search_path`` is pinned to ``public`` (the platform's objects live there, whatever the
        tenant set).
        """
        kwargs = self._connect_kwargs(search_path="public", application_name=_TENANT_APP)
        if user is not None and user != role:
            kwargs["server_settings"]["role"] = role
        conn = await asyncpg.connect(self._dsn, database=database, user=user or role, password=password, **kwargs)
        try:
            yield conn
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=2)

    async def _admin_pool(self) -> asyncpg.Pool:
        loop = asyncio.get_running_loop()
        if self._pool is None or self._pool_loop is not loop:
            if self._pool is not None:  # made on another event loop (a CLI run before this one): unusable here
                self._pool.terminate()
            self._pool, self._pool_loop = None, loop
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=0,
                max_size=ADMIN_POOL_SIZE,
                max_inactive_connection_lifetime=ADMIN_POOL_IDLE_SECONDS,
                **self._connect_kwargs(),
            )
        return self._pool

    async def close(self) -> None:
        """Close the pooled admin connections."""
        pool, self._pool = self._pool, None
        if pool is not None and self._pool_loop is asyncio.get_running_loop():
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pool.terminate()
        elif pool is not None:
            pool.terminate()

    # --- template -------------------------------------------------------------------------------------

    async def ensure_template(self) -> None:
        """Create the template database and its owner role if missing; keep it closed to connections."""
        tpl, owner = quote_ident(self.template), quote_ident(self.template_owner)
        async with self.connect() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", self._template_lock)
            try:
                if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", self.template_owner):
                    await conn.execute(f"CREATE ROLE {owner} NOLOGIN")
                if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", self.template):
                    await conn.execute(f"CREATE DATABASE {tpl} TEMPLATE template0 ENCODING 'UTF8'")
                await conn.execute(f"REVOKE ALL ON DATABASE {tpl} FROM PUBLIC")
                await conn.execute(f"ALTER DATABASE {tpl} ALLOW_CONNECTIONS false")
                await self._close_maintenance_databases(conn)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", self._template_lock)

    async def _close_maintenance_databases(self, conn: Any) -> None:
        """Take CONNECT and TEMPORARY on ``postgres`` and ``template1`` away from PUBLIC.

        Postgres grants them to PUBLIC by default, which would let every tenant role log in to them (tenant roles
        get CONNECT on their own database only). Done only where the admin role may (superuser or owner); the
        owner and superusers keep their access, other roles need an explicit GRANT.
        """
        async with conn.transaction():
            # Several installations may migrate at once; concurrent REVOKEs on one database would clash.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MAINTENANCE_LOCK)
            rows = await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname = ANY($1::text[])"
                " AND (has_database_privilege('public', oid, 'CONNECT')"
                " OR has_database_privilege('public', oid, 'TEMP'))"
                " AND pg_has_role(current_user, datdba, 'MEMBER')",
                list(MAINTENANCE_DATABASES),
            )
            for row in rows:
                await conn.execute(f"REVOKE CONNECT, TEMPORARY ON DATABASE {quote_ident(row['datname'])} FROM PUBLIC")

    async def migrate_template(self, migrations: list[SchemaMigration]) -> int:
        """Apply pending migrations to the template; return its version.

        Holds the template lock exclusively, so no clone runs while the template briefly accepts connections.
        """
        await self.ensure_template()
        tpl = quote_ident(self.template)
        async with self.connect() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", self._template_lock)
            try:
                await conn.execute(f"ALTER DATABASE {tpl} ALLOW_CONNECTIONS true")
                try:
                    async with self._admin_in(self.template) as tconn:
                        owner = quote_ident(self.template_owner)
                        # Objects of templates made by earlier versions move to pg_database_owner.
                        await tconn.execute(
                            f"ALTER SCHEMA public OWNER TO {DATABASE_OWNER}; "
                            "REVOKE CREATE ON SCHEMA public FROM PUBLIC; "
                            f"REASSIGN OWNED BY {owner} TO {DATABASE_OWNER}; DROP OWNED BY {owner}"
                        )
                        version = await apply_migrations(tconn, migrations, owner=DATABASE_OWNER)
                    await conn.execute(f"COMMENT ON DATABASE {tpl} IS {quote_literal(f'{_TEMPLATE_MARK}{version}')}")
                finally:
                    await conn.execute(f"ALTER DATABASE {tpl} ALLOW_CONNECTIONS false")
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", self._template_lock)
        return version

    # --- tenant objects -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _admin(self, conn: Any | None) -> AsyncIterator[Any]:
        """``conn`` when the caller shares one, else a connection of our own."""
        if conn is not None:
            yield conn
        else:
            async with self.connect() as own:
                yield own

    async def ensure_role(
        self,
        role: str,
        password: str,
        connection_limit: int,
        marker: str,
        *,
        conn: Any | None = None,
        login: bool = True,
    ) -> None:
        """Create the tenant's LOGIN role, or bring an existing one to the wanted attributes.

        ``conn``: an admin connection to reuse (provisioning shares one across its steps).

        The role is a member of no role. It has INHERIT so that, in the one database it owns, it holds the rights
        of ``pg_database_owner`` (the owner of everything cloned from the template); everywhere else that role's
        only member is another database's owner.
        """
        ident = quote_ident(role)
        verifier = quote_literal(scram_sha256_verifier(password))
        attributes = (
            f"{'LOGIN' if login else 'NOLOGIN'} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT "
            f"CONNECTION LIMIT {int(connection_limit)} PASSWORD {verifier}"
        )
        async with self._admin(conn) as admin:
            exists = await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
            verb = "ALTER" if exists else "CREATE"
            # One round trip; a multi-statement query runs as one implicit transaction.
            await admin.execute(f"{verb} ROLE {ident} {attributes}; COMMENT ON ROLE {ident} IS {quote_literal(marker)}")

    async def ensure_database(self, database: str, owner: str, marker: str, *, conn: Any | None = None) -> Clone:
        """Clone the template into ``database`` owned by ``owner`` unless it exists.

        Holds the template lock shared (clones run side by side; a template migration waits). A transient
        "source database is being accessed by other users" is retried with backoff.

        Returns:
            Whether it was created, and the template's schema version when the clone needs no
            :meth:`secure_database` (made now, from a template whose objects belong to ``pg_database_owner``).

        Raises:
            TemplateBusyError: the template stayed in use through every attempt.
        """
        db, role, tpl = quote_ident(database), quote_ident(owner), quote_ident(self.template)
        created, version = False, None
        async with self._admin(conn) as admin:
            if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
                await admin.execute("SELECT pg_advisory_lock_shared($1)", self._template_lock)
                try:
                    # Read under the lock: no template migration can run until the clone is made.
                    mark = await admin.fetchval(
                        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
                        self.template,
                    )
                    await failpoint("provision.before_database")
                    created = await self._clone(admin, db, role, tpl)
                    version = _template_version(mark) if created else None
                finally:
                    await admin.execute("SELECT pg_advisory_unlock_shared($1)", self._template_lock)
                # Cloned, but not marked yet and still open to PUBLIC (a resumed run finishes the job).
                await failpoint("provision.after_create_database")
            await admin.execute(
                f"COMMENT ON DATABASE {db} IS {quote_literal(marker)}; REVOKE ALL ON DATABASE {db} FROM PUBLIC; "
                f"GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {role}"
            )
        return Clone(created=created, version=version)

    async def _clone(self, conn: Any, db: str, role: str, tpl: str) -> bool:
        attempts = self._settings.create_database_attempts
        for attempt in range(1, attempts + 1):
            try:
                await conn.execute(f"CREATE DATABASE {db} OWNER {role} TEMPLATE {tpl} STRATEGY WAL_LOG")
            except asyncpg.DuplicateDatabaseError:
                return False
            except asyncpg.PostgresError as exc:
                if getattr(exc, "sqlstate", None) != _OBJECT_IN_USE or attempt == attempts:
                    if getattr(exc, "sqlstate", None) == _OBJECT_IN_USE:
                        raise TemplateBusyError("the template database stayed in use by other sessions") from exc
                    raise
                _log.warning("template_in_use_retrying", attempt=attempt)
                await asyncio.sleep(min(0.05 * 2**attempt, 2.0))
            else:
                return True
        return False

    async def secure_database(self, database: str, role: str, password: str) -> int:
        """Hand everything the template owner made inside ``database`` to the tenant's role. Idempotent.

        Needed only for a clone of a template made by an earlier version (see the module's docstring), or when
        the clone's template is unknown (a resumed provisioning). ``REASSIGN``/``DROP OWNED`` run no tenant code;
        the version is read as the tenant.

        Returns:
            The schema version the database was cloned at.
        """
        async with self._admin_in(database) as conn:
            owner = quote_ident(self.template_owner)
            await conn.execute(f"REASSIGN OWNED BY {owner} TO {quote_ident(role)}; DROP OWNED BY {owner}")
        async with self.tenant_connection(database, role, password) as conn:
            return await current_version(conn)

    async def set_login(self, role: str, *, enabled: bool, end_sessions: bool = True) -> None:
        """Allow or forbid the role to log in; forbidding also ends its open sessions unless ``end_sessions`` is
        false (the platform's own session as the tenant, opened just before)."""
        async with self.connect() as conn:
            if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
                return
            await conn.execute(f"ALTER ROLE {quote_ident(role)} {'LOGIN' if enabled else 'NOLOGIN'}")
            if not enabled and end_sessions:
                await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)

    async def set_connection_limit(self, role: str, limit: int) -> None:
        """Change the role's connection limit (a plan change)."""
        async with self.connect() as conn:
            if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
                await conn.execute(f"ALTER ROLE {quote_ident(role)} CONNECTION LIMIT {int(limit)}")

    async def drop_tenant(self, database: str, role: str) -> None:
        """Drop the tenant's database (ending its open connections) and its role. Idempotent."""
        await self.drop_database(database)
        await self.drop_role(role)

    async def drop_database(self, database: str) -> None:
        """Drop one database, ending its open connections. Idempotent.

        Its owner (the tenant) may have flagged it ``IS_TEMPLATE``, which DROP refuses: the flag is reset first.
        """
        db = quote_ident(database)
        async with self.connect() as conn:
            if await conn.fetchval("SELECT datistemplate FROM pg_database WHERE datname = $1", database):
                await conn.execute(f"ALTER DATABASE {db} IS_TEMPLATE false")
            await conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")

    async def drop_role(self, role: str) -> None:
        """Drop one role, ending its open sessions. Idempotent."""
        async with self.connect() as conn:
            if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
                await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
                await conn.execute(f"DROP ROLE IF EXISTS {quote_ident(role)}")

    async def database_exists(self, database: str) -> bool:
        """Whether a database of that name exists."""
        async with self.connect() as conn:
            return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database))

    async def create_empty_database(self, database: str, owner: str, marker: str) -> None:
        """Create an empty database owned by the tenant's role (from ``template0``: a restore fills it), marked and
        closed to everyone but its owner. Idempotent."""
        db, role = quote_ident(database), quote_ident(owner)
        async with self.connect() as conn:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                    await conn.execute(f"CREATE DATABASE {db} OWNER {role} TEMPLATE template0 ENCODING 'UTF8'")
            await conn.execute(
                f"COMMENT ON DATABASE {db} IS {quote_literal(marker)}; REVOKE ALL ON DATABASE {db} FROM PUBLIC; "
                f"GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {role}"
            )

    async def switch_database(self, current: str, incoming: str, aside: str, role: str) -> None:
        """Make ``incoming`` the tenant's database under the name ``current``; the old one is renamed ``aside``.

        The tenant's role cannot log in meanwhile (the caller gives LOGIN back), and its sessions are ended, so no
        connection sees a half-switched state: a tenant app reconnects by name and lands on the new database.
        Idempotent: resumed after a crash between the two renames, it does what is left.
        """
        async with self.connect() as conn:
            await conn.execute(f"ALTER ROLE {quote_ident(role)} NOLOGIN")
            for _ in range(5):
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = ANY($1::text[]) AND pid <> pg_backend_pid()",
                    [current, incoming, aside],
                )
                names = {
                    r["datname"]
                    for r in await conn.fetch(
                        "SELECT datname FROM pg_database WHERE datname = ANY($1::text[])", [current, incoming, aside]
                    )
                }
                try:
                    if current in names and incoming in names and aside not in names:
                        await conn.execute(f"ALTER DATABASE {quote_ident(current)} RENAME TO {quote_ident(aside)}")
                        names = (names - {current}) | {aside}
                        await failpoint("restore.between_renames")
                    if current not in names and incoming in names:
                        await conn.execute(f"ALTER DATABASE {quote_ident(incoming)} RENAME TO {quote_ident(current)}")
                    return
                except asyncpg.PostgresError as exc:
                    if getattr(exc, "sqlstate", None) != _OBJECT_IN_USE:
                        raise
                    await asyncio.sleep(0.05)  # a session raced the termination
            raise TemplateBusyError(f"database {current!r} stayed in use during the switch")

    # --- servers and moves -----------------------------------------------------------------------------

    async def facts(self) -> ServerFacts:
        """Version, the admin's attributes and the replication settings (registration, ``can_move_online``)."""
        async with self.connect() as conn:
            row = await conn.fetchrow(
                "SELECT current_setting('server_version_num')::int / 10000 AS version, r.rolsuper, r.rolcreatedb,"
                " r.rolcreaterole, current_setting('wal_level') AS wal_level,"
                " current_setting('max_replication_slots')::int AS slots,"
                " (SELECT system_identifier::text FROM pg_control_system()) AS system_identifier"
                " FROM pg_roles r WHERE r.rolname = current_user"
            )
        return ServerFacts(
            version=int(row["version"]),
            superuser=bool(row["rolsuper"]),
            createdb=bool(row["rolcreatedb"]),
            createrole=bool(row["rolcreaterole"]),
            wal_level=str(row["wal_level"]),
            max_replication_slots=int(row["slots"]),
            system_identifier=str(row["system_identifier"]),
        )

    def endpoint(self) -> tuple[str, int]:
        """Host and port of the admin URL (what another server's subscription connects to)."""
        parts = urlsplit(self._dsn)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return query.get("host") or parts.hostname or "localhost", int(query.get("port") or parts.port or 5432)

    async def ensure_stand_in(
        self, name: str, password: str, member_of: str, marker: str, *, replication: bool
    ) -> None:
        """A move's stand-in for the tenant's role: LOGIN with a password only the platform knows, a member of the
        tenant's role and of nothing else, so that it acts with the tenant's rights while the tenant's own role
        may not log in (and, with ``replication``, serves a subscription's walsender). Idempotent."""
        ident, verifier = quote_ident(name), quote_literal(scram_sha256_verifier(password))
        attributes = (
            f"LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE {'REPLICATION' if replication else 'NOREPLICATION'} "
            f"NOBYPASSRLS INHERIT CONNECTION LIMIT 8 PASSWORD {verifier}"
        )
        async with self.connect() as conn:
            verb = "ALTER" if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name) else "CREATE"
            await conn.execute(
                f"{verb} ROLE {ident} {attributes}; GRANT {quote_ident(member_of)} TO {ident}; "
                f"COMMENT ON ROLE {ident} IS {quote_literal(marker)}"
            )

    async def set_password(self, role: str, password: str) -> None:
        """Give the role a new password (a SCRAM verifier computed here)."""
        verifier = quote_literal(scram_sha256_verifier(password))
        async with self.connect() as conn:
            await conn.execute(f"ALTER ROLE {quote_ident(role)} PASSWORD {verifier}")

    async def role_exists(self, role: str) -> bool:
        """Whether a role of that name exists."""
        async with self.connect() as conn:
            return bool(await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role))

    async def allow_connections(self, database: str, *, allowed: bool) -> None:
        """Open or close a database to every connection (superusers included); closing also ends its sessions."""
        db = quote_ident(database)
        async with self.connect() as conn:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
                return
            await conn.execute(f"ALTER DATABASE {db} ALLOW_CONNECTIONS {'true' if allowed else 'false'}")
            if not allowed:
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = $1 AND pid <> pg_backend_pid()",
                    database,
                )

    async def sessions_gone(self, role: str, seconds: float) -> bool:
        """Wait until no session of ``role`` is left (``pg_terminate_backend`` only signals); True if none is."""
        deadline = asyncio.get_running_loop().time() + seconds
        async with self.connect() as conn:
            while await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", role):
                if asyncio.get_running_loop().time() > deadline:
                    return False
                await asyncio.sleep(0.01)
        return True

    async def flushed_wal_position(self) -> str:
        """A WAL position after every commit made so far, flushed to disk: commits of asynchronous sessions
        (``synchronous_commit = off``) may sit in WAL buffers that a walsender does not read yet, so a small
        transaction with a synchronous commit flushes them (and the position is that of its message)."""
        async with self.connect() as conn, conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit = on")
            position = str(await conn.fetchval("SELECT pg_current_wal_insert_lsn()::text"))
            await conn.execute("SELECT pg_logical_emit_message(true, 'tenantry', 'move cutover')")
        return position

    async def slot_lag(self, slot: str) -> int | None:
        """Bytes of WAL the slot's consumer has yet to confirm, or None when there is no such slot."""
        async with self.connect() as conn:
            value = await conn.fetchval(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots"
                " WHERE slot_name = $1",
                slot,
            )
        return int(value) if value is not None else None

    async def slot_confirmed(self, slot: str, lsn: str) -> bool:
        """Whether the slot's consumer has confirmed everything up to ``lsn``."""
        async with self.connect() as conn:
            return bool(
                await conn.fetchval(
                    "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
                    slot,
                    lsn,
                )
            )

    async def drop_slot(self, slot: str) -> None:
        """Drop a replication slot, ending the walsender that uses it. Idempotent."""
        async with self.connect() as conn:
            for _ in range(50):
                row = await conn.fetchrow("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", slot)
                if row is None:
                    return
                if row["active_pid"] is not None:
                    await conn.execute("SELECT pg_terminate_backend($1)", row["active_pid"])
                    await asyncio.sleep(0.1)
                    continue
                try:
                    await conn.execute("SELECT pg_drop_replication_slot($1)", slot)
                    return
                except asyncpg.PostgresError as exc:  # became active again, or dropped meanwhile
                    if getattr(exc, "sqlstate", None) == "42704":
                        return
                    await asyncio.sleep(0.1)
            raise RuntimeError(f"replication slot {slot!r} stayed in use")

    async def slots(self, prefix: str) -> list[str]:
        """Replication slots whose name starts with ``prefix``."""
        async with self.connect() as conn:
            rows = await conn.fetch(
                "SELECT slot_name FROM pg_replication_slots WHERE starts_with(slot_name, $1)", prefix
            )
        return [r["slot_name"] for r in rows]

    async def subscriptions(self, prefix: str) -> list[tuple[str, str]]:
        """(subscription, database) of the subscriptions whose name starts with ``prefix`` (a shared catalog)."""
        async with self.connect() as conn:
            rows = await conn.fetch(
                "SELECT s.subname, d.datname FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid"
                " WHERE starts_with(s.subname, $1)",
                prefix,
            )
        return [(r["subname"], r["datname"]) for r in rows]

    @contextlib.asynccontextmanager
    async def subscriber(self, database: str) -> AsyncIterator[Any]:
        """An admin connection to a move's target database, which only the platform can reach until the cutover,
        for the subscription's DDL and progress (they run no tenant code)."""
        async with self._admin_in(database) as conn:
            yield conn

    async def create_subscription(self, database: str, name: str, conninfo: str, publication: str) -> None:
        """Subscribe ``database`` to ``publication``; the slot on the publisher has the subscription's name.
        Idempotent. ``conninfo`` logs in as a move's stand-in whose password dies with the move."""
        async with self.subscriber(database) as conn:
            if await conn.fetchval("SELECT 1 FROM pg_subscription WHERE subname = $1", name):
                return
            await conn.execute(
                f"CREATE SUBSCRIPTION {quote_ident(name)} CONNECTION {quote_literal(conninfo)} "
                f"PUBLICATION {quote_ident(publication)} "
                f"WITH (slot_name = {quote_literal(name)}, copy_data = true, create_slot = true, enabled = true)"
            )

    async def drop_subscription(self, database: str, name: str) -> None:
        """Drop a subscription without touching its slot (the caller drops that on the publisher). Idempotent."""
        async with self.connect() as conn:
            found = await conn.fetchval(
                "SELECT 1 FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid"
                " WHERE s.subname = $1 AND d.datname = $2",
                name,
                database,
            )
            if not found:
                return
            allowed = await conn.fetchval("SELECT datallowconn FROM pg_database WHERE datname = $1", database)
            if not allowed:
                await conn.execute(f"ALTER DATABASE {quote_ident(database)} ALLOW_CONNECTIONS true")
        sub = quote_ident(name)
        async with self.subscriber(database) as conn:
            if await conn.fetchval("SELECT 1 FROM pg_subscription WHERE subname = $1", name):
                await conn.execute(f"ALTER SUBSCRIPTION {sub} DISABLE")
                await conn.execute(f"ALTER SUBSCRIPTION {sub} SET (slot_name = NONE)")
                await conn.execute(f"DROP SUBSCRIPTION {sub}")

    @contextlib.asynccontextmanager
    async def retired_admin(self, database: str) -> AsyncIterator[Any]:
        """An admin connection to a database a move retired (closed, its role unable to log in), opened just for
        the platform's own cleanup (dropping the move's publication, which runs no tenant code)."""
        async with self.connect() as conn:
            allowed = await conn.fetchval("SELECT datallowconn FROM pg_database WHERE datname = $1", database)
            if allowed is None:
                raise LookupError(database)
            if not allowed:
                await conn.execute(f"ALTER DATABASE {quote_ident(database)} ALLOW_CONNECTIONS true")
        try:
            async with self._admin_in(database) as conn:
                yield conn
        finally:
            if not allowed:
                async with self.connect() as conn:
                    await conn.execute(f"ALTER DATABASE {quote_ident(database)} ALLOW_CONNECTIONS false")

    def tools(self) -> PgTools:
        """``pg_dump``/``pg_restore`` against this cluster, as tenant roles."""
        return PgTools(self._dsn, self._settings.connect_timeout, self._settings.pg_bin_dir)

    async def database_size(self, database: str) -> int | None:
        """The database's size in bytes, or ``None`` when it does not exist."""
        async with self.connect() as conn:
            value = await conn.fetchval(
                "SELECT pg_database_size(datname) FROM pg_database WHERE datname = $1", database
            )
        return int(value) if value is not None else None

    async def database_sizes(self, databases: list[str]) -> dict[str, int]:
        """The sizes in bytes of those of ``databases`` that exist (one query for all of them)."""
        async with self.connect() as conn:
            rows = await conn.fetch(
                "SELECT datname, pg_database_size(datname) AS size FROM pg_database WHERE datname = ANY($1::text[])",
                databases,
            )
        return {row["datname"]: int(row["size"]) for row in rows}

    async def ping(self) -> None:
        """Check that the tenant cluster answers (for readiness); a pooled connection that died with a restart is
        dropped by the pool, and the next check gets a new one."""
        async with self.connect() as conn:
            await conn.fetchval("SELECT 1")

    async def marked_objects(self, installation_id: uuid.UUID) -> MarkedObjects:
        """Databases and roles whose marker says this installation made them for a tenant."""
        async with self.connect() as conn:
            dbs = await conn.fetch("SELECT datname, shobj_description(oid, 'pg_database') AS c FROM pg_database")
            roles = await conn.fetch("SELECT rolname, shobj_description(oid, 'pg_authid') AS c FROM pg_roles")
        return MarkedObjects(
            databases={r["datname"]: t for r in dbs if (t := parse_marker(r["c"], installation_id))},
            roles={r["rolname"]: t for r in roles if (t := parse_marker(r["c"], installation_id))},
        )


class PgTools:
    """``pg_dump`` and ``pg_restore`` as the tenant's own role: the only other way into the tenant cluster.

    They log in as the tenant (never as the platform's admin), so whatever the tenant's objects do while they run
    (a CHECK constraint or an index expression during a restore, a default, a domain) runs with the tenant's rights
    only; the archive's owner and privilege statements are not applied (``--no-owner --no-privileges``): what a
    restore creates belongs to the role that runs it. Nothing is written to local disk and the password travels in
    the child's environment only.
    """

    def __init__(self, dsn: str, connect_timeout: float, bin_dir: str | None = None) -> None:
        parts = urlsplit(dsn)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self._base_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C.UTF-8",
            "PGHOST": query.get("host") or parts.hostname or "localhost",
            "PGPORT": query.get("port") or str(parts.port or 5432),
            "PGCONNECT_TIMEOUT": str(max(2, int(connect_timeout))),
            "PGAPPNAME": _TENANT_APP,
            "PGOPTIONS": _TOOL_OPTIONS,
        }
        if "sslmode" in query:
            self._base_env["PGSSLMODE"] = query["sslmode"]
        self._bin_dir = bin_dir

    def _binary(self, name: str) -> str:
        found = shutil.which(name, path=self._bin_dir) if self._bin_dir else shutil.which(name)
        if found is None:
            raise PgToolError(f"{name} is not installed (install the PostgreSQL client, or set PG_BIN_DIR)")
        return found

    def _env(self, login: TenantLogin) -> dict[str, str]:
        return {
            **self._base_env,
            "PGUSER": login.login_user,
            "PGPASSWORD": login.password,
            "PGDATABASE": login.database,
        }

    async def dump(
        self, login: TenantLogin, *, schema_only: bool = False, snapshot: str | None = None, archive: bool = False
    ) -> AsyncIterator[bytes]:
        """The database as a custom-format archive (``pg_restore`` reads it), or with ``schema_only`` its schema
        as plain SQL without owners or privileges (as a custom-format archive too with ``archive``); streamed in
        chunks of up to :data:`TOOL_CHUNK_BYTES`.

        Raises:
            PgToolError: the tool is missing or failed.
        """
        args = [self._binary("pg_dump"), "--no-password"]
        if login.user is not None and login.user != login.role:
            args.append(f"--role={login.role}")
        if schema_only and archive:
            args += ["--schema-only", "--format=custom"]
        else:
            args += (
                ["--schema-only", "--format=plain", "--no-owner", "--no-privileges"]
                if schema_only
                else ["--format=custom"]
            )
        if snapshot:
            args.append(f"--snapshot={snapshot}")
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env(login),
            limit=TOOL_CHUNK_BYTES,
        )
        assert proc.stdout is not None
        errors = asyncio.create_task(_last_lines(proc.stderr))
        try:
            while chunk := await asyncio.wait_for(proc.stdout.read(TOOL_CHUNK_BYTES), TOOL_IDLE_TIMEOUT_SECONDS):
                yield chunk
            code = await asyncio.wait_for(proc.wait(), TOOL_IDLE_TIMEOUT_SECONDS)
            if code != 0:
                raise PgToolError(f"pg_dump failed: {await errors}")
        finally:
            await _reap(proc, errors)

    async def restore(self, login: TenantLogin, archive: AsyncIterable[bytes]) -> None:
        """Restore a custom-format ``archive`` into ``login.database`` as the tenant's role, stopping at the first
        error.

        Raises:
            PgToolError: the tool is missing or failed (the archive is unreadable, or a statement failed).
        """
        args = [
            self._binary("pg_restore"), "--no-password", "--exit-on-error", "--no-owner", "--no-privileges",
            "--no-tablespaces", "--no-security-labels", "--no-subscriptions", "--no-publications",
            f"--role={login.role}", f"--dbname={login.database}",
        ]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self._env(login),
        )
        assert proc.stdin is not None
        errors = asyncio.create_task(_last_lines(proc.stderr))
        try:
            broken = False
            async for chunk in archive:
                try:
                    proc.stdin.write(chunk)
                    await asyncio.wait_for(proc.stdin.drain(), TOOL_IDLE_TIMEOUT_SECONDS)
                except (BrokenPipeError, ConnectionResetError):
                    broken = True  # pg_restore stopped reading: its exit code and message say why
                    break
            if not broken:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    proc.stdin.close()
                    await proc.stdin.wait_closed()
            code = await asyncio.wait_for(proc.wait(), TOOL_IDLE_TIMEOUT_SECONDS)
            if code != 0 or broken:
                raise PgToolError(f"pg_restore failed: {await errors}")
        finally:
            await _reap(proc, errors)


async def _last_lines(stream: asyncio.StreamReader | None, keep: int = 4096) -> str:
    """The end of a tool's stderr, for the error message (passwords never reach it: they are not arguments)."""
    if stream is None:
        return ""
    tail = b""
    while chunk := await stream.read(65536):
        tail = (tail + chunk)[-keep:]
    lines = [line.strip() for line in tail.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1][:500] if lines else "no message"


async def _reap(proc: asyncio.subprocess.Process, errors: asyncio.Task[str]) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 10)
    if not errors.done():
        errors.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await errors


def _template_version(mark: str | None) -> int | None:
    """The schema version in the template's comment, or None for a template not converted to pg_database_owner."""
    if mark is None or not mark.startswith(_TEMPLATE_MARK):
        return None
    digits = mark.removeprefix(_TEMPLATE_MARK)
    return int(digits) if digits.isdigit() else None


__all__ = [
    "Clone",
    "MarkedObjects",
    "PgToolError",
    "PgTools",
    "ServerFacts",
    "TemplateBusyError",
    "TenantCluster",
    "TenantLogin",
    "object_marker",
]
