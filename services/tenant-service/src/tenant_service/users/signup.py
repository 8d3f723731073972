"""Self-service sign-up (contract §12): a new tenant on ``DEFAULT_PLAN`` and its first user, an admin, at once.

The tenant row and its admin are written in one transaction; the database is then provisioned while the caller
waits. A provisioning that does not end ``active`` is purged (database, role, row and user), so a failed sign-up
leaves nothing behind and the slug is free again. A crash after the registering commit leaves a ``provisioning``
tenant with its admin, which the reconciler finishes like any other.
"""

from __future__ import annotations

import uuid

import structlog

from tenant_service.changes import Unit
from tenant_service.context import AppContext
from tenant_service.db.models import Tenant, TenantUser
from tenant_service.provisioning.provisioner import Provisioner
from tenant_service.tenants.schemas import TenantCreate
from tenant_service.tenants.service import ProvisioningFailedError, TenantExistsError, TenantService
from tenant_service.users.passwords import check_password
from tenant_service.users.service import AuthService, owner_hook
from tenant_service.users.throttle import SignupLimit
from tenantry_common.problems import ConflictError, FieldError, InvalidInputError, NotFoundError, ProblemError
from tenantry_common.slugs import slug_problem
from tenantry_common.users_api import SignupRequest, SignupResult, SignupTenant

_log = structlog.get_logger("tenantry.signup")


class SlugTakenError(ConflictError):
    """Another tenant has the slug."""

    code = "slug_taken"


def _check(request: SignupRequest) -> None:
    errors: list[FieldError] = []
    if problem := slug_problem(request.slug):
        errors.append(FieldError(field="slug", message=problem))
    name = request.name.strip()
    if not name or len(name) > 200 or "\x00" in name:
        errors.append(FieldError(field="name", message="must be 1 to 200 characters"))
    email = request.email.strip()
    local, at, domain = email.partition("@")
    if not at or not local or not domain or "@" in domain or len(email) > 254 or any(c.isspace() for c in email):
        errors.append(FieldError(field="email", message="must be an email address"))
    if errors:
        raise InvalidInputError("the sign-up is not valid", errors=errors)
    check_password(request.password, email=email)


async def sign_up(ctx: AppContext, request: SignupRequest) -> SignupResult:
    """Create the tenant and its admin, and sign the admin in.

    Raises:
        NotFoundError: 404 when SIGNUP_ENABLED is off.
        InvalidInputError: 422 for a bad slug (invalid or reserved), name or email; ``weak_password``.
        TooManyAttemptsError: 429, the address's sign-ups this hour.
        SlugTakenError: 409 ``slug_taken``.
        ProvisioningFailedError: 503; nothing is left behind.
    """
    if not ctx.settings.users.signup_enabled:
        raise NotFoundError("No such gateway endpoint.", code="not_found")
    _check(request)
    limit = SignupLimit(ctx.redis, ctx.settings.users.signup_per_hour, str(await ctx.installation_id()))
    taken = await limit.take(request.client_address)
    auth = AuthService(ctx)
    tenants = TenantService(ctx)
    tenant_id: str | None = None
    try:
        password_hash = await auth.hasher.hash(request.password)
        owner = owner_hook(request.email, password_hash)
        created_user: list[TenantUser] = []

        async def add_owner(unit: Unit, tenant: Tenant) -> None:
            nonlocal tenant_id
            tenant_id = str(tenant.id)  # undone from here on if anything fails (a rolled-back one is no row)
            created_user.append(await owner(unit, tenant))

        try:
            created = await tenants.create(
                TenantCreate(slug=request.slug, name=request.name.strip()),
                actor="signup",
                wait=True,
                on_create=add_owner,
            )
        except TenantExistsError:
            raise SlugTakenError(f"the slug {request.slug!r} is taken") from None
        except ProvisioningFailedError as exc:
            tenant_id = str(exc.extra.get("tenant_id") or "") or None
            raise
        tenant_id = created.view.id
        if created.pending or created.view.status != "active":
            raise ProvisioningFailedError("the new tenant's database could not be provisioned; try again")
        async with ctx.sessions() as session, session.begin():
            user = await session.get(TenantUser, created_user[0].id, with_for_update=True)
            if user is None:
                raise ProvisioningFailedError("the new tenant's admin is gone")
            grant = await auth.start_session(session, user)
    except ProblemError:  # answered as it is; nothing is left behind
        await _undo(ctx, tenant_id)
        await limit.give_back(taken)
        raise
    except Exception as exc:  # noqa: BLE001 - an unexpected failure while provisioning: undone, and a clean 503
        _log.error("signup_failed", error=type(exc).__name__, slug=request.slug)
        await _undo(ctx, tenant_id)
        await limit.give_back(taken)
        raise ProvisioningFailedError("the new tenant could not be provisioned and was rolled back") from None
    except BaseException:  # a cancelled request: nothing is left behind either
        await _undo(ctx, tenant_id)
        await limit.give_back(taken)
        raise
    view = created.view
    _log.info("signed_up", tenant_id=view.id, slug=view.slug)
    return SignupResult(
        tenant=SignupTenant(id=view.id, slug=view.slug, name=view.name, plan=view.plan, status=view.status),
        grant=grant,
    )


async def _undo(ctx: AppContext, tenant_id: str | None) -> None:
    """Purge a sign-up's tenant that did not become active (a crash half-way is finished by the reconciler: the
    row is ``deleting`` first)."""
    if tenant_id is None:
        return
    try:
        await Provisioner(ctx).purge(uuid.UUID(tenant_id), actor="signup")
    except Exception as exc:  # noqa: BLE001 - the reconciler finishes a purge that was marked
        _log.warning("signup_undo_failed", tenant_id=tenant_id, error=type(exc).__name__)
