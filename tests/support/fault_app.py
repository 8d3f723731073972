"""A tenant app built with ``TenantryPlugin`` whose handlers lose their database connection on purpose, run as its
own process: ``python -P fault_app.py PORT``, with the usual tenantry-app settings and ``FAULT_SUPERUSER_URL`` (a
superuser of the tenants' Postgres).

Every handler counts its runs under the request's ``X-Fault-Key`` (``GET /runs/{key}``). In its first run, the
backend of its connection is terminated with ``pg_terminate_backend`` from a superuser connection, as a server
restart or an operator would, at the point the handler names:

* ``POST /lost-before-commit``: inserts a note (the JSON body's ``body``), loses the connection, then commits.
* ``POST /lost-after-commit``: inserts a note and commits, loses the connection, then reads.
* ``GET /stream-then-lose``: sends a first chunk, then loses the connection of the session it reads from.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import uvicorn
from litestar import Litestar, Request, get, post
from litestar.response import Stream
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tenantry_app import TenantIdentity, TenantryPlugin
from tenantry_common.litestar_problems import problem_exception_handlers
from tenantry_common.logging import configure_logging

SUPERUSER_URL = os.environ["FAULT_SUPERUSER_URL"]
RUNS: dict[str, int] = {}


def count_run(request: Request[Any, Any, Any]) -> int:
    key = request.headers["x-fault-key"]
    RUNS[key] = RUNS.get(key, 0) + 1
    return RUNS[key]


async def lose_connection(session: AsyncSession) -> None:
    """Terminate the backend of the session's connection and wait until the driver has seen it go."""
    raw = await (await session.connection()).get_raw_connection()
    driver = raw.driver_connection
    superuser = await asyncpg.connect(SUPERUSER_URL)
    try:
        assert await superuser.fetchval("SELECT pg_terminate_backend($1)", driver.get_server_pid())
    finally:
        await superuser.close()
    for _ in range(1000):
        if driver.is_closed():
            return
        await asyncio.sleep(0.01)
    raise RuntimeError("the terminated connection still looks open")


@post("/lost-before-commit", status_code=201)
async def lost_before_commit(
    request: Request[Any, Any, Any], db_session: AsyncSession, data: dict[str, str]
) -> dict[str, int]:
    runs = count_run(request)
    await db_session.execute(text("INSERT INTO notes (body) VALUES (:body)"), {"body": data["body"]})
    if runs == 1:
        await lose_connection(db_session)
    await db_session.commit()
    return {"runs": runs}


@post("/lost-after-commit", status_code=201)
async def lost_after_commit(request: Request[Any, Any, Any], db_session: AsyncSession) -> dict[str, int]:
    runs = count_run(request)
    await db_session.execute(text("INSERT INTO notes (body) VALUES (:body)"), {"body": request.headers["x-fault-key"]})
    await db_session.commit()
    if runs == 1:
        await lose_connection(db_session)
    await db_session.execute(text("SELECT count(*) FROM notes"))
    return {"runs": runs}


@get("/runs/{key:str}")
async def runs_of(key: str) -> dict[str, int]:
    return {"runs": RUNS.get(key, 0)}


def create_app() -> Litestar:
    configure_logging("fault-app", fmt="json", level="INFO")
    plugin = TenantryPlugin()

    @get("/stream-then-lose")
    async def stream_then_lose(request: Request[Any, Any, Any], tenant: TenantIdentity) -> Stream:
        count_run(request)

        async def chunks() -> AsyncIterator[bytes]:
            yield b"first\n"
            async with plugin.runtime.databases.session(tenant.tenant_id) as session:
                await session.execute(text("SELECT 1"))
                await lose_connection(session)
                await session.execute(text("SELECT 1"))
            yield b"second\n"

        return Stream(chunks())

    @get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return Litestar(
        route_handlers=[lost_before_commit, lost_after_commit, runs_of, stream_then_lose, healthz],
        plugins=[plugin],
        exception_handlers=problem_exception_handlers(),
        logging_config=None,
    )


if __name__ == "__main__":
    uvicorn.run(create_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", loop="uvloop")
