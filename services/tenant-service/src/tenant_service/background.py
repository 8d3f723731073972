"""Background work of one process: the periodic reconciler, async provisioning jobs, the operation runner, the
backup schedule, the usage history's upkeep (database sizes, retention) and the webhook dispatcher."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import structlog

from tenant_service.backups.schedule import run_forever as run_schedule
from tenant_service.context import AppContext
from tenant_service.operations.kinds import handlers
from tenant_service.operations.runner import OperationRunner
from tenant_service.provisioning.provisioner import Provisioner
from tenant_service.provisioning.reconciler import Reconciler
from tenant_service.usage.upkeep import run_forever as run_usage_upkeep
from tenant_service.webhooks.dispatcher import Dispatcher

_log = structlog.get_logger("tenantry.background")


class BackgroundWork:
    """Owns the tasks so they are kept alive while running and cancelled on shutdown."""

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx
        self._tasks: set[asyncio.Task[object]] = set()
        self.operations: OperationRunner | None = None
        self.webhooks: Dispatcher | None = None

    def _keep(self, task: asyncio.Task[object]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start_reconciler(self) -> None:
        """Run a reconcile pass now and then every ``RECONCILE_INTERVAL_SECONDS``."""
        interval = self._ctx.settings.lifecycle.reconcile_interval_seconds
        self._keep(asyncio.create_task(Reconciler(self._ctx).run_forever(interval), name="reconciler"))

    def start_operations(self) -> None:
        """Run operations (this replica's share of them) and the backup schedule."""
        settings = self._ctx.settings.operations
        self.operations = OperationRunner(
            self._ctx, handlers(self._ctx), workers=settings.workers, poll_seconds=settings.poll_seconds
        )
        self._keep(asyncio.create_task(self.operations.run_forever(), name="operations"))
        schedule = run_schedule(self._ctx, settings.schedule_interval_seconds, on_scheduled=self.wake_operations)
        self._keep(asyncio.create_task(schedule, name="backup-schedule"))

    def start_usage(self) -> None:
        """Sample database sizes and apply the usage retention every ``USAGE_SIZE_SAMPLE_SECONDS``."""
        self._keep(asyncio.create_task(run_usage_upkeep(self._ctx), name="usage-upkeep"))

    def start_webhooks(self) -> None:
        """Deliver the outbox's events to webhook subscriptions."""
        self.webhooks = Dispatcher(self._ctx)
        self._keep(asyncio.create_task(self.webhooks.run_forever(), name="webhooks"))

    def wake_webhooks(self) -> None:
        """A delivery was just queued here: look for it now rather than at the next poll."""
        if self.webhooks is not None:
            self.webhooks.wake()

    def wake_operations(self) -> None:
        """An operation was just enqueued here: start it now rather than at the next poll."""
        if self.operations is not None:
            self.operations.wake()

    def spawn_provisioning(self, tenant_id: str) -> None:
        """Provision a tenant created with ``Prefer: respond-async``."""

        async def run() -> None:
            try:
                await Provisioner(self._ctx).provision(uuid.UUID(tenant_id))
            except Exception as exc:  # noqa: BLE001 - the reconciler retries; the failure is logged here
                _log.warning("async_provisioning_error", tenant_id=tenant_id, error=type(exc).__name__)

        self._keep(asyncio.create_task(run(), name=f"provision-{tenant_id}"))

    async def stop(self) -> None:
        """Cancel everything and wait for it to finish."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
