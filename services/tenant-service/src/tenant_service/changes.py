"""One unit of work for changing a tenant, and the transaction services share.

Every change of a tenant — and of what belongs to it: API keys, domains, JWT issuers — goes the same way: lock the
tenant, check that its status allows the change, change it, bump its revision (gateways sync on revisions), write
the audit entry, commit, and only then publish the change event and touch the tenant cluster (a role's LOGIN
flag or connection limit: work that cannot roll back). :class:`Unit` carries the transaction and what waits for its
commit; :func:`unit_of_work` opens one, or joins the caller's, so services compose in one transaction (creating a
tenant creates its first API key through the API key service, in the same transaction).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_service.audit.service import record
from tenant_service.db.models import Tenant
from tenant_service.outbox import EventType, emit
from tenant_service.tenants.lookup import find_tenant, touch
from tenant_service.tenants.schemas import TenantView
from tenant_service.tenants.views import tenant_view
from tenantry_common.events import EventKind
from tenantry_common.lifecycle import TenantStatus
from tenantry_common.problems import ConflictError

if TYPE_CHECKING:
    from tenant_service.context import AppContext


#: The platform event (contract §13) each audited tenant change announces, in the transaction of the change.
#: ``tenant.provisioned`` is the end of provisioning (the synchronous and asynchronous creates, the reconciler's
#: retries and a clone's activation); ``tenant.purged`` is emitted by the purge itself, which forgets the row.
TENANT_EVENTS: Final[dict[str, EventType]] = {
    "tenant.provisioned": "tenant.created",
    "tenant.update": "tenant.updated",
    "tenant.suspend": "tenant.suspended",
    "tenant.resume": "tenant.resumed",
    "tenant.delete": "tenant.deleted",
    "tenant.restore": "tenant.restored",
}


class InvalidStateError(ConflictError):
    """The change is not allowed in the tenant's current status."""

    code = "invalid_state"


@dataclass
class Unit:
    """One transaction, and what runs once it has committed (nothing, if it rolls back)."""

    ctx: AppContext
    session: AsyncSession
    _after_commit: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _events: set[tuple[str, str | None]] = field(default_factory=set)

    def after_commit(self, action: Callable[[], Awaitable[None]]) -> None:
        """Run ``action`` once the transaction has committed (in the order queued)."""
        self._after_commit.append(action)

    def publish(self, kind: EventKind, *, tenant_id: uuid.UUID | None = None, plan: str | None = None) -> None:
        """Publish a change event after the commit (once per kind and subject, however often it is asked for)."""
        key = (kind, str(tenant_id) if tenant_id else plan)
        if key not in self._events:
            self._events.add(key)
            events = self.ctx.events
            self.after_commit(lambda: events.publish(kind, tenant_id=tenant_id, plan=plan))

    async def committed(self) -> None:
        """Run what waited for the commit."""
        for action in self._after_commit:
            await action()

    async def lock(self, ref: str, *, allowed: frozenset[str] | None = None) -> Tenant:
        """The tenant ``ref``, locked for the rest of the transaction; its status must be in ``allowed``.

        Raises:
            TenantNotFoundError: no such tenant.
            InvalidStateError: its status does not allow the change.
        """
        tenant = await find_tenant(self.session, ref, lock=True)
        if allowed is not None and tenant.status not in allowed:
            raise InvalidStateError(f"the tenant is {tenant.status}")
        return tenant

    async def changed(
        self,
        tenant: Tenant,
        *,
        actor: str,
        action: str,
        target: str | None = None,
        before: Any = None,
        after: Any = None,
    ) -> Any:
        """The tenant (or something of it) changed: new revision, an audit entry, the event after the commit.

        ``after`` may be a coroutine function, called once the revision is bumped (a view of the tenant that
        shows its new ``updated_at``); what it returns is audited, and returned.
        """
        await touch(self.session, tenant)
        if callable(after):
            after = await after()
        audited = msgspec.to_builtins(after) if isinstance(after, msgspec.Struct) else after
        record(
            self.session,
            actor=actor,
            action=action,
            target=target if target is not None else tenant.slug,
            tenant_id=tenant.id,
            before=before,
            after=audited,
        )
        event = TENANT_EVENTS.get(action)
        if event is not None and (event != "tenant.created" or tenant.status == TenantStatus.ACTIVE):
            data = after if isinstance(after, TenantView) else await tenant_view(self.session, tenant)
            emit(self.session, event, data, tenant_id=tenant.id, slug=tenant.slug)
        if tenant.status != TenantStatus.PROVISIONING:
            # A tenant being provisioned is announced when it becomes active (the provisioner's change); until then
            # gateways see it, as `provisioning`, only on their periodic sync, as before this unit existed.
            self.publish("tenant.changed", tenant_id=tenant.id)
        return after


@contextlib.asynccontextmanager
async def unit_of_work(ctx: AppContext, joined: Unit | None = None) -> AsyncIterator[Unit]:
    """A unit of its own (committed, then its after-commit work run), or the caller's ``joined`` one."""
    if joined is not None:
        yield joined
        return
    async with ctx.sessions() as session:
        async with session.begin():
            unit = Unit(ctx, session)
            yield unit
        await unit.committed()
