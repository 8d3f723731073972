"""Registry migrations with Alembic, run programmatically and serialised across replicas."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

_MIGRATIONS = Path(__file__).parent / "migrations"
#: Advisory lock key held while the registry schema is upgraded (any constant unique to this purpose).
_REGISTRY_LOCK = 0x7E4A_0001


def alembic_config() -> Config:
    """An Alembic config pointing at the registry migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    return cfg


def _upgrade(connection: Connection, revision: str) -> None:
    connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _REGISTRY_LOCK})
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


async def upgrade_registry(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the registry schema to ``revision``; concurrent callers wait for each other.

    Also closes the registry database to PUBLIC: tenant roles may live on the same cluster, and must get
    "permission denied" there.
    """
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade, revision)
        await conn.execute(
            text("DO $$ BEGIN EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database()); END $$")
        )
