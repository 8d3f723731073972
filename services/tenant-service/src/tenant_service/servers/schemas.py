"""Bodies and views of ``/admin/servers`` and of moves (contract §11)."""

from datetime import datetime
from typing import Annotated, Literal

import msgspec

ServerName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9-]{0,31}$", max_length=32)]
LabelKey = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")]
LabelValue = Annotated[str, msgspec.Meta(max_length=63)]
Labels = Annotated[dict[LabelKey, LabelValue], msgspec.Meta(max_length=20)]
Capacity = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
ServerState = Literal["active", "draining", "disabled"]
MoveMode = Literal["auto", "logical", "dump"]


class ServerCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /admin/servers``."""

    name: ServerName
    url: Annotated[str, msgspec.Meta(min_length=12, max_length=2048)]
    """Admin URL (``postgresql://user:password@host:port/postgres``); the role needs CREATEDB and CREATEROLE
    (and superuser for online moves on PostgreSQL 15)."""
    capacity: Capacity | None = None
    labels: Labels = msgspec.field(default_factory=dict)


class ServerUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``PATCH /admin/servers/{name}``: only the fields present change."""

    state: ServerState | msgspec.UnsetType = msgspec.UNSET
    capacity: Capacity | msgspec.UnsetType = msgspec.UNSET
    labels: Labels | msgspec.UnsetType = msgspec.UNSET


class ServerView(msgspec.Struct):
    """A registered server; never its password."""

    name: str
    host: str
    port: int
    state: str
    capacity: int
    labels: dict[str, str]
    tenants: int
    database_bytes: int | None
    """Sum of its tenant databases' sizes; null when the server cannot be reached right now."""
    version: int | None
    can_move_online: bool
    reachable: bool
    template_version: int | None
    created_at: datetime
    updated_at: datetime


class ServerPage(msgspec.Struct):
    """Every server (one page: a registry holds a handful)."""

    items: list[ServerView]
    next_cursor: Annotated[str | None, msgspec.Meta(description="always null: every server fits one page")] = None


class MoveRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /admin/tenants/{ref}/move``."""

    server: ServerName
    mode: MoveMode = "auto"
    """``auto``: logical replication when both servers allow it and the tenant's schema is safe for it, else dump
    and restore; ``dump`` forces the dump path; ``logical`` fails the move when it cannot run online."""


class Placement(msgspec.Struct, forbid_unknown_fields=True):
    """``placement`` of a create body: servers carrying every one of these labels."""

    labels: Labels = msgspec.field(default_factory=dict)
