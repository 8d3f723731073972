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
    #: The claim holding the token's role (a dotted path such as ``realm_access.roles``; a string or a list of
    #: strings); None: the issuer's tokens carry no role. Absent from older tenant-services.
    role_claim: str | None = None
    #: The claim's values mapped to ``admin``/``user``/``viewer``; empty: the values are the roles themselves.
    role_map: dict[str, str] = msgspec.field(default_factory=dict)


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
    #: Sessions (refresh-token families) of the tenant's users revoked in the last day: an access token whose
    #: ``sid`` is one of them is refused (contract §12). Absent from older tenant-services: none.
    revoked_sessions: list[str] = msgspec.field(default_factory=list)


class DirectoryPage(msgspec.Struct, frozen=True):
    """Changes since a revision: changed tenants, removed tenant ids, and the new high-water revision."""

    revision: int
    tenants: list[DirectoryTenant]
    removed: list[str]
    full: bool
    #: The registry's installation id: the gateways following it heartbeat under it (tenantry_common.holds).
    #: Absent in pages from a tenant-service older than the cutover hold.
    installation: str | None = None
