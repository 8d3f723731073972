"""A webhook receiver: a real HTTP server on loopback (aiohttp, on the caller's event loop) that records what it
gets and answers with the statuses it is told to, path by path."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web


@dataclass
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int

    @property
    def json(self) -> dict[str, Any]:
        decoded: dict[str, Any] = msgspec.json.decode(self.body)
        return decoded


@dataclass
class Receiver:
    """What arrived, and the scripted answers: ``script[path]`` is a list of statuses used up in order (then 200)."""

    port: int = 0
    received: list[Received] = field(default_factory=list)
    script: dict[str, list[int]] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    redirect_to: str | None = None
    """The ``Location`` of scripted 3xx answers."""
    delays: dict[str, float] = field(default_factory=dict)
    """Seconds a path takes to answer (a slow endpoint)."""
    peak: dict[str, int] = field(default_factory=dict)
    """The most requests a path was answering at once."""
    _busy: dict[str, int] = field(default_factory=dict)

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def wait_for(self, predicate: Any, timeout: float = 30.0) -> list[Received]:
        """Wait until ``predicate(received)`` is true; returns the received requests."""
        deadline = time.monotonic() + timeout
        while not predicate(self.received):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out; received {[(r.path, r.json.get('type')) for r in self.received]}")
            self.arrived.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), min(remaining, 0.5))
        return self.received

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        statuses = self.script.get(request.path)
        status = statuses.pop(0) if statuses else 200
        self.received.append(Received(request.path, dict(request.headers), body, time.monotonic(), status))
        self.arrived.set()
        if delay := self.delays.get(request.path):
            self._busy[request.path] = busy = self._busy.get(request.path, 0) + 1
            self.peak[request.path] = max(self.peak.get(request.path, 0), busy)
            try:
                await asyncio.sleep(delay)
            finally:
                self._busy[request.path] -= 1
        headers = {"Location": self.redirect_to} if 300 <= status < 400 and self.redirect_to else None
        return web.Response(status=status, text="ok", headers=headers)


@asynccontextmanager
async def webhook_receiver(port: int = 0) -> AsyncIterator[Receiver]:
    """A receiver listening on 127.0.0.1 (``port``, or a free one) for the block."""
    receiver = Receiver()
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", receiver._handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    server = site._server
    assert server is not None
    receiver.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        yield receiver
    finally:
        await runner.cleanup()
