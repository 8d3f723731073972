"""The tenant directory's wire format: what the tenant-service tells gateways about tenants.

A gateway asks for everything changed since the revision it has; the answer carries the tenants that changed
(with their domains, plan limits and API key hashes — never a secret) and the ids of tenants that are gone.
"""

from __future__ import annotations

import msgspec


class DirectoryKey(msgspec.Struct, frozen=True):
    """An API key as a gateway needs it: the keyed hash (hex), never the key."""

    id: str
    hash: str
    scopes: list[str]
    expires_at: float | None
    revoked: bool


class DirectoryIssuer(msgspec.Struct, frozen=True):
    """An external JWT issuer a tenant trusts: tokens whose ``iss`` and ``aud`` match, signed by a key published
    at ``jwks_url`` with one of ``algorithms``, authenticate as that tenant. An (issuer, audience) pair belongs to
    one tenant at most."""

    id: str
    issuer: str
    audience: str
    jwks_url: str
    algorithms: list[str]


class DirectoryTenant(msgspec.Struct, frozen=True):
    """A tenant as a gateway needs it."""

    id: str
    slug: str
    status: str
    plan: str
    limits: dict[str, int]
    upstream_url: str | None
    domains: list[str]
    keys: list[DirectoryKey]
    revision: int
    #: Absent in pages from a tenant-service older than the feature: no external issuers.
    jwt_issuers: list[DirectoryIssuer] = msgspec.field(default_factory=list)


class DirectoryPage(msgspec.Struct, frozen=True):
    """Changes since a revision: changed tenants, removed tenant ids, and the new high-water revision."""

    revision: int
    tenants: list[DirectoryTenant]
    removed: list[str]
    full: bool
