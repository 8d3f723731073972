"""Tenantry for tenant apps: who the request is for, that tenant's own database, its Redis namespace.

Framework-free core: :class:`TokenVerifier`, :class:`CredentialClient`, :class:`TenantDatabases`,
:class:`TenantRedis`; Litestar users add :class:`TenantryPlugin`.
"""

from tenantry_app.credentials import CredentialClient, DatabaseCredentials, TenantUnavailableError
from tenantry_app.databases import (
    Attempt,
    BudgetExhaustedError,
    CredentialsRefusedError,
    DatabaseUnavailableError,
    TenantDatabases,
    connection_lost,
    database_unavailable,
    track_commits,
    worth_running_again,
)
from tenantry_app.identity import InvalidTenantTokenError, TenantIdentity, TokenVerifier, require_role
from tenantry_app.litestar import TenantryPlugin
from tenantry_app.runtime import AppSettings, TenantRuntime
from tenantry_app.tenant_redis import TenantRedis

__all__ = [
    "AppSettings",
    "Attempt",
    "BudgetExhaustedError",
    "CredentialClient",
    "CredentialsRefusedError",
    "DatabaseCredentials",
    "DatabaseUnavailableError",
    "InvalidTenantTokenError",
    "TenantDatabases",
    "TenantIdentity",
    "TenantRedis",
    "TenantRuntime",
    "TenantUnavailableError",
    "TenantryPlugin",
    "TokenVerifier",
    "connection_lost",
    "database_unavailable",
    "require_role",
    "track_commits",
    "worth_running_again",
]
