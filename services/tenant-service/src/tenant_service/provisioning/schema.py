"""The tenant schema: versioned SQL migrations applied to the template and to every tenant database.

A deliberately small runner instead of Alembic: each tenant database is migrated in one transaction on its own
asyncpg connection, so hundreds can run concurrently in one process (Alembic's module-level context cannot),
and the version record lives inside the tenant database it describes.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tenant_service.provisioning.names import quote_ident

DEFAULT_MIGRATIONS_DIR: Final = Path(__file__).parent / "schema"
VERSION_TABLE: Final = "tenantry_schema_migrations"
_FILE: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK: Final = zlib.crc32(b"tenantry:tenant-schema")


class SchemaError(RuntimeError):
    """The migrations on disk are inconsistent, or a database is ahead of them."""


@dataclass(frozen=True)
class SchemaMigration:
    """One migration file."""

    version: int
    name: str
    sql: str


def load_migrations(directory: Path = DEFAULT_MIGRATIONS_DIR) -> list[SchemaMigration]:
    """Read ``NNNN_name.sql`` files in version order; versions must be 1..N without gaps.

    Raises:
        SchemaError: no migrations at all (a missing or wrong directory), a gap, a duplicate, or a file whose
            name does not match.
    """
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.fullmatch(path.name)
        if not match:
            raise SchemaError(f"migration file {path.name} must be named NNNN_name.sql")
        migrations.append(SchemaMigration(int(match.group(1)), match.group(2), path.read_text(encoding="utf-8")))
    if not migrations:
        raise SchemaError(f"no NNNN_name.sql migrations in {directory}")
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise SchemaError(f"migration versions must be 1..N without gaps; found {migration.version}")
    return migrations


def head_version(migrations: list[SchemaMigration]) -> int:
    """The version a fully migrated database reports."""
    return migrations[-1].version if migrations else 0


async def current_version(conn: Any) -> int:
    """The schema version of the database behind ``conn`` (0 when never migrated).

    ``conn`` is the tenant's own session (or the template's): the table is the tenant's, and so is whatever a read
    of it may run. Built-ins are schema-qualified all the same.
    """
    exists = await conn.fetchval("SELECT pg_catalog.to_regclass($1::text) IS NOT NULL", f"public.{VERSION_TABLE}")
    if not exists:
        return 0
    return int(
        await conn.fetchval(f"SELECT COALESCE(pg_catalog.max(version), 0) FROM public.{VERSION_TABLE}")  # noqa: S608
    )


async def apply_migrations(conn: Any, migrations: list[SchemaMigration], *, owner: str | None) -> int:
    """Apply the pending ``migrations`` on ``conn`` in one transaction; return the new version.

    Args:
        conn: an asyncpg connection to the database to migrate: a tenant database's own role (see
            ``TenantCluster.tenant_connection``), or an admin session on the template.
        migrations: all migrations, as from :func:`load_migrations`.
        owner: the role to ``SET ROLE`` to before creating anything (``pg_database_owner`` on the template);
            ``None`` when ``conn`` already is the owner. Never used on a tenant database: tenant code can undo a
            ``SET ROLE`` of a superuser session.

    Raises:
        SchemaError: the database is at a version newer than the migrations know.
    """
    head = head_version(migrations)
    async with conn.transaction():
        await conn.execute("SELECT pg_catalog.pg_advisory_xact_lock($1::bigint)", _LOCK)
        if owner:
            await conn.execute(f"SET LOCAL ROLE {quote_ident(owner)}")
        await conn.execute("SET LOCAL search_path = public")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS public.{VERSION_TABLE} ("
            "version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        version = await current_version(conn)
        if version > head:
            raise SchemaError(f"database is at schema version {version}, newer than the known head {head}")
        for migration in migrations[version:]:
            await conn.execute(migration.sql)
            await conn.execute(
                f"INSERT INTO public.{VERSION_TABLE} (version, name) VALUES ($1, $2)",  # noqa: S608
                migration.version,
                migration.name,
            )
    return head
