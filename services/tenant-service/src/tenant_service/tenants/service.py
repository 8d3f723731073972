"""Tenant lifecycle as a persisted state machine, and everything the admin API does with tenants."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

import msgspec
import structlog
from sqlalchemy import delete, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_service.apikeys.schemas import ApiKeyCreate
from tenant_service.apikeys.service import ApiKeyService
from tenant_service.backups.service import clone_source
from tenant_service.changes import InvalidStateError, Unit, unit_of_work
from tenant_service.context import AppContext
from tenant_service.cursors import decode_cursor, split_page
from tenant_service.db.models import Operation, Plan, Tenant, TenantDomain
from tenant_service.failpoints import failpoint
from tenant_service.operations.schemas import OperationView, operation_view
from tenant_service.operations.service import OperationInProgressError, enqueue
from tenant_service.provisioning.names import tenant_object_name
from tenant_service.provisioning.provisioner import Outcome, Provisioner, connection_limit, password_context
from tenant_service.servers.service import place
from tenant_service.tenants.lookup import TenantNotFoundError, find_tenant
from tenant_service.tenants.schemas import (
    Limits,
    NewApiKey,
    TenantCreate,
    TenantPage,
    TenantUpdate,
    TenantView,
)
from tenant_service.tenants.validation import check_json_text, check_upstream_url, normalize_domain
from tenant_service.tenants.views import tenant_views
from tenantry_common.lifecycle import EDITABLE, HAS_DATABASE, RESTORABLE_TO, TRANSITIONS, TenantAction, TenantStatus
from tenantry_common.problems import ConflictError, FieldError, InvalidInputError, NotFoundError, ProblemError
from tenantry_common.slugs import slug_problem
from tenantry_common.timeutil import utcnow

_log = structlog.get_logger("tenantry.tenants")


class TenantExistsError(ConflictError):
    """The slug is taken."""

    code = "tenant_exists"


class DomainTakenError(ConflictError):
    """Another tenant already has this domain."""

    code = "domain_taken"


class ProvisioningFailedError(ProblemError):
    """A synchronous create ended in ``failed`` (its database and role were cleaned up)."""

    status = 503
    code = "provisioning_failed"


def _limits_dict(limits: Limits | None) -> dict[str, int]:
    return {k: v for k, v in msgspec.structs.asdict(limits).items() if v is not None} if limits else {}


@dataclass(frozen=True)
class CreatedTenant:
    """The result of a create: the tenant, its first key (with secret), and whether it is still provisioning."""

    view: TenantView
    api_key: NewApiKey
    pending: bool
    #: A clone's operation (the tenant is provisioned by restoring a backup, not by the create itself).
    operation: OperationView | None = None


class TenantService:
    """Tenant operations shared by the HTTP API and the CLI."""

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx
        self._provisioner = Provisioner(ctx)

    # --- reading --------------------------------------------------------------------------------------

    async def _views(self, session: AsyncSession, tenants: list[Tenant]) -> list[TenantView]:
        return await tenant_views(session, tenants)

    async def view(self, session: AsyncSession, tenant: Tenant) -> TenantView:
        """The admin view of one tenant."""
        return (await self._views(session, [tenant]))[0]

    async def get(self, ref: str) -> TenantView:
        """One tenant by id or slug."""
        async with self._ctx.sessions() as session:
            return await self.view(session, await find_tenant(session, ref))

    async def list(
        self,
        *,
        status: str | None = None,
        plan: str | None = None,
        q: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        server: str | None = None,
    ) -> TenantPage:
        """A page of tenants in creation order, filtered (``server``: the console's filter by database server)."""
        if status is not None and status not in set(TenantStatus):
            raise InvalidInputError(
                "invalid status filter",
                errors=[FieldError(field="status", message=f"must be one of {', '.join(TenantStatus)}")],
            )
        query = select(Tenant).order_by(Tenant.created_at, Tenant.id).limit(limit + 1)
        if status:
            query = query.where(Tenant.status == status)
        if plan:
            query = query.where(Tenant.plan == plan)
        if server:
            query = query.where(Tenant.server == server)
        if q:
            query = query.where(Tenant.slug.icontains(q, autoescape=True) | Tenant.name.icontains(q, autoescape=True))
        if cursor:
            after = decode_cursor(cursor)
            query = query.where(tuple_(Tenant.created_at, Tenant.id) > tuple_(*after))
        async with self._ctx.sessions() as session:
            page, next_cursor = split_page(list((await session.execute(query)).scalars()), limit)
            views = await self._views(session, list(page))
        return TenantPage(items=views, next_cursor=next_cursor)

    # --- creating -------------------------------------------------------------------------------------

    async def create(
        self,
        data: TenantCreate,
        *,
        actor: str,
        wait: bool = True,
        on_create: Callable[[Unit, Tenant], Awaitable[object]] | None = None,
    ) -> CreatedTenant:
        """Register a tenant and provision its database (now, or in the background when ``wait`` is false).

        ``on_create`` adds to the registering transaction (a sign-up's first user): it commits with the tenant or
        not at all.

        Raises:
            InvalidInputError: bad slug, plan, domain or upstream.
            TenantExistsError: the slug is taken.
            DomainTakenError: a domain belongs to another tenant.
            ProvisioningFailedError: a synchronous create ended ``failed``.
        """
        ctx = self._ctx
        if problem := slug_problem(data.slug):
            raise InvalidInputError(f"slug {problem}", errors=[FieldError(field="slug", message=problem)])
        check_json_text(data.settings, "settings")
        domains = sorted(
            {normalize_domain(d, ctx.settings.http.base_domain, f"domains[{i}]") for i, d in enumerate(data.domains)}
        )
        upstream = (
            check_upstream_url(data.upstream_url, ctx.settings.lifecycle.upstream_allowlist)
            if data.upstream_url
            else None
        )
        tenant_id = uuid.uuid4()
        name = tenant_object_name(ctx.settings.database.tenant_db_prefix, data.slug, tenant_id)
        password = secrets.token_urlsafe(32)
        try:
            async with unit_of_work(ctx) as work:
                session = work.session
                plan = await self._plan(session, data.plan or ctx.settings.lifecycle.default_plan)
                server = await place(
                    session, pin=data.server, labels=data.placement.labels if data.placement else None, plan=plan
                )
                tenant = Tenant(
                    id=tenant_id,
                    slug=data.slug,
                    name=data.name,
                    status=TenantStatus.PROVISIONING,
                    plan=plan.name,
                    settings=data.settings,
                    limits=_limits_dict(data.limits),
                    upstream_url=upstream,
                    db_name=name,
                    db_role=name,
                    db_host=server.host,
                    db_port=server.port,
                    server=server.name,
                    db_password_enc=ctx.box.encrypt(password, password_context(tenant_id)),
                )
                session.add(tenant)
                await session.flush()
                for domain in domains:
                    session.add(TenantDomain(domain=domain, tenant_id=tenant_id))
                await session.flush()
                if on_create is not None:
                    await on_create(work, tenant)
                first_key = await ApiKeyService(ctx).create(
                    str(tenant_id), ApiKeyCreate(name="default"), actor=actor, unit=work
                )
                view: TenantView = await work.changed(
                    tenant, actor=actor, action="tenant.create", after=partial(self.view, session, tenant)
                )
                clone = None
                if data.source is not None:
                    backup = await clone_source(session, ctx, data.source.backup_id)
                    params = {"backup_id": str(backup.id), "source_tenant_id": str(backup.tenant_id)}
                    op = await enqueue(session, kind="clone", tenant_id=tenant_id, actor=actor, target=data.slug,
                                       params=params)  # fmt: skip
                    clone = operation_view(op)
                # The row (with the encrypted password) is written but not committed yet.
                await failpoint("provision.before_insert")
        except IntegrityError as exc:
            raise self._integrity_problem(exc, data.slug) from None
        await failpoint("provision.after_insert")
        api_key = NewApiKey(
            id=first_key.id,
            key=first_key.key,
            prefix=first_key.prefix,
            name=first_key.name,
            scopes=first_key.scopes,
            expires_at=first_key.expires_at,
        )
        _log.info("tenant_registered", tenant_id=str(tenant_id), slug=data.slug)
        if clone is not None:
            return CreatedTenant(view=view, api_key=api_key, pending=True, operation=clone)
        if not wait:
            return CreatedTenant(view=view, api_key=api_key, pending=True)
        outcome = await self._provisioner.provision(tenant_id)
        view = await self.get(str(tenant_id))
        if outcome is Outcome.FAILED:
            raise ProvisioningFailedError(
                f"provisioning of {data.slug!r} failed and was rolled back: {view.failure_reason}",
                extra={"tenant_id": str(tenant_id), "tenant_status": view.status},
            )
        return CreatedTenant(view=view, api_key=api_key, pending=outcome is not Outcome.ACTIVE)

    @staticmethod
    def _integrity_problem(exc: IntegrityError, slug: str) -> ProblemError:
        text = str(exc.orig)
        if "uq_tenants_slug" in text:
            return TenantExistsError(f"a tenant with slug {slug!r} already exists")
        if "tenant_domains" in text or "pk_tenant_domains" in text:
            return DomainTakenError("a domain is already registered to another tenant")
        return ConflictError("the change conflicts with existing data")

    async def _plan(self, session: AsyncSession, name: str) -> Plan:
        plan = await session.get(Plan, name)
        if plan is None:
            raise InvalidInputError(f"unknown plan {name!r}", errors=[FieldError(field="plan", message="unknown plan")])
        return plan

    # --- changing -------------------------------------------------------------------------------------

    async def update(self, ref: str, patch: TenantUpdate, *, actor: str) -> TenantView:
        """Change name, plan, settings, limit overrides or upstream URL."""
        ctx = self._ctx
        async with unit_of_work(ctx) as work:
            tenant = await work.lock(ref, allowed=EDITABLE)
            before = msgspec.to_builtins(await self.view(work.session, tenant))
            if patch.name is not msgspec.UNSET:
                tenant.name = patch.name
            if patch.plan is not msgspec.UNSET:
                tenant.plan = (await self._plan(work.session, patch.plan)).name
            if patch.settings is not msgspec.UNSET:
                check_json_text(patch.settings, "settings")
                tenant.settings = patch.settings
            if patch.limits is not msgspec.UNSET:
                tenant.limits = _limits_dict(patch.limits)
            if patch.upstream_url is not msgspec.UNSET:
                tenant.upstream_url = (
                    check_upstream_url(patch.upstream_url, ctx.settings.lifecycle.upstream_allowlist)
                    if patch.upstream_url
                    else None
                )
            await work.session.flush()
            view: TenantView = await work.changed(
                tenant,
                actor=actor,
                action="tenant.update",
                before=before,
                after=partial(self.view, work.session, tenant),
            )
            limits_changed = patch.plan is not msgspec.UNSET or patch.limits is not msgspec.UNSET
            if limits_changed and tenant.status in HAS_DATABASE:
                plan = await work.session.get(Plan, tenant.plan)
                role, limit = tenant.db_role, connection_limit(plan.limits if plan else {}, tenant.limits)
                work.after_commit(partial(ctx.servers.set_connection_limit, tenant.server, role, limit))
        return view

    async def transition(self, ref: str, action: str, *, actor: str) -> TenantView:
        """``suspend``, ``resume``, ``delete`` (soft) or ``restore``, as :data:`TRANSITIONS` allows."""
        action = TenantAction(action)
        rule = TRANSITIONS[action]
        target = rule.target
        ctx = self._ctx
        async with unit_of_work(ctx) as work:
            tenant = await work.lock(ref)
            if tenant.status == target and rule.idempotent:
                return await self.view(work.session, tenant)
            if tenant.status not in rule.sources:
                raise InvalidStateError(f"cannot {action} a tenant that is {tenant.status}")
            before = msgspec.to_builtins(await self.view(work.session, tenant))
            if action is TenantAction.DELETE:
                tenant.status_before_delete = tenant.status
                tenant.deleted_at = utcnow()
                tenant.purge_after = tenant.deleted_at + timedelta(
                    seconds=ctx.settings.lifecycle.delete_retention_seconds
                )
            elif action is TenantAction.RESTORE:
                if tenant.purge_after is not None and tenant.purge_after <= utcnow():
                    raise InvalidStateError("the retention period has ended; the tenant can no longer be restored")
                tenant.deleted_at = None
                tenant.purge_after = None
                # Back to where the delete found it: a suspension survives a delete and a restore.
                previous = tenant.status_before_delete
                target = TenantStatus(previous) if previous in RESTORABLE_TO else TenantStatus.ACTIVE
                if tenant.template_version is None:  # it never got a database
                    target = TenantStatus.FAILED
                tenant.status_before_delete = None
            tenant.status = target
            await work.session.flush()
            view: TenantView = await work.changed(
                tenant,
                actor=actor,
                action=f"tenant.{action}",
                before=before,
                after=partial(self.view, work.session, tenant),
            )
            if action in (TenantAction.DELETE, TenantAction.RESTORE) and tenant.template_version is not None:
                role, login = tenant.db_role, action is TenantAction.RESTORE
                work.after_commit(partial(ctx.servers.set_login, tenant.server, role, enabled=login))
        return view

    async def purge(self, ref: str, *, actor: str) -> TenantView:
        """Drop the tenant's database and role now and forget it.

        Raises:
            OperationInProgressError: a restore, clone or move of the tenant is under way (cancel it first).
        """
        async with self._ctx.sessions() as session:
            tenant = await find_tenant(session, ref)
            view = await self.view(session, tenant)
            busy = await session.scalar(
                select(Operation.id).where(
                    Operation.tenant_id == tenant.id,
                    Operation.kind.in_(("restore", "clone", "move")),
                    Operation.state.in_(("pending", "running")),
                )
            )
        if busy is not None:
            raise OperationInProgressError(f"a restore, clone or move of the tenant is under way (operation {busy})")
        purged = await self._provisioner.purge(tenant.id, actor=actor)
        if purged is None:
            raise TenantNotFoundError(f"no tenant {ref!r}")
        return msgspec.structs.replace(view, status=TenantStatus.DELETED, updated_at=utcnow())

    # --- domains --------------------------------------------------------------------------------------

    async def add_domain(self, ref: str, raw: str, *, actor: str) -> TenantView:
        """Route a custom domain to the tenant."""
        ctx = self._ctx
        domain = normalize_domain(raw, ctx.settings.http.base_domain)
        try:
            async with unit_of_work(ctx) as work:
                tenant = await work.lock(ref)
                owner = await work.session.get(TenantDomain, domain)
                if owner is not None and owner.tenant_id != tenant.id:
                    raise DomainTakenError(f"{domain} is registered to another tenant")
                if owner is None:
                    work.session.add(TenantDomain(domain=domain, tenant_id=tenant.id))
                await work.session.flush()
                await work.changed(tenant, actor=actor, action="domain.add", target=domain, after={"domain": domain})
                view = await self.view(work.session, tenant)
        except IntegrityError:
            raise DomainTakenError(f"{domain} is registered to another tenant") from None
        return view

    async def remove_domain(self, ref: str, raw: str, *, actor: str) -> None:
        """Stop routing a custom domain to the tenant."""
        domain = raw.strip().lower().removesuffix(".")
        async with unit_of_work(self._ctx) as work:
            tenant = await work.lock(ref)
            if "\x00" in domain:  # never a domain, and Postgres text cannot hold it
                raise NotFoundError(f"{domain!r} is not a domain of this tenant", code="domain_not_found")
            result = await work.session.execute(
                delete(TenantDomain).where(TenantDomain.domain == domain, TenantDomain.tenant_id == tenant.id)
            )
            if not getattr(result, "rowcount", 0):
                raise NotFoundError(f"{domain} is not a domain of this tenant", code="domain_not_found")
            await work.changed(tenant, actor=actor, action="domain.remove", target=domain, before={"domain": domain})
