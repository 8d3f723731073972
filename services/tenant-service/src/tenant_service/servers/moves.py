"""Moving a tenant's database to another server, and draining a server (contract §11).

A move is an operation (:mod:`tenant_service.operations`), in steps:

1. **preparing**: whatever an interrupted attempt left is removed; stand-ins are made on both servers (LOGIN roles
   with a password only the platform knows, members of the tenant's role and of nothing else: the platform acts
   with the tenant's rights while the tenant's own role may not log in); the tenant's role is made on the target,
   unable to log in, and an empty database owned by it. The mode is chosen: ``logical`` when both servers can
   move online and nothing in the tenant's schema would run code in the subscription's apply worker (which runs
   as a superuser on PostgreSQL 15, see :mod:`.replication`), else ``dump``. The operation's result says which
   ran and why.
2. **copying** (logical): the schema is copied as the tenant (``pg_dump --schema-only`` | ``pg_restore``); tables
   without a primary key get ``REPLICA IDENTITY FULL`` on the source; the tenant's role publishes its tables, and
   a subscription on the target (its walsender logs in as the source's stand-in) copies them and streams changes.
3. **catching_up**: until the target is within a few megabytes of WAL of the source.
4. **cutover**, under the gateways' hold (:mod:`tenant_service.cutover`): the tenant's role on the source may no
   longer log in and its sessions end; logical: the target confirms every change up to the source's WAL position,
   sequences are carried over, row counts compared; dump: the whole database is copied as the tenant now. Then
   the point of no return: the target's role gets the tenant's password and LOGIN, the registry names the new
   server, the source database becomes a retired one (kept ``MOVE_KEEP_SECONDS``, refusing connections), and
   ``tenant.database_changed`` tells tenant apps. The hold is released.
5. **verifying**: every table of the target, read in a snapshot taken at the switch, is compared (row count and an
   order-independent checksum of the rows) with the frozen source.
6. **cleanup**: the subscription, the slot, the publication and the stand-ins are removed.

Failure, cancellation or a third crash before the point of no return undoes the move: nothing is left on the
target, the source's publication, slot and replica identities are removed, and the tenant keeps serving from the
source. A crash after it finishes the move forward. The reconciler removes slots, subscriptions and stand-ins of
moves that are no longer running (:func:`sweep_move_leftovers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from tenant_service.backups.service import TenantUnavailableError
from tenant_service.changes import unit_of_work
from tenant_service.cutover import HoldNotDrainedError, cutover_hold
from tenant_service.db.models import Operation, Plan, RetiredDatabase, Server, Tenant
from tenant_service.failpoints import failpoint
from tenant_service.operations.runner import Job, OperationFailedError
from tenant_service.operations.schemas import OperationView, operation_view
from tenant_service.operations.service import enqueue
from tenant_service.provisioning.cluster import PgToolError, TenantCluster, TenantLogin
from tenant_service.provisioning.names import object_marker
from tenant_service.provisioning.provisioner import connection_limit, password_context
from tenant_service.servers import replication
from tenant_service.servers.pool import ServerNotFoundError
from tenant_service.servers.schemas import MoveRequest
from tenant_service.servers.service import NoCapacityError, place, tenant_counts
from tenantry_common.lifecycle import HAS_DATABASE, LOGIN_ALLOWED
from tenantry_common.problems import ConflictError, FieldError, InvalidInputError
from tenantry_common.timeutil import utcnow

if TYPE_CHECKING:
    from tenant_service.context import AppContext

_log = structlog.get_logger("tenantry.moves")

#: Names of a move's publication, subscription and slot: this prefix and the operation's id.
REPLICATION_PREFIX = "tenantry_mv_"
#: The target is close enough to cut over once it is this many bytes of WAL behind.
CATCH_UP_BYTES = 4 << 20
#: Tables up to this size are counted on both sides inside the write pause (a quick check that costs a few
#: milliseconds each); larger ones only in the full comparison after the switch, so that the pause does not grow
#: with the tenant (counting 200 MB took 0.23 s a side on the bench machine).
QUICK_CHECK_BYTES = 16 << 20
#: How often replication progress is looked at.
_POLL_SECONDS = 0.02
#: Longest the final catch-up inside the write pause may take; beyond it the cutover is abandoned and retried.
_FINAL_SYNC_SECONDS = 3.0


def replication_name(op_id: uuid.UUID) -> str:
    """The move's publication, subscription and slot name."""
    return f"{REPLICATION_PREFIX}{op_id.hex}"


def stand_in_name(prefix: str, op_id: uuid.UUID) -> str:
    """The move's stand-in role (the same name on both servers). No tenant's role can be named like it: theirs end
    in ``_`` and 12 hex digits, after a slug of at least three characters."""
    return f"{prefix}mv_{op_id.hex}"


def walsender_name(prefix: str, op_id: uuid.UUID) -> str:
    """The source's second stand-in, with ``REPLICATION``, for the subscription's walsender only (which runs no
    tenant code); the platform's own sessions use the first, so tenant code that runs in them (a policy, a
    trigger) cannot use ``REPLICATION`` (a physical slot would hold the server's WAL)."""
    return f"{stand_in_name(prefix, op_id)}_r"


class MoveJob:
    """``move``: the tenant's database to another server (see the module's docstring)."""

    max_attempts = 3

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx
        #: The stand-ins' password of each move running here: new on every (re)run, never stored.
        self._passwords: dict[uuid.UUID, str] = {}

    # --- the parts ---------------------------------------------------------------------------------------

    async def _load(self, job: Job) -> Tenant:
        async with self._ctx.sessions() as session:
            tenant = await session.get(Tenant, job.tenant_id) if job.tenant_id else None
        if tenant is None or tenant.status not in HAS_DATABASE:
            raise OperationFailedError("tenant_unavailable", "the tenant has no database to move")
        return tenant

    def _password(self, tenant: Tenant) -> str:
        return self._ctx.box.decrypt(tenant.db_password_enc, password_context(tenant.id))

    def _stand_in(self, job: Job, tenant: Tenant, database: str | None = None) -> TenantLogin:
        """A login as the move's stand-in acting as the tenant's role; its password is derived from nothing: a
        fresh one is set on every (re)run and kept in memory only."""
        return TenantLogin(
            database=database or tenant.db_name,
            role=tenant.db_role,
            password=self._passwords[job.id],
            user=stand_in_name(self._ctx.settings.database.tenant_db_prefix, job.id),
        )

    @contextlib.asynccontextmanager
    async def _as_tenant(self, cluster: TenantCluster, login: TenantLogin) -> AsyncIterator[Any]:
        async with cluster.tenant_connection(login.database, login.role, login.password, user=login.user) as conn:
            yield conn

    async def _clusters(self, job: Job) -> tuple[TenantCluster, TenantCluster]:
        return await self._ctx.servers.get(job.params["source"]), await self._ctx.servers.get(job.params["server"])

    async def _make_stand_ins(self, job: Job, tenant: Tenant, source: TenantCluster, target: TenantCluster) -> None:
        password = self._passwords[job.id] = secrets.token_urlsafe(32)
        name = stand_in_name(self._ctx.settings.database.tenant_db_prefix, job.id)
        marker = object_marker(await self._ctx.installation_id(), tenant.id)
        await source.ensure_stand_in(name, password, tenant.db_role, marker, replication=False)
        walsender = walsender_name(self._ctx.settings.database.tenant_db_prefix, job.id)
        await source.ensure_stand_in(walsender, password, tenant.db_role, marker, replication=True)
        if await target.role_exists(tenant.db_role):  # else made with the role, by _prepare_target
            await target.ensure_stand_in(name, password, tenant.db_role, marker, replication=False)

    async def _choose_mode(self, job: Job, tenant: Tenant, source: TenantCluster, target: TenantCluster) -> None:
        wanted = job.params.get("mode", "auto")
        reasons: list[str] = []
        if wanted != "dump":
            facts = await asyncio.gather(source.facts(), target.facts())
            for side, fact in zip(("source", "target"), facts, strict=True):
                if not fact.can_move_online:
                    reasons.append(
                        f"the {side} server cannot move online (wal_level={fact.wal_level}, "
                        f"superuser={'yes' if fact.superuser else 'no'})"
                    )
            async with self._as_tenant(source, self._stand_in(job, tenant)) as conn:
                reasons += await replication.apply_hazards(conn)
        else:
            reasons.append("dump mode was asked for")
        mode = "logical" if not reasons else "dump"
        if wanted == "logical" and mode != "logical":
            raise OperationFailedError("cannot_move_online", "; ".join(reasons)[:500])
        await job.save(mode=mode, mode_reason="; ".join(reasons)[:500] or None)

    async def _prepare_target(self, job: Job, tenant: Tenant, target: TenantCluster) -> None:
        ctx = self._ctx
        async with ctx.sessions() as session:
            plan = await session.get(Plan, tenant.plan)
        limit = connection_limit(plan.limits if plan else {}, tenant.limits)
        marker = object_marker(await ctx.installation_id(), tenant.id)
        # Unable to log in (and with a password the tenant does not know) until the cutover.
        await target.ensure_role(tenant.db_role, secrets.token_urlsafe(32), limit, marker, login=False)
        name = stand_in_name(ctx.settings.database.tenant_db_prefix, job.id)
        await target.ensure_stand_in(name, self._passwords[job.id], tenant.db_role, marker, replication=False)
        await target.create_empty_database(tenant.db_name, tenant.db_role, marker)
        await failpoint("move.after_target")

    async def _start_replication(self, job: Job, tenant: Tenant, source: TenantCluster, target: TenantCluster) -> None:
        name = replication_name(job.id)
        login, target_login = self._stand_in(job, tenant), self._stand_in(job, tenant)
        await job.step("copying_schema")
        try:
            await target.tools().restore(target_login, source.tools().dump(login, schema_only=True, archive=True))
        except PgToolError as exc:
            raise OperationFailedError("move_failed", f"the schema could not be copied: {exc}") from None
        async with self._as_tenant(source, login) as conn:
            published = await replication.tables(conn)
            full = [t for t in published if t.needs_full_identity]
            await job.save(
                identities={t.qualified: t.identity for t in full},
                fingerprint=await replication.fingerprint(conn),
                tables=len(published),
            )
            for table in full:
                await replication.set_identity(conn, table, "FULL")
            await replication.create_publication(conn, name, published)
        await failpoint("move.after_publication")
        host, port = source.endpoint()
        conninfo = (
            f"host={host} port={port} dbname={tenant.db_name} "
            f"user={walsender_name(self._ctx.settings.database.tenant_db_prefix, job.id)} "
            f"password={self._passwords[job.id]} connect_timeout=10 application_name={name} "
            "options='-c search_path=pg_catalog -c statement_timeout=0'"
        )
        await job.step("copying", done=0, total=len(published))
        await target.create_subscription(tenant.db_name, name, conninfo, name)
        await failpoint("move.after_subscription")
        async with target.subscriber(tenant.db_name) as conn:
            while True:
                states = await conn.fetch(
                    "SELECT r.srsubstate::text AS state FROM pg_subscription_rel r"
                    " JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = $1",
                    name,
                )
                ready = sum(1 for r in states if r["state"] == "r")
                await job.progress(ready, len(states))
                if ready == len(states):
                    break
                await asyncio.sleep(0.2)
        await failpoint("move.after_copy")
        await job.step("catching_up")
        deadline = time.monotonic() + self._ctx.settings.servers.catch_up_seconds
        while True:
            lag = await source.slot_lag(name)
            if lag is None:
                raise OperationFailedError("move_failed", "the replication slot disappeared")
            job.note_progress(lag)
            await job.flush_progress()
            if lag <= CATCH_UP_BYTES:
                return
            if time.monotonic() > deadline:
                raise OperationFailedError("move_failed", "the target did not catch up with the source in time")
            await asyncio.sleep(0.1)

    async def _freeze_source(self, tenant: Tenant, source: TenantCluster) -> None:
        """The tenant's role may no longer log in to the source and its sessions end (the stand-in's go on)."""
        await source.set_login(tenant.db_role, enabled=False)
        if not await source.sessions_gone(tenant.db_role, 2.0):
            raise OperationFailedError("move_failed", "the tenant's sessions on the source did not end in time")

    async def _final_sync_logical(
        self, job: Job, source: TenantCluster, src: Any, dst: Any, budget: float
    ) -> dict[str, Any]:
        """Inside the write pause: the target confirms every change, sequences follow, row counts agree. ``src``
        and ``dst``: stand-in sessions on the source and the target, opened before the pause."""
        name = replication_name(job.id)
        if await replication.fingerprint(src) != job.checkpoint.get("fingerprint"):
            raise OperationFailedError("schema_changed", "the tenant's schema changed during the move; retry it")
        lsn = await source.flushed_wal_position()
        deadline = time.monotonic() + min(_FINAL_SYNC_SECONDS, budget)
        while not await source.slot_confirmed(name, lsn):
            if time.monotonic() > deadline:
                raise OperationFailedError("move_failed", "the target did not confirm the last changes in time")
            await asyncio.sleep(_POLL_SECONDS)
        published = await replication.tables(src)
        values = await replication.sequences(src)
        await replication.set_sequences(dst, values)
        checked = await replication.small_tables(src, published, QUICK_CHECK_BYTES)
        counts, theirs = await asyncio.gather(
            replication.row_counts(src, checked), replication.row_counts(dst, checked)
        )
        if theirs != counts:
            wrong = sorted(k for k in counts if counts[k] != theirs.get(k))
            raise OperationFailedError("move_failed", f"row counts differ after the catch-up: {', '.join(wrong[:5])}")
        return {"sequences": len(values), "tables": len(published), "counted_in_pause": len(checked)}

    async def _copy_dump(self, job: Job, tenant: Tenant, source: TenantCluster, target: TenantCluster) -> None:
        login = self._stand_in(job, tenant)
        try:
            await target.tools().restore(login, source.tools().dump(login))
        except PgToolError as exc:
            raise OperationFailedError("move_failed", f"the copy failed: {exc}") from None

    async def _switch(self, job: Job, tenant_id: uuid.UUID, target: TenantCluster) -> None:
        """Past the point of no return: the target serves the tenant. Idempotent."""
        ctx = self._ctx
        async with ctx.sessions() as session:
            tenant = await session.get(Tenant, tenant_id)
            server = await session.get(Server, job.params["server"])
            plan = await session.get(Plan, tenant.plan) if tenant else None
        if tenant is None or server is None:
            raise OperationFailedError("move_failed", "the tenant or the target server vanished at the switch")
        limit = connection_limit(plan.limits if plan else {}, tenant.limits)
        marker = object_marker(await ctx.installation_id(), tenant.id)
        await target.ensure_role(
            tenant.db_role, self._password(tenant), limit, marker, login=tenant.status in LOGIN_ALLOWED
        )
        await failpoint("move.before_registry")
        source_name = job.params["source"]
        async with unit_of_work(ctx) as work:
            locked = await work.session.get(Tenant, tenant_id, with_for_update=True)
            if locked is None or locked.server == server.name:
                return
            locked.server, locked.db_host, locked.db_port = server.name, server.host, server.port
            await work.session.execute(
                insert(RetiredDatabase)
                .values(
                    server=source_name,
                    db_name=locked.db_name,
                    db_role=locked.db_role,
                    tenant_id=locked.id,
                    operation_id=job.id,
                    drop_after=utcnow() + timedelta(seconds=ctx.settings.servers.move_keep_seconds),
                )
                .on_conflict_do_nothing()
            )
            await work.changed(
                locked,
                actor=job.created_by,
                action="tenant.moved",
                before={"server": source_name},
                after={"server": server.name, "operation_id": str(job.id), "mode": job.checkpoint.get("mode")},
            )
            work.publish("tenant.database_changed", tenant_id=locked.id)

    async def _verify(self, job: Job, tenant: Tenant, source: TenantCluster, snapshot: Any) -> dict[str, Any]:
        """Compare the target, as it was at the switch (``snapshot``: a transaction opened then), with the source,
        frozen since the cutover."""
        async with self._as_tenant(source, self._stand_in(job, tenant)) as src:
            published = await replication.tables(src)
            theirs = await replication.checksums(src, published)
        ours = await replication.checksums(snapshot, published)
        wrong = sorted(k for k in theirs if theirs[k] != ours.get(k))
        return {"tables": len(published), "mismatched": wrong[:20]}

    async def _remove_replication(self, job: Job, tenant: Tenant, source: TenantCluster, target: TenantCluster) -> None:
        """Subscription, slot and publication of the move; the replica identities it changed on the source."""
        name = replication_name(job.id)
        await target.drop_subscription(tenant.db_name, name)
        await source.drop_slot(name)
        identities: dict[str, str] = job.checkpoint.get("identities") or {}
        try:
            async with self._as_tenant(source, self._stand_in(job, tenant)) as conn:
                await replication.drop_publication(conn, name)
                for table in await replication.tables(conn):
                    if table.qualified in identities and table.identity == "f":
                        wanted = "NOTHING" if identities[table.qualified] == "n" else "DEFAULT"
                        await replication.set_identity(conn, table, wanted)
        except asyncpg.ObjectNotInPrerequisiteStateError:  # the source database is closed (a retired one)
            async with source.retired_admin(tenant.db_name) as conn:
                await conn.execute(f'DROP PUBLICATION IF EXISTS "{name}"')

    async def _drop_stand_ins(self, job: Job, clusters: tuple[TenantCluster, ...]) -> None:
        prefix = self._ctx.settings.database.tenant_db_prefix
        for cluster in clusters:
            await cluster.drop_role(walsender_name(prefix, job.id))
            await cluster.drop_role(stand_in_name(prefix, job.id))

    # --- the operation ----------------------------------------------------------------------------------

    async def run(self, job: Job) -> dict[str, Any]:
        ctx = self._ctx
        tenant = await self._load(job)
        source, target = await self._clusters(job)
        await self._make_stand_ins(job, tenant, source, target)
        started = time.monotonic()
        if not job.committed:
            if tenant.server != job.params["source"]:
                raise OperationFailedError("move_failed", "the tenant is no longer on the source server")
            await job.step("preparing")
            await self._reset(job, tenant, source, target)
            await self._make_stand_ins(job, tenant, source, target)
            await self._choose_mode(job, tenant, source, target)
            await self._prepare_target(job, tenant, target)
            if job.checkpoint["mode"] == "logical":
                await self._start_replication(job, tenant, source, target)
            await failpoint("move.before_cutover")
        await job.step("cutover")
        checks: dict[str, Any] = {}
        async with contextlib.AsyncExitStack() as stack:
            # Sessions opened before the pause, so that it is not spent logging in.
            snapshot: Any = None
            src = dst = None
            if not job.committed and job.checkpoint["mode"] == "logical":
                src = await stack.enter_async_context(self._as_tenant(source, self._stand_in(job, tenant)))
                dst = await stack.enter_async_context(self._as_tenant(target, self._stand_in(job, tenant)))
            view = await stack.enter_async_context(self._as_tenant(target, self._stand_in(job, tenant)))
            try:
                async with cutover_hold(ctx, tenant.id, hold_id=job.id.hex) as hold:
                    if not job.committed:
                        try:
                            await self._freeze_source(tenant, source)
                            await failpoint("move.frozen")
                            if job.checkpoint["mode"] == "logical":
                                budget = max(0.5, hold.remaining() - 1.0)
                                checks = await self._final_sync_logical(job, source, src, dst, budget)
                            else:
                                await self._copy_dump(job, tenant, source, target)
                            await job.commit_point()
                        except BaseException:
                            if not job.committed:  # the tenant goes on serving from the source
                                await source.set_login(tenant.db_role, enabled=tenant.status in LOGIN_ALLOWED)
                            raise
                    await self._switch(job, tenant.id, target)
                    # The verification reads the target as it is at the switch: a snapshot taken now.
                    await stack.enter_async_context(view.transaction(isolation="repeatable_read", readonly=True))
                    await view.fetchval("SELECT 1 FROM pg_catalog.pg_class LIMIT 1")
                    snapshot = view
                    if "write_pause_seconds" not in job.checkpoint:
                        await job.save(write_pause_seconds=round(time.monotonic() - hold.placed, 3))
            except HoldNotDrainedError:
                if not job.committed:
                    raise OperationFailedError(
                        "hold_failed", "the gateways did not drain the tenant's requests in time"
                    ) from None
                await self._switch(job, tenant.id, target)
            await failpoint("move.after_switch")
            await job.step("verifying")
            verified: dict[str, Any] | None = None
            if snapshot is not None:
                verified = await self._verify(job, tenant, source, snapshot)
        await job.step("cleanup")
        pending: list[str] = []
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("replication", lambda: self._remove_replication(job, tenant, source, target)),
            ("source", lambda: source.allow_connections(tenant.db_name, allowed=False)),
            ("stand-ins", lambda: self._drop_stand_ins(job, (source, target))),
        ]
        for what, action in steps:
            try:
                await action()
            except Exception as exc:  # noqa: BLE001 - the reconciler's sweep finishes it
                _log.warning("move_cleanup_pending", what=what, error=type(exc).__name__)
                pending.append(what)
        result: dict[str, Any] = {
            "source": job.params["source"],
            "server": job.params["server"],
            "mode": job.checkpoint.get("mode"),
            "mode_reason": job.checkpoint.get("mode_reason"),
            "write_pause_seconds": job.checkpoint.get("write_pause_seconds"),
            "seconds": round(time.monotonic() - started, 3),
            **checks,
        }
        if verified is not None:
            result["verified"] = not verified["mismatched"]
            result["verified_tables"] = verified["tables"]
            if verified["mismatched"]:
                result["mismatched_tables"] = verified["mismatched"]
                _log.error("move_verification_failed", tenant_id=str(tenant.id), tables=verified["mismatched"])
        else:
            result["verified"] = None  # resumed after the switch: the switch-time snapshot is gone
        if pending:
            result["cleanup_pending"] = pending
        _log.info("tenant_moved", tenant_id=str(tenant.id), **{k: v for k, v in result.items() if v is not None})
        return result

    async def _reset(self, job: Job, tenant: Tenant, source: TenantCluster, target: TenantCluster) -> None:
        """Remove what an earlier attempt left (before the point of no return): the source serves the tenant."""
        with contextlib.suppress(Exception):
            await self._remove_replication(job, tenant, source, target)
        async with self._ctx.sessions() as session:
            current = await session.get(Tenant, tenant.id)
            retired = await session.get(RetiredDatabase, (job.params["server"], tenant.db_name))
        if current is not None and current.server != job.params["server"]:
            await target.drop_database(tenant.db_name)
            await target.drop_role(tenant.db_role)
            if retired is not None:  # moved back within MOVE_KEEP_SECONDS: the old copy goes now
                async with self._ctx.sessions() as session, session.begin():
                    await session.delete(await session.merge(retired))
        if current is not None and current.server == job.params["source"]:
            await source.set_login(tenant.db_role, enabled=current.status in LOGIN_ALLOWED)

    async def undo(self, job: Job) -> None:
        ctx = self._ctx
        async with ctx.sessions() as session:
            tenant = await session.get(Tenant, job.tenant_id) if job.tenant_id else None
        if tenant is None:
            return
        source, target = await self._clusters(job)
        await self._make_stand_ins(job, tenant, source, target)
        await self._reset(job, tenant, source, target)
        await self._drop_stand_ins(job, (source, target))

    async def finished(
        self, job: Job, outcome: str, result: dict[str, Any] | None, error: dict[str, Any] | None
    ) -> None:
        self._passwords.pop(job.id, None)


class DrainJob:
    """``drain``: every tenant moved off a server (each by its own ``move`` operation, at most
    ``DRAIN_CONCURRENCY`` at once), then the server is ``disabled``. Resumed after a crash by looking again at what
    the server still holds; cancelling it cancels its moves that can still be undone."""

    max_attempts = 5

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx

    async def run(self, job: Job) -> dict[str, Any]:
        ctx = self._ctx
        name = job.params["server"]
        total = int(job.checkpoint.get("total") or 0)
        failed: dict[str, str] = dict(job.checkpoint.get("failed") or {})
        await job.step("draining")
        try:
            while True:
                async with ctx.sessions() as session:
                    left = list(
                        (
                            await session.execute(
                                select(Tenant).where(Tenant.server == name).order_by(Tenant.created_at)
                            )
                        ).scalars()
                    )
                    ours = list(
                        (
                            await session.execute(
                                select(Operation).where(
                                    Operation.kind == "move",
                                    Operation.params["drain"].astext == str(job.id),
                                )
                            )
                        ).scalars()
                    )
                if not total:
                    total = len(left)
                    await job.save(total=total)
                running = {op.tenant_id for op in ours if op.state in ("pending", "running")}
                for op in ours:
                    if op.state == "failed" and op.tenant_id is not None and str(op.tenant_id) not in failed:
                        failed[str(op.tenant_id)] = (op.error or {}).get("code", "failed")
                        await job.save(failed=failed)
                waiting = [t for t in left if t.id not in running and str(t.id) not in failed]
                await job.progress(total - len(left), total)
                if not running and not waiting:
                    break
                room = ctx.settings.servers.drain_concurrency - len(running)
                for tenant in waiting[: max(0, room)]:
                    await self._enqueue_move(job, tenant)
                await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            await self._cancel_moves(job)
            raise
        if failed:
            raise OperationFailedError(
                "drain_incomplete", f"{len(failed)} tenants could not be moved off {name!r}; the server stays draining"
            )
        async with ctx.sessions() as session, session.begin():
            row = await session.get(Server, name, with_for_update=True)
            if row is not None:
                row.state, row.updated_at = "disabled", utcnow()
        return {"server": name, "moved": total}

    async def _enqueue_move(self, job: Job, tenant: Tenant) -> None:
        ctx = self._ctx
        async with ctx.sessions() as session, session.begin():
            plan = await session.get(Plan, tenant.plan)
            try:
                target = await place(session, pin=None, labels=None, plan=plan, exclude=job.params["server"])
            except Exception as exc:  # noqa: BLE001 - no room: recorded as this tenant's failure
                failed = dict(job.checkpoint.get("failed") or {})
                failed[str(tenant.id)] = getattr(exc, "code", "no_capacity")
                await job.save(failed=failed)
                return
            params = {"server": target.name, "source": job.params["server"], "mode": "auto", "drain": str(job.id)}
            await enqueue(session, kind="move", tenant_id=tenant.id, params=params, actor=job.created_by,
                          target=tenant.slug)  # fmt: skip

    async def _cancel_moves(self, job: Job) -> None:
        async with self._ctx.sessions() as session, session.begin():
            ops = (
                await session.execute(
                    select(Operation).where(
                        Operation.kind == "move",
                        Operation.params["drain"].astext == str(job.id),
                        Operation.state.in_(("pending", "running")),
                    )
                )
            ).scalars()
            for op in ops:
                op.cancel_requested = True

    async def undo(self, job: Job) -> None:
        await self._cancel_moves(job)

    async def finished(
        self, job: Job, outcome: str, result: dict[str, Any] | None, error: dict[str, Any] | None
    ) -> None:
        return None


async def sweep_move_leftovers(ctx: AppContext, cluster: TenantCluster, open_moves: set[uuid.UUID]) -> list[str]:
    """Drop the subscriptions, slots and stand-in roles of moves that are no longer pending or running (their
    operation's cleanup was cut short). Returns what was dropped."""
    dropped: list[str] = []

    def finished(name: str, prefix: str) -> bool:
        try:
            return uuid.UUID(hex=name.removeprefix(prefix).removesuffix("_r")) not in open_moves
        except ValueError:
            return False

    for sub, database in await cluster.subscriptions(REPLICATION_PREFIX):
        if finished(sub, REPLICATION_PREFIX):
            await cluster.drop_subscription(database, sub)
            dropped.append(f"subscription {sub}")
    for slot in await cluster.slots(REPLICATION_PREFIX):
        if finished(slot, REPLICATION_PREFIX):
            await cluster.drop_slot(slot)
            dropped.append(f"slot {slot}")
    prefix = f"{ctx.settings.database.tenant_db_prefix}mv_"
    async with cluster.connect() as conn:
        roles = [
            r["rolname"]
            for r in await conn.fetch("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", prefix)
        ]
    for role in roles:
        if finished(role, prefix):
            await cluster.drop_role(role)
            dropped.append(f"role {role}")
    return dropped


class AlreadyThereError(ConflictError):
    """The tenant's database is on that server already."""

    code = "already_on_server"


class ServerNotActiveError(ConflictError):
    """The target server is ``draining`` or ``disabled``."""

    code = "server_not_active"


async def request_move(ctx: AppContext, ref: str, data: MoveRequest, *, actor: str) -> OperationView:
    """A ``move`` operation of the tenant's database to ``data.server``.

    Raises:
        TenantNotFoundError, TenantUnavailableError (no database), InvalidInputError (unknown server),
        AlreadyThereError, ServerNotActiveError, NoCapacityError, OperationInProgressError.
    """
    async with unit_of_work(ctx) as work:
        tenant = await work.lock(ref)
        if tenant.status not in HAS_DATABASE:
            raise TenantUnavailableError(f"the tenant is {tenant.status}: it has no database to move")
        server = await work.session.get(Server, data.server, with_for_update=True)
        if server is None:
            raise InvalidInputError(
                f"no server {data.server!r}", errors=[FieldError(field="server", message="is not a registered server")]
            )
        if server.name == tenant.server:
            raise AlreadyThereError(f"the tenant is on {server.name!r} already")
        if server.state != "active":
            raise ServerNotActiveError(f"server {server.name!r} is {server.state}")
        held = (await tenant_counts(work.session)).get(server.name, 0)
        if held >= server.capacity:
            raise NoCapacityError(f"server {server.name!r} is full ({held} of {server.capacity})",
                                  headers={"Retry-After": "60"})  # fmt: skip
        params = {"server": server.name, "source": tenant.server, "mode": data.mode}
        op = await enqueue(work.session, kind="move", tenant_id=tenant.id, params=params, actor=actor,
                           target=tenant.slug)  # fmt: skip
        return operation_view(op)


async def request_drain(ctx: AppContext, name: str, *, actor: str) -> OperationView:
    """A ``drain`` operation of the server; it is ``draining`` (no new tenants) from now on.

    Raises:
        ServerNotFoundError, OperationInProgressError (a drain of it runs already).
    """
    async with ctx.sessions() as session, session.begin():
        server = await session.get(Server, name, with_for_update=True)
        if server is None:
            raise ServerNotFoundError(f"no server {name!r}")
        server.state, server.updated_at = "draining", utcnow()
        op = await enqueue(session, kind="drain", tenant_id=None, params={"server": name}, actor=actor, target=name)
        return operation_view(op)


def handlers(ctx: AppContext) -> dict[str, Any]:
    """The handlers of the operation kinds this module runs."""
    return {"move": MoveJob(ctx), "drain": DrainJob(ctx)}


__all__ = [
    "DrainJob",
    "MoveJob",
    "handlers",
    "replication_name",
    "request_drain",
    "request_move",
    "stand_in_name",
    "sweep_move_leftovers",
]
