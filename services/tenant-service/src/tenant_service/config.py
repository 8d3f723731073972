"""Settings of the tenant-service, one small dataclass per concern, all read from the environment."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tenant_service.backups.store import StoreSettings
from tenant_service.internal.scopes import DIRECTORY_READ, SERVICE_SCOPES, USAGE_WRITE, USERS_AUTHENTICATE
from tenantry_common.holds import DEFAULT_HOLD_SECONDS, MIN_HOLD_SECONDS, checked_hold_seconds
from tenantry_common.settings import (
    ConfigError,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_name,
    env_opt,
    env_str,
    load_dotenv,
    named_tokens,
)

#: What GATEWAY_SERVICE_TOKEN holds when SERVICE_TOKEN_SCOPES does not name ``gateway``.
GATEWAY_SCOPES = frozenset({DIRECTORY_READ, USERS_AUTHENTICATE, USAGE_WRITE})


def asyncpg_dsn(url: str) -> str:
    """A plain ``postgresql://`` DSN for asyncpg, whatever driver suffix the URL carries."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith(("postgres", "postgresql")):
        raise ConfigError("database URLs must start with postgresql://")
    return "postgresql://" + rest


def sqlalchemy_url(url: str) -> str:
    """The same URL with the ``postgresql+asyncpg`` driver, for SQLAlchemy."""
    return "postgresql+asyncpg://" + asyncpg_dsn(url).partition("://")[2]


@dataclass(frozen=True)
class DatabaseSettings:
    """Where the registry lives and where tenant databases are created."""

    url: str
    """Registry (master) database URL."""
    tenant_cluster_url: str
    """Admin URL of the cluster that hosts the template and the tenant databases (needs CREATEDB, CREATEROLE)."""
    tenant_host: str
    """Host name handed to tenant apps for their database (may differ from the admin URL's host)."""
    tenant_port: int
    """Port handed to tenant apps."""
    template_name: str = "tenantry_template"
    """The template database every tenant database is cloned from."""
    tenant_db_prefix: str = "tenant_"
    """Prefix of tenant database and role names."""
    pool_size: int = 10
    """Registry connection pool size."""
    connect_timeout: float = 5.0
    """Seconds to wait for a new Postgres connection."""
    statement_timeout_ms: int = 30_000
    """Statement timeout on registry connections."""
    create_database_attempts: int = 5
    """Tries of CREATE DATABASE while the template is briefly in use."""
    migrations_dir: str | None = None
    """Directory of the tenant schema's SQL migrations (default: the ones shipped with the service)."""
    pg_bin_dir: str | None = None
    """Directory of ``pg_dump``/``pg_restore`` (default: found on PATH); their version must be at least the
    servers'."""


@dataclass(frozen=True)
class ServiceToken:
    """One internal-API bearer token and the scopes it holds."""

    token: str
    """The bearer token."""
    scopes: frozenset[str]
    """What it may do (see :mod:`tenant_service.internal.scopes`)."""
    legacy: bool = False
    """Configured without scopes, as before scopes existed: it holds every scope for this release (with a warning)."""


@dataclass(frozen=True)
class SecuritySettings:
    """Tokens and keys."""

    admin_tokens: dict[str, str]
    """Admin bearer tokens by actor name."""
    service_tokens: dict[str, ServiceToken]
    """Internal-API bearer tokens and their scopes, by app name."""
    unused_scope_names: tuple[str, ...]
    """Names SERVICE_TOKEN_SCOPES gives scopes to but no service token has (a typo, or an app not deployed here)."""
    encryption_keys: str
    """``kid:base64key,...``; the first is used to encrypt, all are tried to decrypt."""
    api_key_hash_secret: bytes
    """Server secret of the API keys' keyed hash (shared with the gateways)."""


@dataclass(frozen=True)
class LifecycleSettings:
    """Tenant lifecycle policy."""

    delete_retention_seconds: int = 30 * 86400
    """How long a soft-deleted tenant's database is kept before it is purged."""
    reconcile_interval_seconds: float = 30.0
    """Period of the background reconciler."""
    default_plan: str = "free"
    """Plan of a tenant created without one."""
    default_key_grace_seconds: int = 86400
    """How long a rotated API key keeps working."""
    upstream_allowlist: tuple[str, ...] = ()
    """Hosts and CIDRs an ``upstream_url`` may point at."""
    cutover_hold_seconds: float = DEFAULT_HOLD_SECONDS
    """Longest a tenant's requests are held at the gateways while its database is switched (CUTOVER_HOLD_SECONDS,
    the gateways' variable too); also the longest the tenant-service waits for the gateways to drain."""


@dataclass(frozen=True)
class OperationSettings:
    """Long-running work: the operation runner, backups, exports and their schedule."""

    store: StoreSettings
    """Where backups and exports are stored (``BACKUP_STORE_URL`` and the S3 settings)."""
    workers: int = 2
    """Operations one replica runs at once (OPERATION_WORKERS)."""
    poll_seconds: float = 2.0
    """How often a runner looks for work it was not told about (OPERATION_POLL_SECONDS)."""
    schedule_interval_seconds: float = 60.0
    """How often due scheduled backups and expired ones are looked for (BACKUP_SCHEDULE_INTERVAL_SECONDS)."""


@dataclass(frozen=True)
class WebhookSettings:
    """Webhook deliveries (contract §13): the dispatcher's concurrency, timeouts and retry schedule."""

    concurrency: int = 16
    """Deliveries one replica sends at once (WEBHOOK_CONCURRENCY)."""
    endpoint_concurrency: int = 8
    """Deliveries of one webhook in flight at once, across replicas, so a slow endpoint cannot take every slot
    (WEBHOOK_ENDPOINT_CONCURRENCY)."""
    timeout_seconds: float = 10.0
    """Longest one delivery request may take, connecting included (WEBHOOK_TIMEOUT_SECONDS)."""
    poll_seconds: float = 1.0
    """How often the dispatcher looks for due deliveries it was not woken for (WEBHOOK_POLL_SECONDS)."""
    backoff_base_seconds: float = 5.0
    """Delay before the first retry; it doubles with each attempt, with half jitter (WEBHOOK_BACKOFF_BASE_SECONDS)."""
    backoff_max_seconds: float = 3600.0
    """Longest delay between two attempts (WEBHOOK_BACKOFF_MAX_SECONDS)."""
    retry_hours: float = 24.0
    """How long a delivery is retried before it is marked failed (WEBHOOK_RETRY_HOURS)."""
    retention_days: float = 30.0
    """How long delivered events (and their delivery log) are kept after their fan-out (WEBHOOK_RETENTION_DAYS)."""
    disable_after_hours: float = 120.0
    """A webhook whose every attempt has failed for this long is disabled (0: never) (WEBHOOK_DISABLE_AFTER_HOURS)."""


@dataclass(frozen=True)
class ServerSettings:
    """Several PostgreSQL servers: extra ones from configuration, placement and moves."""

    extra: tuple[tuple[str, str], ...] = ()
    """Servers registered at start when missing (EXTRA_DATABASE_SERVERS="name=postgresql://...;..."), besides
    ``default`` (the server of TENANT_DATABASE_URL)."""
    default_capacity: int = 2000
    """Tenant databases a server takes when registered without a capacity, ``default`` included
    (DEFAULT_SERVER_CAPACITY; docs/operations.md says where that number comes from)."""
    move_keep_seconds: int = 86400
    """How long a moved tenant's old database is kept, closed to connections, before it is dropped
    (MOVE_KEEP_SECONDS)."""
    drain_concurrency: int = 2
    """Moves a drain runs at once (DRAIN_CONCURRENCY)."""
    catch_up_seconds: float = 600.0
    """Longest a logical move waits for the target to catch up with the source before its cutover
    (MOVE_CATCH_UP_SECONDS)."""


def _extra_servers(spec: str | None) -> tuple[tuple[str, str], ...]:
    servers: list[tuple[str, str]] = []
    for entry in (spec or "").split(";"):
        if not entry.strip():
            continue
        name, sep, url = entry.strip().partition("=")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9-]{0,31}", name) or name == "default":
            raise ConfigError(
                "EXTRA_DATABASE_SERVERS entries must look like name=postgresql://user:password@host:port/db, with a "
                "name of lowercase letters, digits and '-' other than 'default'"
            )
        asyncpg_dsn(url)
        if any(known == name for known, _ in servers):
            raise ConfigError(f"EXTRA_DATABASE_SERVERS names {name!r} twice")
        servers.append((name, url))
    return tuple(servers)


@dataclass(frozen=True)
class UserSettings:
    """Tenant users (contract §12): sign-in, sessions, brute-force limits, sign-up and password hashing."""

    signup_enabled: bool = False
    """Self-service sign-up through ``POST /_gateway/signup`` (SIGNUP_ENABLED; off: 404)."""
    signup_per_hour: int = 5
    """Sign-ups one client address may make in an hour (SIGNUP_PER_HOUR)."""
    login_max_failures: int = 5
    """Failed sign-ins of one account within ``login_window_seconds`` before it answers 429 (LOGIN_MAX_FAILURES)."""
    login_max_address_failures: int = 50
    """Failed sign-ins from one client address to one tenant within the window before it answers 429
    (LOGIN_MAX_ADDRESS_FAILURES)."""
    login_window_seconds: int = 900
    """The brute-force counters' window (LOGIN_FAILURE_WINDOW_SECONDS)."""
    refresh_token_ttl_seconds: int = 30 * 86400
    """Lifetime of a refresh token; each use gives a new one (REFRESH_TOKEN_TTL_SECONDS)."""
    session_max_seconds: int = 90 * 86400
    """Longest a session (a refresh-token family) lasts from its sign-in, however often refreshed
    (SESSION_MAX_SECONDS)."""
    invitation_ttl_seconds: int = 7 * 86400
    """Lifetime of an invitation token (INVITATION_TTL_SECONDS)."""
    hash_time_cost: int = 3
    """argon2id passes (PASSWORD_HASH_TIME_COST)."""
    hash_memory_kib: int = 65536
    """argon2id memory in KiB (PASSWORD_HASH_MEMORY_KIB)."""
    hash_parallelism: int = 4
    """argon2id lanes (PASSWORD_HASH_PARALLELISM)."""
    hash_concurrency: int = 4
    """Password hashes computed at once by one replica; more wait (PASSWORD_HASH_CONCURRENCY): bounds the memory
    a burst of sign-ins takes (``hash_memory_kib`` each)."""


@dataclass(frozen=True)
class UsageSettings:
    """Usage history (contract §13): database size samples and retention (docs/usage.md)."""

    size_sample_seconds: float = 3600.0
    """How often each tenant's database size is sampled into its daily usage (USAGE_SIZE_SAMPLE_SECONDS)."""
    hourly_retention_days: int = 90
    """Hourly usage rows older than this are deleted (USAGE_HOURLY_RETENTION_DAYS)."""
    daily_retention_days: int = 800
    """Daily usage rows (and quota alerts) older than this are deleted (USAGE_DAILY_RETENTION_DAYS)."""


@dataclass(frozen=True)
class ConsoleSettings:
    """The admin console's pages under ``/console`` (docs/console.md)."""

    enabled: bool = True
    """Serve the console (CONSOLE_ENABLED; off: its paths answer 404)."""
    session_idle_seconds: int = 1800
    """A session ends after this long without a request (CONSOLE_SESSION_IDLE_SECONDS)."""
    session_max_seconds: int = 43200
    """A session ends this long after its sign-in, however active (CONSOLE_SESSION_MAX_SECONDS)."""
    secure_cookies: bool = False
    """Mark the session cookie ``Secure`` on plain-HTTP requests too: behind a TLS-terminating proxy
    (CONSOLE_SECURE_COOKIES). Requests that arrive over https always get it."""


@dataclass(frozen=True)
class HttpSettings:
    """The HTTP server."""

    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 8001
    """Port to listen on."""
    max_body_bytes: int = 64 * 1024
    """Largest accepted request body (TENANT_SERVICE_MAX_REQUEST_BODY_BYTES)."""
    base_domain: str = "localhost"
    """Base domain of tenant subdomains (for display and checks)."""


@dataclass(frozen=True)
class Settings:
    """All settings of the tenant-service."""

    database: DatabaseSettings
    security: SecuritySettings
    operations: OperationSettings
    lifecycle: LifecycleSettings = field(default_factory=LifecycleSettings)
    servers: ServerSettings = field(default_factory=ServerSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    users: UserSettings = field(default_factory=UserSettings)
    usage: UsageSettings = field(default_factory=UsageSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    redis_url: str | None = None
    """Redis, for change events and quota counters; optional for the registry itself."""
    redis_timeout: float = 0.5
    """Seconds for any Redis call (TENANT_SERVICE_REDIS_TIMEOUT)."""
    log_format: str = "auto"
    """json, console or auto."""
    log_level: str = "INFO"
    """Minimum log level."""

    @classmethod
    def from_env(cls) -> Settings:
        """Read every setting from the environment (and a ``.env`` file that never overrides it)."""
        load_dotenv()
        url = env_str("DATABASE_URL", required=True)
        cluster = env_opt("TENANT_DATABASE_URL") or url
        parts = urlsplit(asyncpg_dsn(cluster))
        admin_tokens = named_tokens("ADMIN_TOKENS", "ADMIN_TOKEN", "admin")
        service_tokens, unused_scope_names = service_tokens_from_env()
        if not admin_tokens:
            raise ConfigError("ADMIN_TOKEN (or ADMIN_TOKENS=name:token,...) is required")
        for name, token in admin_tokens.items():
            if len(token) < 16:
                raise ConfigError(f"admin token {name!r} is shorter than 16 characters")
        prefix = env_str("TENANT_DB_PREFIX", "tenant_")
        # Names are prefix + slug (up to 32) + "_" + 12 hex digits, and Postgres identifiers end at 63 bytes.
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,17}", prefix):
            raise ConfigError("TENANT_DB_PREFIX must be 1 to 18 lowercase ASCII letters, digits and '_'")
        allowlist = env_list("UPSTREAM_ALLOWLIST")
        for entry in allowlist:
            _validate_allow_entry(entry)
        return cls(
            database=DatabaseSettings(
                url=url,
                tenant_cluster_url=cluster,
                tenant_host=env_opt("TENANT_DB_HOST") or parts.hostname or "127.0.0.1",
                tenant_port=env_int("TENANT_DB_PORT", parts.port or 5432, minimum=1, maximum=65535),
                template_name=env_str("TEMPLATE_DATABASE", "tenantry_template"),
                tenant_db_prefix=prefix,
                pool_size=env_int("DB_POOL_SIZE", 10, minimum=1, maximum=200),
                connect_timeout=env_float("DB_CONNECT_TIMEOUT", 5.0),
                statement_timeout_ms=env_int("DB_STATEMENT_TIMEOUT_MS", 30_000, minimum=100),
                create_database_attempts=env_int("CREATE_DATABASE_ATTEMPTS", 5, minimum=1, maximum=50),
                migrations_dir=env_opt("TENANT_MIGRATIONS_DIR"),
                pg_bin_dir=env_opt("PG_BIN_DIR"),
            ),
            security=SecuritySettings(
                admin_tokens=admin_tokens,
                service_tokens=service_tokens,
                unused_scope_names=unused_scope_names,
                encryption_keys=env_str("ENCRYPTION_KEYS", required=True),
                api_key_hash_secret=env_str("API_KEY_HASH_SECRET", required=True).encode(),
            ),
            operations=OperationSettings(
                store=StoreSettings.from_env(),
                workers=env_int("OPERATION_WORKERS", 2, minimum=1, maximum=64),
                poll_seconds=env_float("OPERATION_POLL_SECONDS", 2.0, minimum=0.05),
                schedule_interval_seconds=env_float("BACKUP_SCHEDULE_INTERVAL_SECONDS", 60.0, minimum=0.1),
            ),
            lifecycle=LifecycleSettings(
                delete_retention_seconds=env_int("DELETE_RETENTION_SECONDS", 30 * 86400, minimum=0),
                reconcile_interval_seconds=env_float("RECONCILE_INTERVAL_SECONDS", 30.0, minimum=0.1),
                default_plan=env_str("DEFAULT_PLAN", "free"),
                default_key_grace_seconds=env_int("API_KEY_GRACE_SECONDS", 86400, minimum=0),
                upstream_allowlist=allowlist,
                cutover_hold_seconds=checked_hold_seconds(
                    env_float("CUTOVER_HOLD_SECONDS", DEFAULT_HOLD_SECONDS, minimum=MIN_HOLD_SECONDS)
                ),
            ),
            servers=ServerSettings(
                extra=_extra_servers(env_opt("EXTRA_DATABASE_SERVERS")),
                default_capacity=env_int("DEFAULT_SERVER_CAPACITY", 2000, minimum=0),
                move_keep_seconds=env_int("MOVE_KEEP_SECONDS", 86400, minimum=0),
                drain_concurrency=env_int("DRAIN_CONCURRENCY", 2, minimum=1, maximum=32),
                catch_up_seconds=env_float("MOVE_CATCH_UP_SECONDS", 600.0, minimum=1.0),
            ),
            http=HttpSettings(
                host=env_str("TENANT_SERVICE_HOST", "127.0.0.1"),
                port=env_int("TENANT_SERVICE_PORT", 8001, minimum=0, maximum=65535),
                max_body_bytes=env_int(
                    env_name("TENANT_SERVICE_MAX_REQUEST_BODY_BYTES", deprecated="MAX_REQUEST_BODY_BYTES"),
                    64 * 1024,
                    minimum=1024,
                ),
                base_domain=env_str("BASE_DOMAIN", "localhost"),
            ),
            users=UserSettings(
                signup_enabled=env_bool("SIGNUP_ENABLED", False),
                signup_per_hour=env_int("SIGNUP_PER_HOUR", 5, minimum=1),
                login_max_failures=env_int("LOGIN_MAX_FAILURES", 5, minimum=1),
                login_max_address_failures=env_int("LOGIN_MAX_ADDRESS_FAILURES", 50, minimum=1),
                login_window_seconds=env_int("LOGIN_FAILURE_WINDOW_SECONDS", 900, minimum=1),
                refresh_token_ttl_seconds=env_int("REFRESH_TOKEN_TTL_SECONDS", 30 * 86400, minimum=60),
                session_max_seconds=env_int("SESSION_MAX_SECONDS", 90 * 86400, minimum=60),
                invitation_ttl_seconds=env_int("INVITATION_TTL_SECONDS", 7 * 86400, minimum=60),
                hash_time_cost=env_int("PASSWORD_HASH_TIME_COST", 3, minimum=1, maximum=20),
                hash_memory_kib=env_int("PASSWORD_HASH_MEMORY_KIB", 65536, minimum=8192, maximum=4 * 1024 * 1024),
                hash_parallelism=env_int("PASSWORD_HASH_PARALLELISM", 4, minimum=1, maximum=64),
                hash_concurrency=env_int("PASSWORD_HASH_CONCURRENCY", 4, minimum=1, maximum=256),
            ),
            usage=UsageSettings(
                size_sample_seconds=env_float("USAGE_SIZE_SAMPLE_SECONDS", 3600.0, minimum=1.0),
                hourly_retention_days=env_int("USAGE_HOURLY_RETENTION_DAYS", 90, minimum=1, maximum=3660),
                daily_retention_days=env_int("USAGE_DAILY_RETENTION_DAYS", 800, minimum=1, maximum=36600),
            ),
            webhooks=WebhookSettings(
                concurrency=env_int("WEBHOOK_CONCURRENCY", 16, minimum=1, maximum=1024),
                endpoint_concurrency=env_int("WEBHOOK_ENDPOINT_CONCURRENCY", 8, minimum=1, maximum=1024),
                timeout_seconds=env_float("WEBHOOK_TIMEOUT_SECONDS", 10.0, minimum=0.1),
                poll_seconds=env_float("WEBHOOK_POLL_SECONDS", 1.0, minimum=0.05),
                backoff_base_seconds=env_float("WEBHOOK_BACKOFF_BASE_SECONDS", 5.0, minimum=0.01),
                backoff_max_seconds=env_float("WEBHOOK_BACKOFF_MAX_SECONDS", 3600.0, minimum=0.01),
                retry_hours=env_float("WEBHOOK_RETRY_HOURS", 24.0, minimum=0.0),
                retention_days=env_float("WEBHOOK_RETENTION_DAYS", 30.0, minimum=0.0),
                disable_after_hours=env_float("WEBHOOK_DISABLE_AFTER_HOURS", 120.0, minimum=0.0),
            ),
            console=ConsoleSettings(
                enabled=env_bool("CONSOLE_ENABLED", True),
                session_idle_seconds=env_int("CONSOLE_SESSION_IDLE_SECONDS", 1800, minimum=60),
                session_max_seconds=env_int("CONSOLE_SESSION_MAX_SECONDS", 43200, minimum=60),
                secure_cookies=env_bool("CONSOLE_SECURE_COOKIES", False),
            ),
            redis_url=env_opt("REDIS_URL"),
            redis_timeout=env_float(
                env_name("TENANT_SERVICE_REDIS_TIMEOUT", deprecated="REDIS_TIMEOUT"), 0.5, minimum=0.01
            ),
            log_format=env_str("LOG_FORMAT", "auto"),
            log_level=env_str("LOG_LEVEL", "INFO"),
        )


def service_tokens_from_env() -> tuple[dict[str, ServiceToken], tuple[str, ...]]:
    """Service tokens by name, each with its scopes; and the names in ``SERVICE_TOKEN_SCOPES`` that have no token.

    Tokens: ``SERVICE_TOKENS="name:token,..."``, ``SERVICE_TOKEN`` (named ``app``: the tenant app's) and
    ``GATEWAY_SERVICE_TOKEN`` (named ``gateway``, the very variable the gateway presents). Scopes:
    ``SERVICE_TOKEN_SCOPES="name=scope+scope,..."``. A token it does not name holds ``directory:read`` if it is
    ``GATEWAY_SERVICE_TOKEN``, else every scope: the legacy of unscoped tokens, kept for one release. Scopes for a
    name without a token grant nothing (a deployment may leave an app's token out); the service warns about them.

    Raises:
        ConfigError: a malformed entry, an unknown scope, a name given scopes twice, two names for one token, or a
            ``gateway`` entry in ``SERVICE_TOKENS`` other than ``GATEWAY_SERVICE_TOKEN``.
    """
    tokens = named_tokens("SERVICE_TOKENS", "SERVICE_TOKEN", "app")
    gateway = env_opt("GATEWAY_SERVICE_TOKEN")
    if gateway is not None and tokens.setdefault("gateway", gateway) != gateway:
        raise ConfigError("SERVICE_TOKENS has a 'gateway' entry that is not GATEWAY_SERVICE_TOKEN: keep one of them")
    names_by_token: dict[str, str] = {}
    for name, token in tokens.items():
        if token in names_by_token:
            raise ConfigError(
                f"service tokens {names_by_token[token]!r} and {name!r} are the same token: give each app its own"
            )
        names_by_token[token] = name
    configured: dict[str, frozenset[str]] = {}
    for entry in env_list("SERVICE_TOKEN_SCOPES"):
        name, sep, listed = entry.partition("=")
        name = name.strip()
        scopes = frozenset(scope.strip() for scope in listed.split("+") if scope.strip())
        if not sep or not name or not scopes:
            raise ConfigError("SERVICE_TOKEN_SCOPES entries must look like name=scope+scope")
        if unknown := sorted(scopes - SERVICE_SCOPES):
            raise ConfigError(
                f"SERVICE_TOKEN_SCOPES: unknown scope {unknown[0]!r} for {name!r}; "
                f"known scopes: {', '.join(sorted(SERVICE_SCOPES))}"
            )
        if name in configured:
            raise ConfigError(f"SERVICE_TOKEN_SCOPES names {name!r} twice")
        configured[name] = scopes
    result: dict[str, ServiceToken] = {}
    for name, token in tokens.items():
        if name in configured:
            result[name] = ServiceToken(token, configured[name])
        elif name == "gateway" and gateway is not None:
            result[name] = ServiceToken(token, GATEWAY_SCOPES)
        else:
            result[name] = ServiceToken(token, SERVICE_SCOPES, legacy=True)
    return result, tuple(name for name in configured if name not in tokens)


def _validate_allow_entry(entry: str) -> None:
    if "/" in entry:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(f"UPSTREAM_ALLOWLIST entry {entry!r} is not a valid CIDR") from None
