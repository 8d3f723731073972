"""What a move reads and changes inside a tenant's database, always in a session of the tenant's rights (a move's
stand-in acting as the tenant's role, see :class:`~tenant_service.provisioning.cluster.TenantLogin`).

Nothing here runs as the platform's admin: the catalog queries read what every role may read, and the publication,
the replica identities, the sequences and the counts are the tenant's own objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The tenant's tables that logical replication copies: permanent ordinary tables (partitions included, their
#: partitioned parents not: rows live in the leaves), outside the system schemas, with their replica identity and
#: whether they have a primary key.
_TABLES = """
SELECT n.nspname AS schema, c.relname AS name, c.relreplident::text AS identity,
       EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) AS has_pk,
       c.relpersistence::text AS persistence
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%'
ORDER BY 1, 2
"""

_SEQUENCES = """
SELECT n.nspname AS schema, c.relname AS name
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND c.relpersistence = 'p'
ORDER BY 1, 2
"""

#: Everything in the schema that would run code inside a subscription's apply worker, which on PostgreSQL 15 runs
#: with its owner's rights (a superuser): triggers that fire in replica mode, and user-defined or non-immutable
#: functions (directly, through an operator or through an operator class) in CHECK and exclusion constraints,
#: domain constraints, index expressions and predicates, and generated columns. Immutable built-in functions have
#: no side effects; anything else sends the move down the dump path, which runs as the tenant.
_APPLY_HAZARDS = """
WITH objects AS (
    SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass AS classid, c.oid AS objid,
           'constraint ' || c.conname AS what
    FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_namespace n ON n.oid = c.connamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  UNION ALL
    SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, i.indexrelid, 'index ' || ic.relname
    FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = ic.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  UNION ALL
    SELECT 'pg_catalog.pg_attrdef'::pg_catalog.regclass, d.oid, 'generated column ' || a.attname
    FROM pg_catalog.pg_attrdef d
    JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum AND a.attgenerated <> ''
    JOIN pg_catalog.pg_class c ON c.oid = d.adrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
), called AS (
    SELECT o.what, d.refobjid AS proc FROM objects o JOIN pg_catalog.pg_depend d
      ON d.classid = o.classid AND d.objid = o.objid AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
  UNION ALL
    SELECT o.what, op.oprcode FROM objects o JOIN pg_catalog.pg_depend d
      ON d.classid = o.classid AND d.objid = o.objid AND d.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass
    JOIN pg_catalog.pg_operator op ON op.oid = d.refobjid
  UNION ALL
    SELECT o.what, ap.amproc FROM objects o JOIN pg_catalog.pg_depend d
      ON d.classid = o.classid AND d.objid = o.objid AND d.refclassid = 'pg_catalog.pg_opclass'::pg_catalog.regclass
    JOIN pg_catalog.pg_opclass oc ON oc.oid = d.refobjid
    JOIN pg_catalog.pg_amproc ap ON ap.amprocfamily = oc.opcfamily
    WHERE oc.oid >= 16384
)
SELECT DISTINCT what || ' calls ' || p.oid::pg_catalog.regprocedure::text AS hazard
FROM called JOIN pg_catalog.pg_proc p ON p.oid = called.proc
WHERE p.oid >= 16384 OR p.provolatile <> 'i'
UNION
SELECT 'trigger ' || t.tgname || ' fires during replication'
FROM pg_catalog.pg_trigger t WHERE NOT t.tgisinternal AND t.tgenabled IN ('A', 'R')
UNION
SELECT 'unlogged table ' || c.relname FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence = 'u' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
UNION
SELECT 'large objects (not replicated)' WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_largeobject_metadata)
ORDER BY 1
LIMIT 20
"""

#: A fingerprint of the schema parts a logical copy depends on: a change during the move (a new table, a changed
#: column) means the copy no longer matches, and the cutover is refused.
_FINGERPRINT = """
SELECT pg_catalog.md5(coalesce(pg_catalog.string_agg(x, ',' ORDER BY x), ''))
FROM (
    SELECT n.nspname || '.' || c.relname || ':' || c.relkind::text || ':' || a.attnum::text || ':' || a.attname || ':'
           || a.atttypid::text || ':' || a.attisdropped::text AS x
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
    WHERE c.relkind IN ('r', 'p', 'S') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
      AND n.nspname NOT LIKE 'pg_temp%'
) s
"""


def qualified(schema: str, name: str) -> str:
    """``"schema"."name"`` for any names (the tenant's own, which may hold any character)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in (schema, name))


@dataclass(frozen=True)
class Table:
    """One of the tenant's tables."""

    schema: str
    name: str
    identity: str
    has_pk: bool

    @property
    def qualified(self) -> str:
        """Its quoted, schema-qualified name."""
        return qualified(self.schema, self.name)

    @property
    def needs_full_identity(self) -> bool:
        """UPDATE and DELETE of a published table need a replica identity: without a primary key (or a chosen
        index), the whole row serves (``REPLICA IDENTITY FULL``) while the move runs."""
        return self.identity == "n" or (self.identity == "d" and not self.has_pk)


async def tables(conn: Any) -> list[Table]:
    """The tenant's permanent tables."""
    return [
        Table(r["schema"], r["name"], r["identity"], r["has_pk"])
        for r in await conn.fetch(_TABLES)
        if r["persistence"] == "p"
    ]


async def apply_hazards(conn: Any) -> list[str]:
    """Why the tenant's schema may not be copied by logical replication (empty: it may)."""
    return [r["hazard"] for r in await conn.fetch(_APPLY_HAZARDS)]


async def fingerprint(conn: Any) -> str:
    """The schema fingerprint (see :data:`_FINGERPRINT`)."""
    return str(await conn.fetchval(_FINGERPRINT))


async def set_identity(conn: Any, table: Table, identity: str) -> None:
    """``REPLICA IDENTITY`` of one table: ``FULL``, ``DEFAULT`` or ``NOTHING``."""
    assert identity in ("FULL", "DEFAULT", "NOTHING")
    await conn.execute(f"ALTER TABLE {table.qualified} REPLICA IDENTITY {identity}")


async def create_publication(conn: Any, name: str, published: list[Table]) -> None:
    """A publication of ``published`` (owned by the tenant's role; ``FOR TABLE`` needs only table ownership).
    Idempotent."""
    if await conn.fetchval("SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1", name):
        return
    listed = ", ".join(t.qualified for t in published)
    await conn.execute(f'CREATE PUBLICATION "{name}"' + (f" FOR TABLE {listed}" if listed else ""))


async def drop_publication(conn: Any, name: str) -> None:
    """Drop the move's publication. Idempotent."""
    await conn.execute(f'DROP PUBLICATION IF EXISTS "{name}"')


async def sequences(conn: Any) -> list[tuple[str, int, bool]]:
    """(qualified name, last_value, is_called) of every sequence."""
    values = []
    for row in await conn.fetch(_SEQUENCES):
        name = qualified(row["schema"], row["name"])
        state = await conn.fetchrow(f"SELECT last_value, is_called FROM {name}")  # noqa: S608 - quoted identifier
        values.append((name, int(state["last_value"]), bool(state["is_called"])))
    return values


async def set_sequences(conn: Any, values: list[tuple[str, int, bool]]) -> None:
    """Carry sequence positions over (``setval``)."""
    for name, last, called in values:
        await conn.execute("SELECT pg_catalog.setval($1::regclass, $2, $3)", name, last, called)


async def small_tables(conn: Any, published: list[Table], limit_bytes: int) -> list[Table]:
    """The tables of at most ``limit_bytes`` (heap and TOAST): those the quick check inside the write pause counts.
    Larger ones would make the pause grow with the tenant; the full comparison after the switch covers them."""
    sizes = {
        r["name"]: int(r["size"])
        for r in await conn.fetch(
            "SELECT n.nspname || '.' || c.relname AS name, pg_catalog.pg_table_size(c.oid) AS size"
            " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind = 'r'"
        )
    }
    return [t for t in published if sizes.get(f"{t.schema}.{t.name}", 0) <= limit_bytes]


async def row_counts(conn: Any, published: list[Table]) -> dict[str, int]:
    """Rows per table (the quick check inside the write pause)."""
    query = "SELECT count(*) FROM {}"
    return {t.qualified: int(await conn.fetchval(query.format(t.qualified))) for t in published}


async def checksums(conn: Any, published: list[Table]) -> dict[str, tuple[int, str]]:
    """(rows, order-independent checksum of every row's text) per table: the full comparison after the switch."""
    result = {}
    for t in published:
        query = (
            "SELECT count(*) AS n, coalesce(sum(pg_catalog.hashtextextended(x::text, 0)::numeric), 0)::text AS h "
            "FROM {} x"
        )
        row = await conn.fetchrow(query.format(t.qualified))
        result[t.qualified] = (int(row["n"]), str(row["h"]))
    return result
