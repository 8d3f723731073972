"""Named fault-injection points for crash and fault tests.

Inactive unless ``TENANTRY_FAILPOINTS`` is set, e.g. ``provision.after_database=kill`` or
``provision.after_role=sleep:30;provision.before_database=error``. ``kill`` sends SIGKILL to this process at
that exact step, which is how the tests prove that a crash anywhere leaves nothing half-built.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Final

_ENV: Final = "TENANTRY_FAILPOINTS"


class FailpointError(RuntimeError):
    """Raised by a failpoint configured with ``error``."""


def _parse(spec: str) -> dict[str, str]:
    points: dict[str, str] = {}
    for entry in spec.split(";"):
        name, sep, action = entry.strip().partition("=")
        if sep and name:
            points[name.strip()] = action.strip()
    return points


_POINTS: dict[str, str] = _parse(os.environ.get(_ENV, ""))


def configure(spec: str) -> None:
    """Replace the active failpoints (for in-process tests)."""
    _POINTS.clear()
    _POINTS.update(_parse(spec))


async def failpoint(name: str) -> None:
    """Trigger the action configured for ``name``, if any."""
    if not _POINTS:
        return
    action = _POINTS.get(name)
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "error":
        raise FailpointError(f"failpoint {name}")
    elif action.startswith("sleep:"):
        await asyncio.sleep(float(action.partition(":")[2]))
