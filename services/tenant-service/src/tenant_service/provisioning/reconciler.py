"""The reconciler: at start-up and periodically, finish or undo whatever a crash left half-done.

It clears cutover holds that have run out (their holder died), resumes tenants stuck in ``provisioning``, finishes
purges stuck in ``deleting``, purges soft-deleted tenants whose retention has ended, brings each role's LOGIN flag in
line with its tenant's status, and drops databases and roles that carry this installation's marker but belong to no
tenant in the registry.

The registry decides what is an orphan. A tenant owns its database and may rewrite its comment, so a marker is
only a hint: a database or role whose name the registry gives to a tenant is never dropped, whatever its marker
says.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from sqlalchemy import func, select

from tenant_service.context import AppContext
from tenant_service.cutover import clear_expired_holds
from tenant_service.db.models import Operation, RetiredDatabase, Server, Tenant
from tenant_service.provisioning.cluster import TenantCluster
from tenant_service.provisioning.provisioner import Outcome, Provisioner
from tenant_service.servers.moves import sweep_move_leftovers
from tenant_service.servers.pool import DEFAULT_SERVER
from tenant_service.servers.retired import drop_retired
from tenant_service.servers.service import ServerService
from tenant_service.users.service import sweep_sessions
from tenantry_common.lifecycle import HAS_DATABASE, LOGIN_ALLOWED, TenantStatus

_log = structlog.get_logger("tenantry.reconciler")


@dataclass
class ReconcileReport:
    """What one pass did."""

    provisioned: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    purged: list[str] = field(default_factory=list)
    orphans_dropped: list[str] = field(default_factory=list)
    logins_fixed: list[str] = field(default_factory=list)
    holds_cleared: list[str] = field(default_factory=list)
    retired_dropped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Reconciler:
    """Drives every tenant towards the state its registry row says."""

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx
        self._provisioner = Provisioner(ctx)

    async def run_once(self) -> ReconcileReport:
        """One full pass; each tenant's trouble is logged and reported, never fatal to the pass."""
        report = ReconcileReport()
        ctx = self._ctx
        try:
            report.holds_cleared = [str(tenant_id) for tenant_id in await clear_expired_holds(ctx)]
        except Exception as exc:  # noqa: BLE001 - the registry may be briefly unreachable; next pass retries
            _log.warning("reconcile_holds_error", error=type(exc).__name__)
            report.errors.append(f"holds: {type(exc).__name__}")
        async with ctx.sessions() as session:
            rows = (
                await session.execute(
                    select(Tenant.id, Tenant.status, Tenant.slug).where(
                        (
                            (Tenant.status == TenantStatus.PROVISIONING)
                            # A clone is provisioned by its operation (a restore), never from the template.
                            & Tenant.id.not_in(
                                select(Operation.tenant_id).where(
                                    Operation.kind == "clone", Operation.state.in_(("pending", "running"))
                                )
                            )
                        )
                        | (Tenant.status == TenantStatus.DELETING)
                        | (
                            (Tenant.status == TenantStatus.DELETED)
                            & (Tenant.purge_after <= func.now())
                            # A moving tenant is purged once its move has ended.
                            & Tenant.id.not_in(
                                select(Operation.tenant_id).where(
                                    Operation.kind == "move", Operation.state.in_(("pending", "running"))
                                )
                            )
                        )
                    )
                )
            ).all()
        for tenant_id, status, slug in rows:
            try:
                if status == TenantStatus.PROVISIONING:
                    outcome = await self._provisioner.provision(tenant_id, skip_locked=True)
                    {
                        Outcome.ACTIVE: report.provisioned,
                        Outcome.FAILED: report.failed,
                        Outcome.PENDING: report.pending,
                    }.get(outcome, []).append(slug)
                elif await self._provisioner.purge(tenant_id):
                    report.purged.append(slug)
            except Exception as exc:  # noqa: BLE001 - one tenant's trouble must not stop the pass
                _log.warning("reconcile_tenant_error", tenant_id=str(tenant_id), error=type(exc).__name__)
                report.errors.append(f"{slug}: {type(exc).__name__}")
        try:
            await self._sweep_cluster(report)
        except Exception as exc:  # noqa: BLE001 - the cluster may be briefly unreachable; next pass retries
            _log.warning("reconcile_sweep_error", error=type(exc).__name__)
            report.errors.append(f"sweep: {type(exc).__name__}")
        try:
            await sweep_sessions(ctx)
        except Exception as exc:  # noqa: BLE001 - housekeeping only; next pass retries
            _log.warning("session_sweep_failed", error=type(exc).__name__)
        try:
            await ServerService(ctx).record_metrics()
        except Exception as exc:  # noqa: BLE001 - metrics only; next pass retries
            _log.warning("server_metrics_failed", error=type(exc).__name__)
        if any((report.provisioned, report.failed, report.purged, report.orphans_dropped, report.logins_fixed,
                report.holds_cleared)):  # fmt: skip
            _log.info("reconciled", **{k: v for k, v in report.__dict__.items() if v})
        return report

    async def _sweep_cluster(self, report: ReconcileReport) -> None:
        ctx = self._ctx
        try:
            report.retired_dropped = await drop_retired(ctx)
        except Exception as exc:  # noqa: BLE001 - next pass retries
            _log.warning("reconcile_retired_error", error=type(exc).__name__)
            report.errors.append(f"retired: {type(exc).__name__}")
        async with ctx.sessions() as session:
            servers = list((await session.execute(select(Server.name).order_by(Server.name))).scalars())
            known = {
                row.id: row
                for row in await session.execute(
                    select(Tenant.id, Tenant.status, Tenant.db_name, Tenant.db_role, Tenant.server)
                )
            }
            moving = set(
                (
                    await session.execute(
                        select(Operation.tenant_id).where(
                            Operation.kind == "move", Operation.state.in_(("pending", "running"))
                        )
                    )
                ).scalars()
            )
            retired = {(row.server, row.db_name) for row in await session.execute(select(RetiredDatabase))}
            open_moves = set(
                (
                    await session.execute(
                        select(Operation.id).where(
                            Operation.kind == "move", Operation.state.in_(("pending", "running"))
                        )
                    )
                ).scalars()
            )
        for name in servers or [DEFAULT_SERVER]:
            try:
                cluster = await ctx.servers.get(name)
                await self._sweep_server(cluster, known, moving, retired, report)
                report.orphans_dropped += await sweep_move_leftovers(ctx, cluster, open_moves)
            except Exception as exc:  # noqa: BLE001 - one server may be briefly unreachable; next pass retries
                _log.warning("reconcile_sweep_error", server=name, error=type(exc).__name__)
                report.errors.append(f"sweep {name}: {type(exc).__name__}")

    async def _sweep_server(
        self,
        cluster: TenantCluster,
        known: dict[Any, Any],
        moving: set[Any],
        retired: set[tuple[str, str]],
        report: ReconcileReport,
    ) -> None:
        """Orphans on one server, and the LOGIN flag of the roles of the tenants it holds.

        On a server other than its own, a tenant's database is kept only while a move of the tenant runs (its
        target) or as a move's retired database; anything else of it there is what a crashed move left.
        """
        installation = await self._ctx.installation_id()
        marked = await cluster.marked_objects(installation)
        here = {row.id: row for row in known.values() if row.server == cluster.name}
        every_name = {row.db_name for row in known.values()} | {row.db_role for row in known.values()}
        kept_here = {db for server, db in retired if server == cluster.name}

        def orphan(name: str, tenant_id: Any) -> bool:
            row = known.get(tenant_id)
            if row is None:  # the marker names no tenant: an orphan, unless the registry gives the name to one
                return name not in every_name
            # A known tenant's object elsewhere than on its server: a crashed move's, unless kept on purpose.
            return (
                name in (row.db_name, row.db_role)
                and row.server != cluster.name
                and row.id not in moving
                and row.db_name not in kept_here
            )

        candidates = {tid for name, tid in [*marked.databases.items(), *marked.roles.items()] if orphan(name, tid)}
        if candidates:
            # ``known`` was read before the server's objects were listed: a tenant registered in between (its row
            # commits before its objects are made) would look like an orphan. Read the candidates' rows again.
            known = {**known, **await self._rows(candidates)}
            every_name = {row.db_name for row in known.values()} | {row.db_role for row in known.values()}
        orphan_dbs = {name for name, tid in marked.databases.items() if orphan(name, tid)}
        orphan_roles = {name for name, tid in marked.roles.items() if orphan(name, tid)}
        # Each kind by its own name: a marked orphan role says nothing about a database of the same name.
        # Databases first, so an orphan role no longer owns one when it is dropped.
        drops: list[tuple[str, Callable[[str], Awaitable[None]]]]
        drops = [(name, cluster.drop_database) for name in sorted(orphan_dbs)]
        drops += [(name, cluster.drop_role) for name in sorted(orphan_roles)]
        for name, drop in drops:
            try:
                await drop(name)
            except asyncpg.PostgresError as exc:
                _log.warning("orphan_drop_failed", server=cluster.name, name=name, error=type(exc).__name__)
                report.errors.append(f"orphan {name}: {type(exc).__name__}")
                continue
            if name not in report.orphans_dropped:
                report.orphans_dropped.append(name)
            _log.warning("orphan_dropped", server=cluster.name, name=name)
        logins = await self._role_logins(cluster, [row.db_role for row in here.values()])
        for row in here.values():
            wanted = row.status in LOGIN_ALLOWED if row.status in HAS_DATABASE else None
            current = logins.get(row.db_role)
            if row.id in moving:
                continue  # a move's cutover turns LOGIN off and back on by itself
            if wanted is not None and current is not None and current != wanted:
                await cluster.set_login(row.db_role, enabled=wanted)
                report.logins_fixed.append(row.db_role)

    async def _rows(self, tenant_ids: set[Any]) -> dict[Any, Any]:
        """The registry rows of these tenants now (the ones that exist)."""
        ids = [tid for tid in tenant_ids if tid is not None]
        if not ids:
            return {}
        async with self._ctx.sessions() as session:
            rows = await session.execute(
                select(Tenant.id, Tenant.status, Tenant.db_name, Tenant.db_role, Tenant.server).where(
                    Tenant.id.in_(ids)
                )
            )
            return {row.id: row for row in rows}

    async def _role_logins(self, cluster: TenantCluster, roles: list[str]) -> dict[str, bool]:
        async with cluster.connect() as conn:
            rows = await conn.fetch("SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY($1)", roles)
        return {r["rolname"]: r["rolcanlogin"] for r in rows}

    async def run_forever(self, interval: float) -> None:
        """Pass after pass until cancelled."""
        while True:
            with contextlib.suppress(Exception):
                await self.run_once()
            await asyncio.sleep(interval)
