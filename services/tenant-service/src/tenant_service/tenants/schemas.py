"""Request and response bodies of the tenant admin API."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from tenant_service.backups.schemas import CloneSource
from tenant_service.operations.schemas import OperationView
from tenant_service.servers.schemas import Placement, ServerName
from tenant_service.usage.schemas import UsageBucket
from tenantry_common.jwt_keys import EXTERNAL_ALGORITHMS
from tenantry_common.slugs import SLUG_MAX_LENGTH, SLUG_MIN_LENGTH, SLUG_PATTERN
from tenantry_common.users_api import Role

#: Postgres text (and JSONB) cannot hold NUL characters.
NO_NUL = r"^[^\x00]*$"
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NO_NUL)]
PlanName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=NO_NUL)]
Slug = Annotated[
    str, msgspec.Meta(min_length=SLUG_MIN_LENGTH, max_length=SLUG_MAX_LENGTH, pattern=SLUG_PATTERN.pattern)
]
Domain = Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
Url = Annotated[str, msgspec.Meta(min_length=1, max_length=2048, pattern=NO_NUL)]
Count = Annotated[int, msgspec.Meta(ge=0, le=10**12)]
ConnectionLimit = Annotated[int, msgspec.Meta(ge=1, le=1000)]
BackupIntervalHours = Annotated[int, msgspec.Meta(ge=1, le=24 * 366)]
BackupRetentionDays = Annotated[int, msgspec.Meta(ge=1, le=3660)]
IssuerText = Annotated[str, msgspec.Meta(min_length=1, max_length=512, pattern=NO_NUL)]
RoleClaim = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_:/.-]+$")]
RoleValue = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NO_NUL)]
if TYPE_CHECKING:
    ExternalAlgorithm = str
else:
    #: One of ``EXTERNAL_ALGORITHMS`` (an enum in the OpenAPI document; anything else is refused when decoding).
    ExternalAlgorithm = Literal[EXTERNAL_ALGORITHMS]


class Limits(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Quota and resource limits (a plan's, or a tenant's overrides of them)."""

    requests_per_minute: Count | None = None
    requests_per_day: Count | None = None
    max_connections: ConnectionLimit | None = None
    backup_interval_hours: BackupIntervalHours | None = None
    backup_retention_days: BackupRetentionDays | None = None


class TenantCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /admin/tenants``."""

    slug: Slug
    name: Name
    plan: PlanName | None = None
    domains: Annotated[list[Domain], msgspec.Meta(max_length=50)] = msgspec.field(default_factory=list)
    settings: dict[str, Any] = msgspec.field(default_factory=dict)
    limits: Limits | None = None
    upstream_url: Url | None = None
    source: CloneSource | None = None
    """Clone: the new tenant's database is restored from this backup (any tenant's) instead of the template."""
    server: ServerName | None = None
    """Pin the tenant's database to this server."""
    placement: Placement | None = None
    """Place the tenant's database on a server carrying these labels (else the plan's ``placement_labels``)."""


class TenantUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``PATCH /admin/tenants/{ref}``: only the fields present change; ``upstream_url: null`` clears."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    plan: PlanName | msgspec.UnsetType = msgspec.UNSET
    settings: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    limits: Limits | msgspec.UnsetType = msgspec.UNSET
    upstream_url: Url | msgspec.UnsetType | None = msgspec.UNSET


class DatabaseInfo(msgspec.Struct):
    """Where a tenant's database lives (never its credentials)."""

    name: str
    host: str
    port: int
    server: str
    """The registered server that holds it (``GET /admin/servers/{name}``)."""
    template_version: int | None
    schema_version: int | None


class TenantView(msgspec.Struct):
    """A tenant as the admin API shows it."""

    id: str
    slug: str
    name: str
    status: str
    plan: str
    domains: list[str]
    database: DatabaseInfo
    limits: dict[str, int]
    settings: dict[str, Any]
    upstream_url: str | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None
    purge_after: datetime | None = None
    failure_reason: str | None = None


class NewApiKey(msgspec.Struct):
    """A freshly made API key: the only place its secret ``key`` ever appears."""

    id: str
    key: str
    prefix: str
    name: str
    scopes: list[str]
    expires_at: datetime | None


class TenantCreated(TenantView, kw_only=True):
    """A created tenant with its first API key."""

    api_key: NewApiKey


class CloneAccepted(OperationView, kw_only=True):
    """A clone's ``202``: the ``clone`` operation, the new tenant (``provisioning`` until the operation succeeds)
    and its first API key (shown once)."""

    tenant: TenantView
    api_key: NewApiKey


class TenantPage(msgspec.Struct):
    """One page of tenants."""

    items: list[TenantView]
    next_cursor: str | None


class RequestUsage(msgspec.Struct):
    """Requests counted in the current window."""

    used: int
    limit: int | None
    resets_at: datetime


class DatabaseUsage(msgspec.Struct):
    """The database's footprint."""

    name: str
    size_bytes: int | None


class TenantUsage(msgspec.Struct):
    """Body of ``GET /admin/tenants/{ref}/usage``."""

    tenant_id: str
    database: DatabaseUsage
    requests_minute: RequestUsage | None
    requests_day: RequestUsage | None
    quota_counters_available: bool


class TenantUsageHistory(msgspec.Struct):
    """Body of ``GET /admin/tenants/{ref}/usage``: the current counters (as :class:`TenantUsage`) and the history
    (contract §13; docs/usage.md)."""

    tenant_id: str
    database: DatabaseUsage
    requests_minute: RequestUsage | None
    requests_day: RequestUsage | None
    quota_counters_available: bool
    granularity: str
    """``hour`` or ``day``."""
    history: list[UsageBucket]
    """Every bucket of the window, oldest first; buckets without traffic hold zeros."""


class JwtIssuerCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /admin/tenants/{ref}/jwt-issuers``: an external issuer whose tokens the gateways accept."""

    issuer: IssuerText
    audience: IssuerText
    jwks_url: Url
    algorithms: Annotated[list[ExternalAlgorithm], msgspec.Meta(min_length=1, max_length=len(EXTERNAL_ALGORITHMS))] = (
        msgspec.field(default_factory=lambda: ["RS256"])
    )
    role_claim: RoleClaim | None = None
    """The claim holding the token's role (contract §12): a dotted path such as ``realm_access.roles``; its value a
    string or a list of strings. Tokens without it carry no role."""
    role_map: Annotated[dict[RoleValue, Role], msgspec.Meta(max_length=50)] = msgspec.field(default_factory=dict)
    """The claim's values mapped to ``admin``/``user``/``viewer``; empty: the values are the roles themselves."""


class JwtIssuerView(msgspec.Struct):
    """An external JWT issuer of a tenant."""

    id: str
    issuer: str
    audience: str
    jwks_url: str
    algorithms: list[str]
    created_at: datetime
    role_claim: str | None = None
    role_map: dict[str, str] = msgspec.field(default_factory=dict)


class JwtIssuerPage(msgspec.Struct):
    """All external JWT issuers of a tenant, oldest first.

    A tenant trusts at most ``MAX_ISSUERS_PER_TENANT`` (10) issuers, so they always fit one page: ``next_cursor``
    is there for the list shape every admin list shares, and is always null.
    """

    items: list[JwtIssuerView]
    next_cursor: None = None
