"""Process entry point: the gateway's own HTTP server on uvloop, in one or more worker processes.

With ``GATEWAY_WORKERS`` > 1 the parent binds the socket, forks the workers (before any event loop or thread
exists), restarts a worker that dies, and on SIGTERM/SIGINT passes the signal on and waits for them. Each
worker stops accepting on SIGTERM and lets requests in flight finish for up to ``_GRACE_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from typing import Final

import structlog
import uvloop

from gateway.app import Gateway
from gateway.config import GatewaySettings
from gateway.http import HttpServer
from tenantry_common.logging import configure_logging

_log = structlog.get_logger("tenantry.gateway.server")
_GRACE_SECONDS: Final = 10.0
#: After the grace period, the longest the worker's own cleanup may take (the usage flush is the longest step, at most
#: usage.STOP_FLUSH_SECONDS); then it exits anyway: a stop never hangs.
_CLEANUP_SECONDS: Final = 15.0
_STOP_SIGNALS: Final = {signal.SIGTERM, signal.SIGINT}


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server(
        (host, port), family=family, backlog=2048, reuse_port=False, dualstack_ipv6=host == "::"
    )
    sock.setblocking(False)
    return sock


async def _serve(settings: GatewaySettings, sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    gateway = Gateway(settings)
    await gateway.start()
    server = HttpServer(
        gateway.handle,
        max_header_bytes=settings.max_header_bytes,
        keepalive_timeout=settings.keepalive_timeout,
        header_timeout=settings.header_timeout,
    )
    await server.serve(sock)
    host, port = sock.getsockname()[:2]
    _log.info("gateway_listening", host=host, port=port, mode=settings.mode, pid=os.getpid())
    if settings.mode == "passthrough":
        _log.warning("passthrough_mode", detail="no authentication or quotas: for benchmarks only")
    await stop.wait()
    _log.info("gateway_stopping", pid=os.getpid())
    await server.shutdown(_GRACE_SECONDS)
    try:
        async with asyncio.timeout(_CLEANUP_SECONDS):
            await gateway.stop()
    except TimeoutError:
        _log.error("gateway_cleanup_timed_out", seconds=_CLEANUP_SECONDS)


def _worker(settings: GatewaySettings, sock: socket.socket) -> None:
    configure_logging("gateway", fmt=settings.log_format, level=settings.log_level)
    uvloop.run(_serve(settings, sock))


def _supervise(settings: GatewaySettings, sock: socket.socket) -> int:
    """Fork the workers, keep them running, stop them on SIGTERM/SIGINT."""
    children: dict[int, int] = {}
    stopping = False

    def spawn(slot: int) -> None:
        # Signals stay blocked across fork and registration: a SIGTERM in between reaches every worker, and a new
        # worker never runs the parent's handler.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
            raise
        if pid == 0:
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
                _worker(settings, sock)
            except BaseException:  # noqa: BLE001 - the worker's last word, then exit without the parent's cleanup
                _log.exception("worker_crashed")
                code = 1
            finally:
                os._exit(code)
        children[pid] = slot
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for slot in range(settings.workers):
        spawn(slot)
    configure_logging("gateway", fmt=settings.log_format, level=settings.log_level)
    _log.info("gateway_supervisor", workers=settings.workers, pid=os.getpid())
    failures: list[float] = []
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid not in children:
            continue
        slot = children.pop(pid)
        if stopping:
            continue
        _log.error("worker_died", pid=pid, status=os.waitstatus_to_exitcode(status))
        now = time.monotonic()
        failures = [t for t in failures if now - t < 60] + [now]
        if len(failures) > 5 * settings.workers:
            _log.error("workers_keep_dying", detail="giving up")
            forward(signal.SIGTERM, None)
            continue
        time.sleep(0.5)
        if not stopping:  # a SIGTERM during the pause: no new worker
            spawn(slot)
    return 0


def main() -> None:
    """Run the gateway (``python -m gateway``)."""
    settings = GatewaySettings.from_env()
    sock = _bind(settings.host, settings.port)
    if settings.workers == 1:
        _worker(settings, sock)
        return
    sys.exit(_supervise(settings, sock))
