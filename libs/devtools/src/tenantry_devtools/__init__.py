"""Developer tooling for Tenantry: throw-away local PostgreSQL and Redis servers.

Used by ``make dev`` and by the test suite's fixtures (``tests/conftest.py``).
"""

from tenantry_devtools.servers import (
    LocalPostgres,
    LocalRedis,
    docker_available,
    ensure_binaries,
    find_pg_bindir,
    find_redis_server,
    free_port,
)

__all__ = [
    "LocalPostgres",
    "LocalRedis",
    "docker_available",
    "ensure_binaries",
    "find_pg_bindir",
    "find_redis_server",
    "free_port",
]
