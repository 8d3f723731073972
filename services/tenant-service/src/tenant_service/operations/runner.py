"""The operation runner: every tenant-service replica runs one; each operation runs in exactly one of them.

Claiming is a session-level advisory lock on a connection the runner keeps open while the operation runs. Two
replicas never run one operation at once, and a runner killed with ``kill -9`` loses its connection and with it the
lock, so the next pass of any runner (its own after a restart) takes the operation over at once: ``running`` with
no lock holder means "crashed". A handler's ``run`` resumes from the checkpoint the crashed run saved; an operation
that crashed ``max_attempts`` times before its point of no return is undone instead (``undo`` leaves nothing
behind) and fails.

Cancellation: the API sets ``cancel_requested``; the runner holding the operation sees it within a heartbeat and
cancels the handler's task, unless the handler has passed its point of no return (:meth:`Job.commit_point`, which
checks the flag under the row's lock, so a cancel and a commit cannot both win).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import structlog
from prometheus_client import Counter, Histogram
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tenant_service.context import AppContext
from tenant_service.db.models import Operation
from tenant_service.operations.events import emit_finished
from tenant_service.operations.schemas import FINISHED
from tenant_service.operations.service import COMMITTED
from tenantry_common.timeutil import utcnow

_log = structlog.get_logger("tenantry.operations")
_LOCK_CLASS: Final = zlib.crc32(b"tenantry:operation") - 2**31
#: Seconds between a runner's looks at its operations' cancel flags (and between progress writes).
HEARTBEAT_SECONDS: Final = 0.5
OPERATIONS: Final = Counter("tenantry_operations_total", "Finished operations by kind and outcome", ["kind", "outcome"])
DURATION: Final = Histogram(
    "tenantry_operation_seconds",
    "Duration of finished operations by kind",
    ["kind"],
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200),
)


class OperationFailedError(Exception):
    """An operation cannot succeed, for a reason the admin should see (``code`` is stable, ``detail`` safe)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class CancelledByAdminError(Exception):
    """The admin cancelled the operation before its point of no return."""


@dataclass
class Job:
    """One run of one operation, as its handler sees it."""

    ctx: AppContext
    id: uuid.UUID
    kind: str
    tenant_id: uuid.UUID | None
    params: dict[str, Any]
    checkpoint: dict[str, Any]
    attempt: int
    created_by: str
    _last_progress: float = field(default=0.0)
    _noted: tuple[int, int | None] | None = field(default=None)

    @property
    def committed(self) -> bool:
        """Whether the handler has passed its point of no return."""
        return bool(self.checkpoint.get(COMMITTED))

    async def step(self, name: str, *, done: int | None = None, total: int | None = None) -> None:
        """Enter a step (shown as ``progress.step``)."""
        await self._write_progress({"step": name, "done": done, "total": total})

    def note_progress(self, done: int, total: int | None = None) -> None:
        """Note progress from synchronous code (a stream's byte counter); the runner writes it every heartbeat."""
        self._noted = (done, total)

    async def flush_progress(self) -> None:
        """Write what :meth:`note_progress` noted, if anything."""
        if self._noted is not None:
            done, total = self._noted
            self._noted = None
            self._last_progress = 0.0
            await self.progress(done, total)

    async def progress(self, done: int, total: int | None = None) -> None:
        """Report how far the current step is; written at most every :data:`HEARTBEAT_SECONDS`."""
        now = time.monotonic()
        if now - self._last_progress < HEARTBEAT_SECONDS:
            return
        async with self.ctx.sessions() as session, session.begin():
            op = await session.get(Operation, self.id)
            if op is not None:
                op.progress = {**(op.progress or {}), "done": done, "total": total}
                op.updated_at = utcnow()
        self._last_progress = now

    async def _write_progress(self, progress: dict[str, Any]) -> None:
        async with self.ctx.sessions() as session, session.begin():
            await session.execute(
                update(Operation)
                .where(Operation.id == self.id)
                .values(progress=progress, step=progress["step"], updated_at=utcnow())
            )
        self._last_progress = time.monotonic()

    async def save(self, **values: Any) -> None:
        """Merge ``values`` into the checkpoint a resumed run reads (ids and names, never a secret)."""
        self.checkpoint.update(values)
        async with self.ctx.sessions() as session, session.begin():
            await session.execute(
                update(Operation)
                .where(Operation.id == self.id)
                .values(checkpoint=dict(self.checkpoint), updated_at=utcnow())
            )

    async def commit_point(self) -> None:
        """Pass the point of no return: from here on the operation is finished forward, never undone.

        Raises:
            CancelledByAdminError: a cancel was asked for first.
        """
        async with self.ctx.sessions() as session, session.begin():
            op = (
                await session.execute(select(Operation).where(Operation.id == self.id).with_for_update())
            ).scalar_one()
            if op.cancel_requested:
                raise CancelledByAdminError
            self.checkpoint[COMMITTED] = True
            op.checkpoint = dict(self.checkpoint)
            op.updated_at = utcnow()


class Handler(Protocol):
    """The work of one kind of operation."""

    #: Crashed runs resumed before the operation is undone and failed instead.
    max_attempts: int

    async def run(self, job: Job) -> dict[str, Any]:
        """Do (or resume, from ``job.checkpoint``) the work; return the operation's ``result``."""
        ...

    async def undo(self, job: Job) -> None:
        """Remove whatever the work made so far (idempotent); called before its point of no return only."""
        ...

    async def finished(
        self, job: Job, outcome: str, result: dict[str, Any] | None, error: dict[str, Any] | None
    ) -> None:
        """Record the outcome where the handler keeps its own rows (a backup's state), in its own transaction."""
        ...


class OperationRunner:
    """Claims and runs operations with bounded concurrency."""

    def __init__(self, ctx: AppContext, handlers: dict[str, Handler], *, workers: int, poll_seconds: float) -> None:
        self._ctx = ctx
        self._handlers = handlers
        self._slots = asyncio.Semaphore(max(1, workers))
        self._workers = max(1, workers)
        self._poll = poll_seconds
        self._wake = asyncio.Event()
        self._running: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._stopping = False

    def wake(self) -> None:
        """Look for new work now (an operation was just enqueued by this process)."""
        self._wake.set()

    async def run_forever(self) -> None:
        """Claim and start operations until cancelled."""
        try:
            while True:
                try:
                    await self.pass_once()
                except Exception as exc:  # noqa: BLE001 - the registry may be briefly unreachable; next pass retries
                    _log.warning("operation_runner_pass_failed", error=type(exc).__name__)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll)
        finally:
            self._stopping = True
            tasks = list(self._running.values())
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def pass_once(self) -> None:
        """Start every open operation no runner holds, as far as free slots allow."""
        free = self._workers - len(self._running)
        if free <= 0:
            return
        async with self._ctx.sessions() as session:
            ids = list(
                (
                    await session.execute(
                        select(Operation.id)
                        .where(Operation.state.in_(("pending", "running")), Operation.kind.in_(list(self._handlers)))
                        .order_by(Operation.created_at)
                        .limit(free * 4 + 8)
                    )
                ).scalars()
            )
        for op_id in ids:
            if len(self._running) >= self._workers:
                break
            if op_id in self._running:
                continue
            holder = await self._claim(op_id)
            if holder is None:
                continue
            task = asyncio.create_task(self._execute(op_id, holder), name=f"operation-{op_id}")
            self._running[op_id] = task
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        for op_id, running in list(self._running.items()):
            if running is task:
                del self._running[op_id]

    async def run_now(self, op_id: uuid.UUID, *, wait_for_claim: float = 30.0) -> None:
        """Run one operation in this process and return when it is finished (``tenantctl``): waits for a runner
        that holds it to let go, for at most ``wait_for_claim`` seconds."""
        deadline = time.monotonic() + wait_for_claim
        while True:
            holder = await self._claim(op_id)
            if holder is not None:
                await self._execute(op_id, holder)
                return
            async with self._ctx.sessions() as session:
                state = await session.scalar(select(Operation.state).where(Operation.id == op_id))
            if state is None or state in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.2)

    async def _claim(self, op_id: uuid.UUID) -> AsyncConnection | None:
        """The open connection that holds ``op_id``'s lock, or None when another runner has it."""
        conn = await self._ctx.engine.connect()
        try:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            got = await conn.scalar(
                text("SELECT pg_try_advisory_lock(:c, :o)"), {"c": _LOCK_CLASS, "o": _lock_id(op_id)}
            )
            if got:
                return conn
        except BaseException:
            await conn.close()
            raise
        await conn.close()
        return None

    async def _execute(self, op_id: uuid.UUID, holder: AsyncConnection) -> None:
        async with self._slots, _held(holder, op_id):
            job = await self._start(op_id)
            if job is None:
                return
            handler = self._handlers[job.kind]
            log = _log.bind(operation_id=str(op_id), kind=job.kind, tenant_id=str(job.tenant_id))
            started = time.monotonic()
            if job.attempt > handler.max_attempts and not job.committed:
                log.warning("operation_crashed_repeatedly", attempts=job.attempt - 1)
                await self._fail(job, handler, "operation_crashed", "the operation was interrupted too often")
                return
            if job.attempt > 1:
                log.info("operation_resumed", attempt=job.attempt, step=job.checkpoint.get("step"))
            work = asyncio.create_task(handler.run(job))
            watch = asyncio.create_task(self._watch(job, work, holder))
            try:
                result = await work
            except asyncio.CancelledError:
                if self._stopping or not watch.done():
                    raise  # shutdown: the operation stays `running`; the next runner to claim it resumes it
                if not watch.result():
                    log.warning("operation_claim_lost")  # another runner may hold it now: leave it to that one
                    return
                log.info("operation_cancelled")
                await self._undo_and_finish(job, handler, "cancelled", None)
                return
            except CancelledByAdminError:
                log.info("operation_cancelled")
                await self._undo_and_finish(job, handler, "cancelled", None)
                return
            except OperationFailedError as exc:
                log.warning("operation_failed", code=exc.code, detail=exc.detail)
                await self._fail(job, handler, exc.code, exc.detail)
                return
            except Exception as exc:
                log.exception("operation_error", error=type(exc).__name__)
                await self._fail(job, handler, "operation_failed", f"{job.kind} failed ({type(exc).__name__})")
                return
            finally:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
            await self._finish(job, handler, "succeeded", result, None)
            DURATION.labels(job.kind).observe(time.monotonic() - started)
            log.info("operation_succeeded", seconds=round(time.monotonic() - started, 2))

    async def _watch(self, job: Job, work: asyncio.Task[dict[str, Any]], holder: AsyncConnection) -> bool:
        """Cancel ``work`` once the admin asks (unless it is past its point of no return): returns True. Cancel it
        too when the claim's connection is lost (another runner may take the operation over): returns False."""
        while not work.done():
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await asyncio.wait_for(holder.scalar(text("SELECT 1")), timeout=10)
            except Exception:  # noqa: BLE001 - any failure means the lock may be gone
                work.cancel()
                return False
            with contextlib.suppress(Exception):
                await job.flush_progress()
            if job.committed:
                continue
            with contextlib.suppress(Exception):
                async with self._ctx.sessions() as session:
                    asked = await session.scalar(select(Operation.cancel_requested).where(Operation.id == job.id))
                if asked and not job.committed:
                    work.cancel()
                    return True
        return True

    async def _start(self, op_id: uuid.UUID) -> Job | None:
        async with self._ctx.sessions() as session, session.begin():
            op = (
                await session.execute(select(Operation).where(Operation.id == op_id).with_for_update())
            ).scalar_one_or_none()
            if op is None or op.state not in ("pending", "running") or op.kind not in self._handlers:
                return None
            op.state = "running"
            op.attempts += 1
            op.started_at = op.started_at or utcnow()
            op.updated_at = utcnow()
            job = Job(
                self._ctx,
                op.id,
                op.kind,
                op.tenant_id,
                dict(op.params),
                dict(op.checkpoint),
                op.attempts,
                op.created_by,
            )
            cancel_first = op.cancel_requested and not job.committed
        if cancel_first:
            await self._undo_and_finish(job, self._handlers[job.kind], "cancelled", None)
            return None
        return job

    async def _fail(self, job: Job, handler: Handler, code: str, detail: str) -> None:
        error = {"code": code, "detail": detail}
        if job.committed:
            await self._finish(job, handler, "failed", None, error)
        else:
            await self._undo_and_finish(job, handler, "failed", error)

    async def _undo_and_finish(self, job: Job, handler: Handler, outcome: str, error: dict[str, Any] | None) -> None:
        try:
            await handler.undo(job)
        except Exception as exc:  # noqa: BLE001 - left `running`: the next claim undoes it again
            _log.warning("operation_undo_failed", operation_id=str(job.id), error=type(exc).__name__)
            return
        await self._finish(job, handler, outcome, None, error)

    async def _finish(
        self, job: Job, handler: Handler, outcome: str, result: dict[str, Any] | None, error: dict[str, Any] | None
    ) -> None:
        await handler.finished(job, outcome, result, error)
        async with self._ctx.sessions() as session, session.begin():
            op = (
                await session.execute(select(Operation).where(Operation.id == job.id).with_for_update())
            ).scalar_one_or_none()
            if op is not None:
                announce = op.state not in FINISHED  # a finish repeated after a crash announces nothing twice
                op.state = outcome
                op.result = result
                op.error = error
                op.finished_at = op.updated_at = utcnow()
                op.progress = {"step": outcome}
                await session.flush()
                if announce:
                    await emit_finished(session, op)
        OPERATIONS.labels(job.kind, outcome).inc()


def _lock_id(op_id: uuid.UUID) -> int:
    """A 32-bit signed key of the operation for ``pg_try_advisory_lock(class, key)`` (a collision only serialises)."""
    return int.from_bytes(op_id.bytes[:4], "big", signed=True)


@contextlib.asynccontextmanager
async def _held(holder: AsyncConnection, op_id: uuid.UUID) -> AsyncIterator[None]:
    """Keep the lock's connection for the block, then unlock and give it back to the pool (a connection that cannot
    unlock is discarded: closing its session is what releases the lock then)."""
    try:
        yield
    finally:
        try:
            await asyncio.wait_for(
                holder.execute(text("SELECT pg_advisory_unlock(:c, :o)"), {"c": _LOCK_CLASS, "o": _lock_id(op_id)}),
                timeout=5,
            )
            await asyncio.wait_for(holder.close(), timeout=5)
        except Exception:  # noqa: BLE001
            with contextlib.suppress(Exception):
                await holder.invalidate()
                await holder.close()
