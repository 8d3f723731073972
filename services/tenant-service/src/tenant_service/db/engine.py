"""The registry's async engine and session factory."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from tenant_service.config import DatabaseSettings, sqlalchemy_url


def make_engine(settings: DatabaseSettings) -> AsyncEngine:
    """An engine with bounded pool, connect timeout and statement timeout."""
    return create_async_engine(
        sqlalchemy_url(settings.url),
        pool_size=settings.pool_size,
        max_overflow=settings.pool_size,
        pool_timeout=settings.connect_timeout * 2,
        pool_pre_ping=True,
        connect_args={
            "timeout": settings.connect_timeout,
            "command_timeout": settings.statement_timeout_ms / 1000 + 5,
            "server_settings": {
                "statement_timeout": str(settings.statement_timeout_ms),
                "application_name": "tenantry-tenant-service",
            },
        },
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)
