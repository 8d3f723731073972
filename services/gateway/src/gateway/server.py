"""Process entry point: uvicorn on uvloop and httptools, N worker processes."""

from __future__ import annotations

import uvicorn

from gateway.config import GatewaySettings


def main() -> None:
    """Run the gateway (``python -m gateway``)."""
    settings = GatewaySettings.from_env()
    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        # The gateway decides itself which peers' X-Forwarded-* to believe (TRUSTED_PROXIES); uvicorn's own
        # proxy-header handling would rewrite the peer address before that decision.
        proxy_headers=False,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=10,
        h11_max_incomplete_event_size=16 * 1024,
    )
