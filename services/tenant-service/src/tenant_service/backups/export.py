"""The export archive (data portability, contract §10): ``manifest.json``, ``schema.sql`` and one CSV per table.

Everything is read as the tenant's own role in one repeatable-read, read-only transaction, and ``pg_dump
--schema-only`` joins that transaction's snapshot, so the files describe one moment. The CSV files (UTF-8, RFC
4180 quoting with ``\n`` line ends as PostgreSQL writes them, a header row) are spooled to a private temporary
directory, because a tar entry's size must precede its bytes; the archive is then streamed from there through
encryption into the store, and the directory removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tarfile
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import msgspec

from tenant_service.context import AppContext
from tenant_service.db.models import Tenant
from tenant_service.provisioning.cluster import TenantLogin
from tenant_service.provisioning.schema import current_version
from tenantry_common.timeutil import utcnow

_CHUNK: Final = 1 << 20
#: One table's COPY may take this long (the connection's statement timeout is for short maintenance statements).
_COPY_TIMEOUT_SECONDS: Final = 6 * 3600.0
#: Characters kept as they are in a CSV's file name; anything else (a tenant may name a table ``../x``) is %-escaped.
_UNSAFE_NAME: Final = re.compile(r"[^A-Za-z0-9_-]")
_TABLES: Final = """
SELECT n.nspname AS schema, c.relname AS name
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
ORDER BY 1, 2
"""


def _file_name(schema: str, name: str, taken: set[str]) -> str:
    def escape(part: str) -> str:
        return _UNSAFE_NAME.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), part)

    base = f"data/{escape(schema)}.{escape(name)}"
    candidate, n = f"{base}.csv", 1
    while candidate in taken:  # escaping is one-to-one; this only guards against the unthinkable
        n += 1
        candidate = f"{base}.{n}.csv"
    taken.add(candidate)
    return candidate


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _tar(folder: Path, files: list[str], target: Path) -> None:
    with tarfile.open(target, "w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as archive:
        for name in files:
            info = archive.gettarinfo(folder / name, arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with (folder / name).open("rb") as handle:
                archive.addfile(info, handle)


@contextlib.asynccontextmanager
async def build_export(
    ctx: AppContext, tenant: Tenant, login: TenantLogin
) -> AsyncIterator[tuple[AsyncIterator[bytes], int]]:
    """The export's ``.tar.gz`` as chunks, and the schema version it was taken at, for the block's duration."""
    with tempfile.TemporaryDirectory(prefix="tenantry-export-") as raw:
        folder = Path(raw)
        os.chmod(folder, 0o700)
        (folder / "data").mkdir()
        tables: list[dict[str, Any]] = []
        taken: set[str] = set()
        cluster = await ctx.servers.for_tenant(tenant)
        connection = cluster.tenant_connection(login.database, login.role, login.password)
        async with connection as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_catalog.pg_export_snapshot()")
            version = await current_version(conn)
            with (folder / "schema.sql").open("wb") as schema:
                async for chunk in cluster.tools().dump(login, schema_only=True, snapshot=snapshot):
                    await asyncio.to_thread(schema.write, chunk)
            for row in await conn.fetch(_TABLES):
                file = _file_name(row["schema"], row["name"], taken)
                path = folder / file
                with path.open("wb") as handle:

                    async def sink(data: bytes, handle: Any = handle) -> None:
                        await asyncio.to_thread(handle.write, data)

                    status = await conn.copy_from_table(
                        row["name"],
                        schema_name=row["schema"],
                        output=sink,
                        format="csv",
                        header=True,
                        timeout=_COPY_TIMEOUT_SECONDS,
                    )
                tables.append(
                    {
                        "schema": row["schema"],
                        "name": row["name"],
                        "file": file,
                        "rows": int(str(status).rpartition(" ")[2] or 0),
                    }
                )
        for table in tables:
            table["sha256"] = await asyncio.to_thread(_digest, folder / table["file"])
        manifest = {
            "tenant": {"id": str(tenant.id), "slug": tenant.slug},
            "created_at": utcnow().isoformat(),
            "schema_version": version,
            "tables": tables,
        }
        (folder / "manifest.json").write_bytes(msgspec.json.format(msgspec.json.encode(manifest), indent=2))
        target = Path(raw + ".tar.gz")
        try:
            files = ["manifest.json", "schema.sql", *(t["file"] for t in tables)]
            await asyncio.to_thread(_tar, folder, files, target)
            yield _read(target), version
        finally:
            await asyncio.to_thread(target.unlink, missing_ok=True)


async def _read(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, _CHUNK):
            yield chunk
