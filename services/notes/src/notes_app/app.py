"""Notes: ``GET /whoami``, ``POST /notes``, ``GET /notes`` — each tenant sees only its own database. A tenant's
viewers read notes but may not write them (403 ``forbidden``); API keys, which carry no role, do both."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Litestar, get, post
from litestar.params import JSONBody, Parameter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tenantry_app import TenantIdentity, TenantryPlugin, require_role
from tenantry_common.litestar_problems import problem_exception_handlers
from tenantry_common.logging import configure_logging
from tenantry_common.settings import env_str


class NoteCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /notes``."""

    body: Annotated[str, msgspec.Meta(min_length=1, max_length=10_000)]


class Note(msgspec.Struct):
    """A stored note."""

    id: int
    body: str
    created_at: datetime


class NotePage(msgspec.Struct):
    """The tenant's notes, newest first; ``next_cursor``, passed back as ``cursor``, continues after the page."""

    items: list[Note]
    next_cursor: str | None = None


class WhoAmI(msgspec.Struct):
    """Which tenant, and which database the app really used."""

    tenant_id: str
    slug: str
    database: str


@get("/whoami")
async def whoami(tenant: TenantIdentity, db_session: AsyncSession) -> WhoAmI:
    """The tenant and ``current_database()`` of the connection used."""
    database = (await db_session.execute(text("SELECT current_database()"))).scalar_one()
    return WhoAmI(tenant_id=tenant.tenant_id, slug=tenant.slug, database=str(database))


@post("/notes", status_code=201)
async def create_note(tenant: TenantIdentity, db_session: AsyncSession, data: JSONBody[NoteCreate]) -> Note:
    """Store a note in the tenant's database (not for viewers)."""
    require_role(tenant, "admin", "user")
    if "\x00" in data.body:
        from tenantry_common.problems import FieldError, InvalidInputError  # noqa: PLC0415

        raise InvalidInputError("invalid body", errors=[FieldError(field="body", message="must not contain NUL")])
    row = (
        await db_session.execute(
            text("INSERT INTO notes (body) VALUES (:body) RETURNING id, body, created_at"), {"body": data.body}
        )
    ).one()
    await db_session.commit()
    return Note(id=row.id, body=row.body, created_at=row.created_at)


@get("/notes")
async def list_notes(
    db_session: AsyncSession,
    limit: Annotated[int, Parameter(ge=1, le=200)] = 200,
    cursor: Annotated[str | None, Parameter(max_length=20, pattern=r"^[1-9][0-9]*$")] = None,
) -> NotePage:
    """A page of the tenant's notes (its database holds no other tenant's), newest first."""
    rows = await db_session.execute(
        text(
            "SELECT id, body, created_at FROM notes WHERE (CAST(:before AS bigint) IS NULL OR id < :before)"
            " ORDER BY id DESC LIMIT :fetch"
        ),
        {"before": int(cursor) if cursor else None, "fetch": limit + 1},
    )
    notes = [Note(id=r.id, body=r.body, created_at=r.created_at) for r in rows]
    more = len(notes) > limit
    return NotePage(items=notes[:limit], next_cursor=str(notes[limit - 1].id) if more else None)


def create_app() -> Litestar:
    """The notes app (``uvicorn --factory notes_app.app:create_app``)."""
    configure_logging("notes", fmt=env_str("LOG_FORMAT", "auto"), level=env_str("LOG_LEVEL", "INFO"))
    plugin = TenantryPlugin()

    @get("/healthz")
    async def healthz() -> dict[str, object]:
        """Liveness (needs no tenant token), with how many tenant engines are open (a count, no ids)."""
        return {"status": "ok", "engines": len(plugin.runtime.databases.active_tenants())}

    return Litestar(
        route_handlers=[whoami, create_note, list_notes, healthz],
        plugins=[plugin],
        exception_handlers=problem_exception_handlers(),
        logging_config=None,
    )
