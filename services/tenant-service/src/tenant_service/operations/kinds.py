"""Every kind of operation and the handler that runs it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tenant_service.backups import jobs
from tenant_service.servers import moves

if TYPE_CHECKING:
    from tenant_service.context import AppContext


def handlers(ctx: AppContext) -> dict[str, Any]:
    """The handlers of all operation kinds: backups, restores, clones and exports; moves and drains."""
    return {**jobs.handlers(ctx), **moves.handlers(ctx)}
