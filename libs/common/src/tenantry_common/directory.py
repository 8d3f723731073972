"""The tenant directory's wire format: what the tenant-service tells gateways about tenants.

A gateway asks for everything changed since the revision it has; the answer carries the tenants that changed
(with their domains, plan limits and API key hashes — never a secret) and the ids of tenants that are gone. A tenant
whose database is being switched carries the id of its cutover hold (see :mod:`tenantry_common.holds`).
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
    #: The id of the cutover hold in force (gateways hold the tenant's new requests); absent or null: no hold.
    hold: str | None = None


class DirectoryPage(msgspec.Struct, frozen=True):
    """Changes since a revision: changed tenants, removed tenant ids, and the new high-water revision."""

    revision: int
    tenants: list[DirectoryTenant]
    removed: list[str]
    full: bool
    #: The registry's installation id: the gateways following it heartbeat under it (tenantry_common.holds).
    #: Absent in pages from a tenant-service older than the cutover hold.
    installation: str | None = None
