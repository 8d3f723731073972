"""Gateway settings, read once from the environment."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

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
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(name: str, entries: tuple[str, ...]) -> tuple[Network, ...]:
    """CIDRs (or single addresses) from a list variable."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError(f"{name}: {entry!r} is not an address or CIDR") from None
    return tuple(networks)


def read_keys_file(path: str) -> str:
    """The key list held in ``path`` (whitespace and newlines between entries are fine)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return ",".join(part.strip() for part in handle.read().replace("\n", ",").split(",") if part.strip())
    except OSError as exc:
        raise ConfigError(f"JWT_SIGNING_KEYS_FILE: cannot read {path}: {exc.strerror}") from None


@dataclass(frozen=True)
class GatewaySettings:
    """Everything the gateway reads from its environment."""

    host: str
    """Listen address (GATEWAY_HOST)."""
    port: int
    """Listen port (GATEWAY_PORT)."""
    workers: int
    """Worker processes (GATEWAY_WORKERS)."""
    mode: str
    """``full`` (the default) or ``passthrough``: resolve and forward only, for benchmarks (GATEWAY_MODE)."""
    keepalive_timeout: float
    """Seconds an idle keep-alive client connection stays open."""
    header_timeout: float
    """Seconds a client has to send a complete request head."""
    base_domain: str
    """Tenants are reachable as {slug}.{BASE_DOMAIN}."""
    tenant_service_url: str
    """Where the tenant directory is read (TENANT_SERVICE_URL)."""
    directory_token: str
    """Service token for the tenant-service's internal API (GATEWAY_SERVICE_TOKEN)."""
    auth_timeout: float
    """Seconds a call of the tenant-service for a login, a refresh, ``/_gateway/me`` and the other endpoints of
    tenant users may take; then 503 ``auth_unavailable`` (AUTH_TIMEOUT_SECONDS)."""
    directory_refresh_seconds: float
    """Period of the incremental directory sync."""
    directory_full_sync_seconds: float
    """Period of the full directory resync."""
    directory_max_staleness: float
    """Seconds without a successful directory sync after which /_gateway/readyz fails; 0 never fails it."""
    redis_url: str
    """Redis for quotas and change events."""
    redis_timeout: float
    """Seconds a Redis call may take before the quota failure mode applies (GATEWAY_REDIS_TIMEOUT)."""
    quota_failure_mode: str
    """``open`` (pass without quota headers) or ``closed`` (503) when Redis is unavailable."""
    usage_flush_seconds: float
    """Seconds between two flushes of a worker's usage counters to the tenant-service, at most 60
    (USAGE_FLUSH_SECONDS)."""
    cutover_hold_seconds: float
    """Longest a request of a tenant under a cutover hold waits, from when this worker first saw the hold; then 503
    ``tenant_unavailable`` (CUTOVER_HOLD_SECONDS, the tenant-service's variable too)."""
    api_key_hash_secret: bytes
    """Keyed-hash secret of API keys (the tenant-service's)."""
    jwt_signing_keys: str
    """``kid:base64url-pem,...``; the first signs (JWT_SIGNING_KEYS, or the content of JWT_SIGNING_KEYS_FILE)."""
    jwt_signing_keys_file: str | None
    """A file holding the key list, re-read when it changes: key rotation without a restart."""
    jwt_algorithm: str
    """EdDSA or RS256."""
    jwt_issuer: str
    """``iss`` of the tokens the gateway issues and accepts."""
    jwt_audience: str
    """``aud`` of access tokens."""
    upstream_audience: str
    """``aud`` of the X-Tenant-Token sent to upstreams."""
    access_token_ttl: int
    """Lifetime of access tokens from /_gateway/token."""
    tenant_token_ttl: int
    """Lifetime of X-Tenant-Token (at most 60 s)."""
    jwt_leeway: float
    """Clock skew tolerated on exp/nbf/iat."""
    jwks_timeout: float
    """Seconds a fetch of a tenant's external issuer's JWKS may take (JWKS_TIMEOUT)."""
    jwks_min_refetch: float
    """At most one JWKS refetch per URL in this many seconds, for unknown ``kid``s (JWKS_MIN_REFETCH_SECONDS)."""
    jwks_max_age: float
    """Seconds a fetched JWKS is used before it is fetched again (JWKS_CACHE_SECONDS)."""
    default_upstream: str
    """Upstream for tenants without their own upstream_url."""
    trusted_proxies: tuple[Network, ...]
    """Peers whose Host/X-Forwarded-* headers are believed."""
    max_body_bytes: int
    """Largest request body forwarded (GATEWAY_MAX_REQUEST_BODY_BYTES)."""
    max_header_bytes: int
    """Largest total size of the request headers (431 above it)."""
    connect_timeout: float
    """Seconds to connect to an upstream."""
    read_timeout: float
    """Seconds an upstream may stay silent."""
    total_timeout: float
    """Seconds until the upstream's response head must have arrived."""
    upstream_head_timeout: float
    """Seconds an upstream has to finish a response head once it has begun sending it."""
    upstream_max_header_bytes: int
    """Largest upstream response head (and trailer section) in bytes; larger is 502 upstream_invalid."""
    upstream_max_headers: int
    """Most header fields in an upstream response head (and trailer section)."""
    access_log: bool
    """One structured log line per request."""
    log_format: str
    """json, console or auto."""
    log_level: str
    """Minimum log level."""

    @classmethod
    def from_env(cls) -> GatewaySettings:
        """Read and validate every setting."""
        load_dotenv()
        mode = env_str("QUOTA_FAILURE_MODE", "open")
        if mode not in ("open", "closed"):
            raise ConfigError("QUOTA_FAILURE_MODE must be open or closed")
        upstream = env_str("DEFAULT_UPSTREAM", "http://127.0.0.1:8002")
        if urlsplit(upstream).scheme not in ("http", "https"):
            raise ConfigError("DEFAULT_UPSTREAM must be an http(s) URL")
        keys_file = env_opt("JWT_SIGNING_KEYS_FILE")
        keys_file_content = read_keys_file(keys_file) if keys_file else None
        gateway_mode = env_str("GATEWAY_MODE", "full")
        if gateway_mode not in ("full", "passthrough"):
            raise ConfigError("GATEWAY_MODE must be full or passthrough")
        tenant_token_ttl = env_int("TENANT_TOKEN_TTL_SECONDS", 60, minimum=5, maximum=60)
        refresh = env_float("DIRECTORY_REFRESH_SECONDS", 1.0, minimum=0.05)
        max_staleness = env_float("DIRECTORY_MAX_STALENESS_SECONDS", 10.0)
        if 0 < max_staleness <= refresh:
            # Readiness would fail between two ordinary polls.
            raise ConfigError("DIRECTORY_MAX_STALENESS_SECONDS must be 0 (off) or more than DIRECTORY_REFRESH_SECONDS")
        return cls(
            host=env_str("GATEWAY_HOST", "127.0.0.1"),
            port=env_int("GATEWAY_PORT", 8080, minimum=0, maximum=65535),
            workers=env_int("GATEWAY_WORKERS", 1, minimum=1, maximum=64),
            mode=gateway_mode,
            keepalive_timeout=env_float("CLIENT_KEEPALIVE_TIMEOUT", 75.0, minimum=1.0),
            header_timeout=env_float("CLIENT_HEADER_TIMEOUT", 10.0, minimum=0.5),
            base_domain=env_str("BASE_DOMAIN", "localhost").lower().rstrip("."),
            tenant_service_url=env_str("TENANT_SERVICE_URL", "http://127.0.0.1:8001").rstrip("/"),
            directory_token=env_opt("GATEWAY_SERVICE_TOKEN") or env_str("SERVICE_TOKEN", required=True),
            auth_timeout=env_float("AUTH_TIMEOUT_SECONDS", 10.0, minimum=0.1),
            directory_refresh_seconds=refresh,
            directory_full_sync_seconds=env_float("DIRECTORY_FULL_SYNC_SECONDS", 60.0, minimum=1.0),
            directory_max_staleness=max_staleness,
            redis_url=env_str("REDIS_URL", required=True),
            redis_timeout=env_float(env_name("GATEWAY_REDIS_TIMEOUT", deprecated="REDIS_TIMEOUT"), 0.25, minimum=0.001),
            quota_failure_mode=mode,
            usage_flush_seconds=env_float("USAGE_FLUSH_SECONDS", 30.0, minimum=0.1, maximum=60.0),
            cutover_hold_seconds=checked_hold_seconds(
                env_float("CUTOVER_HOLD_SECONDS", DEFAULT_HOLD_SECONDS, minimum=MIN_HOLD_SECONDS)
            ),
            api_key_hash_secret=env_str("API_KEY_HASH_SECRET", required=True).encode(),
            jwt_signing_keys=keys_file_content or env_str("JWT_SIGNING_KEYS", required=True),
            jwt_signing_keys_file=keys_file,
            jwt_algorithm=env_str("JWT_ALGORITHM", "EdDSA"),
            jwt_issuer=env_str("JWT_ISSUER", "tenantry-gateway"),
            jwt_audience=env_str("JWT_AUDIENCE", "tenantry"),
            upstream_audience=env_str("UPSTREAM_TOKEN_AUDIENCE", "tenantry-upstream"),
            access_token_ttl=env_int("ACCESS_TOKEN_TTL_SECONDS", 900, minimum=30, maximum=86400),
            tenant_token_ttl=tenant_token_ttl,
            jwt_leeway=env_float("JWT_LEEWAY_SECONDS", 30.0),
            jwks_timeout=env_float("JWKS_TIMEOUT", 3.0, minimum=0.05),
            jwks_min_refetch=env_float("JWKS_MIN_REFETCH_SECONDS", 30.0, minimum=1.0),
            jwks_max_age=env_float("JWKS_CACHE_SECONDS", 600.0, minimum=1.0),
            default_upstream=upstream,
            trusted_proxies=parse_networks("TRUSTED_PROXIES", env_list("TRUSTED_PROXIES")),
            max_body_bytes=env_int(
                env_name("GATEWAY_MAX_REQUEST_BODY_BYTES", deprecated="MAX_REQUEST_BODY_BYTES"),
                10 * 1024 * 1024,
                minimum=0,
            ),
            max_header_bytes=env_int("MAX_HEADER_BYTES", 8192, minimum=1024),
            connect_timeout=env_float("UPSTREAM_CONNECT_TIMEOUT", 2.0, minimum=0.01),
            read_timeout=env_float("UPSTREAM_READ_TIMEOUT", 30.0, minimum=0.01),
            total_timeout=env_float("UPSTREAM_TIMEOUT", 30.0, minimum=0.01),
            upstream_head_timeout=env_float("UPSTREAM_HEAD_TIMEOUT", 10.0, minimum=0.01),
            upstream_max_header_bytes=env_int("UPSTREAM_MAX_HEADER_BYTES", 32 * 1024, minimum=1024),
            upstream_max_headers=env_int("UPSTREAM_MAX_HEADERS", 100, minimum=16),
            access_log=env_bool("ACCESS_LOG", True),
            log_format=env_str("LOG_FORMAT", "auto"),
            log_level=env_str("LOG_LEVEL", "INFO"),
        )
