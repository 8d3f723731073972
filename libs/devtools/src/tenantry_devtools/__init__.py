"""The platform on one machine, for ``make dev``, ``make bench`` and the tests: one launcher for all three.

* :mod:`tenantry_devtools.servers`: throw-away local PostgreSQL and Redis servers (exported here).
* :mod:`tenantry_devtools.processes`: a server as a child process, started, waited for and stopped; the readiness
  waits.
* :mod:`tenantry_devtools.platform`: an installation's settings (:class:`~tenantry_devtools.platform.Installation`)
  and the platform's processes: tenant-service, gateway, the notes example app.
* :mod:`tenantry_devtools.dev`: ``make dev`` itself.
"""

from tenantry_devtools.servers import (
    LocalPostgres,
    LocalRedis,
    docker_available,
    ensure_binaries,
    find_chromium,
    find_pg_bindir,
    find_redis_server,
    free_port,
)

__all__ = [
    "LocalPostgres",
    "LocalRedis",
    "docker_available",
    "ensure_binaries",
    "find_chromium",
    "find_pg_bindir",
    "find_redis_server",
    "free_port",
]
