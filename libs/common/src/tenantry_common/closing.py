"""Closing clients on the way out without ever hanging there."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Final

#: How long a close may take before it is given up (the process is stopping, or the connection is replaced).
CLOSE_TIMEOUT_SECONDS: Final = 2.0


async def close_quietly(close: Callable[[], Awaitable[object]]) -> None:
    """Await ``close()`` for at most ``CLOSE_TIMEOUT_SECONDS`` and swallow its errors.

    redis-py's asyncio ``aclose()`` (of a client or a pub/sub) waits for the transport's ``wait_closed()``, which can
    wait forever (redis/redis-py#3941): a gateway worker stopping on SIGTERM then never exited. Every such close on a
    shutdown or reconnect path goes through here.
    """
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
            await close()
