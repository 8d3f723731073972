"""Processes around the gateway for end-to-end tests: the gateway with the tests' defaults, and an echo upstream.

The launchers themselves are :mod:`tenantry_devtools.platform`'s (re-exported here for brevity).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tenantry_devtools import platform as devtools
from tenantry_devtools.platform import NotesProcess
from tenantry_devtools.processes import ServerProcess, free_port

__all__ = ["EchoUpstream", "GatewayProcess", "NotesProcess", "ServerProcess"]

ECHO = Path(__file__).with_name("echo_upstream.py")


class GatewayProcess(devtools.GatewayProcess):
    """The gateway with the tests' default, the directory polled every 0.5 s (so a tenant a test creates is served
    soon after); settings as keyword arguments, for brevity."""

    def __init__(self, *args: Any, **env: str) -> None:
        super().__init__(*args, env={"DIRECTORY_REFRESH_SECONDS": "0.5", **env})


class EchoUpstream(ServerProcess):
    """The echo upstream (``echo_upstream.py``); ``-P`` keeps tests/support (which has a platform.py) off its import
    path."""

    ready_path = "/ready"

    def __init__(self, log_path: Path) -> None:
        port = free_port()
        super().__init__("echo-upstream", [sys.executable, "-P", str(ECHO), str(port)], log_path, port=port)
