"""Names of Postgres objects, derived only from validated input and always quoted."""

from __future__ import annotations

import re
import uuid
from typing import Final

_IDENT: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
MARKER_PREFIX: Final = "tenantry:"


def quote_ident(name: str) -> str:
    """Quote ``name`` as a SQL identifier, refusing anything that is not a plain lowercase name.

    Raises:
        ValueError: the name is not a safe identifier; it never reaches SQL.
    """
    if not _IDENT.fullmatch(name):
        raise ValueError(f"unsafe identifier {name!r}")
    return '"' + name + '"'


def quote_literal(value: str) -> str:
    """Quote ``value`` as a SQL string literal (for utility statements that take no parameters)."""
    return "'" + value.replace("'", "''") + "'"


def tenant_object_name(prefix: str, slug: str, tenant_id: uuid.UUID) -> str:
    """The name of a tenant's database, which is also the name of its role.

    The slug keeps it readable for operators; the id suffix keeps it unique when a slug is reused after a purge.
    """
    name = f"{prefix}{slug.replace('-', '_')}_{tenant_id.hex[:12]}"
    quote_ident(name)
    return name


def template_owner_role(template_name: str) -> str:
    """The NOLOGIN role that owns every object inside the template (reassigned to the tenant on clone)."""
    name = f"{template_name}_owner"
    quote_ident(name)
    return name


def object_marker(installation_id: uuid.UUID, tenant_id: uuid.UUID) -> str:
    """The comment put on a tenant's database and role: which registry owns it, and which tenant."""
    return f"{MARKER_PREFIX}{installation_id}:tenant:{tenant_id}"


def parse_marker(comment: str | None, installation_id: uuid.UUID) -> uuid.UUID | None:
    """The tenant id in a marker of this installation, else ``None``."""
    if not comment:
        return None
    head = f"{MARKER_PREFIX}{installation_id}:tenant:"
    if not comment.startswith(head):
        return None
    try:
        return uuid.UUID(comment[len(head) :])
    except ValueError:
        return None
