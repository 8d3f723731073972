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

import asyncpg
import structlog
from sqlalchemy import func, select

from tenant_service.context import AppContext
from tenant_service.cutover import clear_expired_holds
from tenant_service.db.models import Operation, Tenant
from tenant_service.provisioning.provisioner import Outcome, Provisioner
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
                        | ((Tenant.status == TenantStatus.DELETED) & (Tenant.purge_after <= func.now()))
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
        if any((report.provisioned, report.failed, report.purged, report.orphans_dropped, report.logins_fixed,
                report.holds_cleared)):  # fmt: skip
            _log.info("reconciled", **{k: v for k, v in report.__dict__.items() if v})
        return report

    async def _sweep_cluster(self, report: ReconcileReport) -> None:
        ctx = self._ctx
        installation = await ctx.installation_id()
        marked = await ctx.cluster.marked_objects(installation)
        async with ctx.sessions() as session:
            known = {
                row.id: row
                for row in (await session.execute(select(Tenant.id, Tenant.status, Tenant.db_name, Tenant.db_role)))
            }
        names = {row.db_name for row in known.values()} | {row.db_role for row in known.values()}
        orphan_dbs = {name for name, tid in marked.databases.items() if tid not in known and name not in names}
        orphan_roles = {name for name, tid in marked.roles.items() if tid not in known and name not in names}
        # Each kind by its own name: a marked orphan role says nothing about a database of the same name.
        # Databases first, so an orphan role no longer owns one when it is dropped.
        drops: list[tuple[str, Callable[[str], Awaitable[None]]]]
        drops = [(name, ctx.cluster.drop_database) for name in sorted(orphan_dbs)]
        drops += [(name, ctx.cluster.drop_role) for name in sorted(orphan_roles)]
        for name, drop in drops:
            try:
                await drop(name)
            except asyncpg.PostgresError as exc:
                _log.warning("orphan_drop_failed", name=name, error=type(exc).__name__)
                report.errors.append(f"orphan {name}: {type(exc).__name__}")
                continue
            if name not in report.orphans_dropped:
                report.orphans_dropped.append(name)
            _log.warning("orphan_dropped", name=name)
        logins = await self._role_logins([row.db_role for row in known.values()])
        for row in known.values():
            wanted = row.status in LOGIN_ALLOWED if row.status in HAS_DATABASE else None
            current = logins.get(row.db_role)
            if wanted is not None and current is not None and current != wanted:
                await ctx.cluster.set_login(row.db_role, enabled=wanted)
                report.logins_fixed.append(row.db_role)

    async def _role_logins(self, roles: list[str]) -> dict[str, bool]:
        async with self._ctx.cluster.connect() as conn:
            rows = await conn.fetch("SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY($1)", roles)
        return {r["rolname"]: r["rolcanlogin"] for r in rows}

    async def run_forever(self, interval: float) -> None:
        """Pass after pass until cancelled."""
        while True:
            with contextlib.suppress(Exception):
                await self.run_once()
            await asyncio.sleep(interval)
