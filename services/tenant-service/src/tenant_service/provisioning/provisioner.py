"""The tenant lifecycle's database side: provision, compensate, purge. Every step is idempotent.

The registry row is written first (status ``provisioning``, names and encrypted password decided), then the
role and the database are made. While a tenant is being worked on, its row is locked ``FOR UPDATE``: a crashed
worker's lock vanishes with its connection, and the reconciler (which skips locked rows) resumes the work.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from enum import StrEnum

import asyncpg
import msgspec
import structlog
from sqlalchemy import delete, func, select

from tenant_service.audit.service import SYSTEM_ACTOR, record
from tenant_service.backups.objects import delete_tenant_objects, destroy_data_key
from tenant_service.changes import unit_of_work
from tenant_service.context import AppContext
from tenant_service.db.models import Plan, Tenant, TenantTombstone, revision_seq
from tenant_service.failpoints import failpoint
from tenant_service.outbox import emit
from tenant_service.provisioning.cluster import TemplateBusyError
from tenant_service.provisioning.names import object_marker
from tenant_service.secretbox import DecryptionError
from tenant_service.servers.retired import drop_retired
from tenant_service.tenants.views import tenant_view
from tenantry_common.lifecycle import TenantStatus
from tenantry_common.limits import merged_limits
from tenantry_common.timeutil import utcnow

_log = structlog.get_logger("tenantry.provisioner")

#: Transient failures (cluster restarting, network) are retried by the reconciler this many times in all.
MAX_ATTEMPTS = 5
DEFAULT_CONNECTION_LIMIT = 5
_TRANSIENT = (OSError, TimeoutError, asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError,
              asyncpg.AdminShutdownError, asyncpg.InterfaceError)  # fmt: skip


class Outcome(StrEnum):
    """How a provisioning run ended."""

    ACTIVE = "active"
    FAILED = "failed"
    PENDING = "provisioning"
    GONE = "gone"
    BUSY = "busy"


def password_context(tenant_id: uuid.UUID) -> str:
    """Associated data binding a tenant's encrypted password to that tenant."""
    return f"tenant:{tenant_id}:db-password"


def connection_limit(plan_limits: Mapping[str, object], overrides: Mapping[str, object]) -> int:
    """The tenant's database connection limit: its merged ``max_connections``, else the default."""
    return merged_limits(plan_limits, overrides).get("max_connections", DEFAULT_CONNECTION_LIMIT)


class Provisioner:
    """Runs the database side of the tenant lifecycle."""

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx

    async def provision(self, tenant_id: uuid.UUID, *, skip_locked: bool = False) -> Outcome:
        """Bring a ``provisioning`` tenant to ``active`` (or to ``failed``, cleaned up).

        Args:
            tenant_id: the tenant.
            skip_locked: return :attr:`Outcome.BUSY` instead of waiting when another worker holds the tenant.
        """
        ctx = self._ctx
        async with unit_of_work(ctx) as work:
            session = work.session
            query = select(Tenant).where(Tenant.id == tenant_id).with_for_update(skip_locked=skip_locked)
            tenant = (await session.execute(query)).scalar_one_or_none()
            if tenant is None:
                exists = await session.scalar(select(func.count()).where(Tenant.id == tenant_id))
                return Outcome.BUSY if exists else Outcome.GONE
            if tenant.status != TenantStatus.PROVISIONING:
                return Outcome(tenant.status) if tenant.status in (Outcome.ACTIVE, Outcome.FAILED) else Outcome.GONE
            log = _log.bind(tenant_id=str(tenant.id), slug=tenant.slug)
            plan = await session.get(Plan, tenant.plan)
            try:
                version = await self._build(tenant, connection_limit(plan.limits if plan else {}, tenant.limits))
            except _TRANSIENT as exc:
                tenant.provisioning_attempts += 1
                tenant.failure_reason = f"transient: {type(exc).__name__}"
                log.warning("provisioning_interrupted", attempts=tenant.provisioning_attempts, error=str(exc))
                if tenant.provisioning_attempts < MAX_ATTEMPTS:
                    return Outcome.PENDING
                await self._fail(tenant, "gave up after repeated transient failures")
                return Outcome.FAILED if tenant.status == TenantStatus.FAILED else Outcome.PENDING
            except (TemplateBusyError, asyncpg.PostgresError, ValueError, DecryptionError) as exc:
                log.error("provisioning_failed", error=type(exc).__name__, detail=str(exc))  # noqa: TRY400 - no SQL in logs
                reason = "template busy" if isinstance(exc, TemplateBusyError) else type(exc).__name__
                await self._fail(tenant, reason)
                return Outcome.FAILED if tenant.status == TenantStatus.FAILED else Outcome.PENDING
            await failpoint("provision.before_activate")
            tenant.status = TenantStatus.ACTIVE
            tenant.template_version = version
            tenant.schema_version = version
            tenant.failure_reason = None
            await work.changed(tenant, actor=SYSTEM_ACTOR, action="tenant.provisioned",
                               after={"status": TenantStatus.ACTIVE.value, "schema_version": version})  # fmt: skip
            log.info("tenant_provisioned", schema_version=version)
        return Outcome.ACTIVE

    async def _build(self, tenant: Tenant, conn_limit: int) -> int:
        ctx = self._ctx
        marker = object_marker(await ctx.installation_id(), tenant.id)
        password = ctx.box.decrypt(tenant.db_password_enc, password_context(tenant.id))
        await failpoint("provision.before_role")
        cluster = await ctx.servers.for_tenant(tenant)
        async with cluster.connect() as admin:  # one admin connection for the role and the database
            await cluster.ensure_role(tenant.db_role, password, conn_limit, marker, conn=admin)
            await failpoint("provision.after_role")
            clone = await cluster.ensure_database(tenant.db_name, tenant.db_role, marker, conn=admin)
        await failpoint("provision.after_database")
        if clone.version is not None:  # cloned now from a template whose objects belong to pg_database_owner
            return clone.version
        return await cluster.secure_database(tenant.db_name, tenant.db_role, password)

    async def _fail(self, tenant: Tenant, reason: str) -> None:
        """Compensate (drop whatever was made) and mark ``failed``; stay ``provisioning`` if cleanup fails."""
        try:
            cluster = await self._ctx.servers.for_tenant(tenant)
            await cluster.drop_database(tenant.db_name)
            await failpoint("provision.compensating")
            await cluster.drop_role(tenant.db_role)
        except (*_TRANSIENT, asyncpg.PostgresError) as exc:
            tenant.failure_reason = f"cleanup pending: {type(exc).__name__}"
            return
        tenant.status = TenantStatus.FAILED
        tenant.failure_reason = reason
        tenant.updated_at = utcnow()

    async def purge(self, tenant_id: uuid.UUID, *, actor: str = SYSTEM_ACTOR) -> Tenant | None:
        """Drop the tenant's database and role (even with open connections), then forget the tenant.

        The row goes to ``deleting`` first, so a crash half-way is finished by the reconciler.
        """
        ctx = self._ctx
        async with ctx.sessions() as session, session.begin():
            tenant = (
                await session.execute(select(Tenant).where(Tenant.id == tenant_id).with_for_update())
            ).scalar_one_or_none()
            if tenant is None:
                return None
            tenant.status = TenantStatus.DELETING
            tenant.updated_at = utcnow()
            tenant.revision = await session.scalar(revision_seq.next_value())
        await ctx.events.publish("tenant.changed", tenant_id=tenant_id)
        await failpoint("purge.after_mark")
        await (await ctx.servers.for_tenant(tenant)).drop_tenant(tenant.db_name, tenant.db_role)
        await drop_retired(ctx, tenant_id=tenant_id)
        # Crypto-shredding first: once the data key is gone no stored backup or export of the tenant can be read,
        # even by someone holding the objects; then the objects themselves.
        await destroy_data_key(ctx, tenant_id)
        await failpoint("purge.after_key")
        await delete_tenant_objects(ctx, tenant_id)
        await failpoint("purge.before_forget")
        async with ctx.sessions() as session, session.begin():
            row = await session.get(Tenant, tenant_id, with_for_update=True)
            if row is not None:  # announced in the transaction that forgets it (not twice after a crash)
                view = await tenant_view(session, row)
                gone = msgspec.structs.replace(view, status=TenantStatus.DELETED.value, updated_at=utcnow())
                emit(session, "tenant.purged", gone, tenant_id=tenant_id, slug=row.slug)
            await session.execute(delete(Tenant).where(Tenant.id == tenant_id))
            await session.merge(
                TenantTombstone(tenant_id=tenant_id, revision=await session.scalar(revision_seq.next_value()))
            )
            record(session, actor=actor, action="tenant.purged", target=tenant.slug, tenant_id=tenant_id,
                   before={"status": "deleting", "database": tenant.db_name}, after=None)  # fmt: skip
        _log.info("tenant_purged", tenant_id=str(tenant_id), slug=tenant.slug)
        await ctx.events.publish("tenant.purged", tenant_id=tenant_id)
        tenant.status = TenantStatus.DELETED
        return tenant
