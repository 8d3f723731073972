"""Everything a tenant app needs at run time, built from settings: verifier, credentials, databases, Redis."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import msgspec
import redis.asyncio as redis
import structlog

from tenantry_app.credentials import CredentialClient
from tenantry_app.databases import TenantDatabases
from tenantry_app.identity import TokenVerifier
from tenantry_common.closing import close_quietly
from tenantry_common.events import EVENTS_CHANNEL, decode_event
from tenantry_common.settings import env_float, env_int, env_opt, env_str

_log = structlog.get_logger("tenantry.app")


@dataclass(frozen=True)
class AppSettings:
    """Settings of a tenant app, from the environment."""

    jwks_url: str
    """The gateway's JWKS (GATEWAY_JWKS_URL)."""
    tenant_service_url: str
    """The tenant-service (TENANT_SERVICE_URL)."""
    service_token: str
    """This app's service token for the internal API (SERVICE_TOKEN)."""
    redis_url: str | None
    """Redis, for tenant-namespaced data and platform events (REDIS_URL)."""
    connection_budget: int
    """Most Postgres connections the app opens, all tenants together (APP_CONNECTION_BUDGET)."""
    connections_per_tenant: int
    """Pool size of each tenant's engine (APP_CONNECTIONS_PER_TENANT)."""
    engine_idle_seconds: float
    """An engine unused this long is disposed (APP_ENGINE_IDLE_SECONDS)."""
    application_name: str
    """``application_name`` of the app's Postgres connections (APP_NAME)."""

    @classmethod
    def from_env(cls) -> AppSettings:
        """Read the settings."""
        return cls(
            jwks_url=env_str("GATEWAY_JWKS_URL", "http://127.0.0.1:8080/_gateway/jwks.json"),
            tenant_service_url=env_str("TENANT_SERVICE_URL", "http://127.0.0.1:8001"),
            service_token=env_str("SERVICE_TOKEN", required=True),
            redis_url=env_opt("REDIS_URL"),
            connection_budget=env_int("APP_CONNECTION_BUDGET", 20, minimum=1, maximum=10_000),
            connections_per_tenant=env_int("APP_CONNECTIONS_PER_TENANT", 1, minimum=1, maximum=100),
            engine_idle_seconds=env_float("APP_ENGINE_IDLE_SECONDS", 60.0, minimum=1.0),
            application_name=env_str("APP_NAME", "tenantry-app"),
        )


class TenantRuntime:
    """Owns the app's clients and background work."""

    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings
        self.verifier = TokenVerifier(settings.jwks_url)
        self.credentials = CredentialClient(settings.tenant_service_url, settings.service_token)
        self.databases = TenantDatabases(
            self.credentials,
            budget=settings.connection_budget,
            per_tenant=settings.connections_per_tenant,
            idle_seconds=settings.engine_idle_seconds,
            application_name=settings.application_name,
        )
        self.redis = (
            redis.Redis.from_url(settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
            if settings.redis_url
            else None
        )
        self._listener: asyncio.Task[None] | None = None

    async def _listen(self) -> None:
        """Drop a tenant's engine (and its vended credentials) as soon as the tenant-service says its database was
        purged or replaced (a restore, a move): the next request vends anew and connects to the new database."""
        assert self.redis is not None
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(EVENTS_CHANNEL)
                async for message in pubsub.listen():
                    replaced = decode_event(message["data"]).replaced_database()
                    if replaced:
                        await self.databases.forget(replaced)
            except (redis.RedisError, OSError, msgspec.DecodeError) as exc:
                _log.debug("events_unavailable", error=type(exc).__name__)
                await asyncio.sleep(1.0)
            finally:
                await close_quietly(pubsub.aclose)

    async def start(self) -> None:
        """Fetch the gateway's keys and start background work."""
        await self.verifier.refresh()
        self.databases.start()
        if self.redis is not None:
            self._listener = asyncio.create_task(self._listen())

    async def close(self) -> None:
        """Stop everything."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self.databases.close()
        await self.verifier.close()
        await self.credentials.close()
        if self.redis is not None:
            await close_quietly(self.redis.aclose)
