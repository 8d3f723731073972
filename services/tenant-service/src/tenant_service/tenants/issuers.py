"""External JWT issuers of a tenant: identity providers whose tokens the gateways accept as the tenant's.

An (issuer, audience) pair is trusted by one tenant at most (a unique constraint in the registry): a gateway maps a
token to its tenant by that pair alone, so were it trusted by two tenants, a token minted for tenant A's users would
be accepted as tenant B's.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_service.changes import unit_of_work
from tenant_service.db.models import TenantJwtIssuer
from tenant_service.tenants.lookup import find_owned, find_tenant
from tenant_service.tenants.schemas import JwtIssuerCreate, JwtIssuerView
from tenant_service.tenants.validation import check_jwks_url
from tenantry_common.lifecycle import CHANGEABLE
from tenantry_common.problems import ConflictError, FieldError, InvalidInputError, NotFoundError
from tenantry_common.timeutil import utcnow

if TYPE_CHECKING:
    from tenant_service.context import AppContext

#: How many external issuers one tenant may trust.
MAX_ISSUERS_PER_TENANT: Final = 10


class IssuerTakenError(ConflictError):
    """The (issuer, audience) pair is already trusted (by this tenant or another, which is never named)."""

    code = "issuer_taken"


class TooManyIssuersError(ConflictError):
    """The tenant already trusts ``MAX_ISSUERS_PER_TENANT`` issuers."""

    code = "too_many_issuers"


class IssuerNotFoundError(NotFoundError):
    """No such issuer for this tenant."""

    code = "issuer_not_found"


def issuer_view(row: TenantJwtIssuer) -> JwtIssuerView:
    """The admin view of an issuer."""
    return JwtIssuerView(
        id=str(row.id),
        issuer=row.issuer,
        audience=row.audience,
        jwks_url=row.jwks_url,
        algorithms=list(row.algorithms),
        created_at=row.created_at,
        role_claim=row.role_claim,
        role_map=dict(row.role_map),
    )


def _audited(row: TenantJwtIssuer) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "issuer": row.issuer,
        "audience": row.audience,
        "jwks_url": row.jwks_url,
        "algorithms": list(row.algorithms),
        "role_claim": row.role_claim,
        "role_map": dict(row.role_map),
    }


def _taken() -> IssuerTakenError:
    return IssuerTakenError("this issuer and audience are already trusted by a tenant")


class JwtIssuerService:
    """External JWT issuer operations of the admin API."""

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx

    async def add(self, ref: str, data: JwtIssuerCreate, *, actor: str) -> JwtIssuerView:
        """Trust an external issuer for the tenant.

        Raises:
            InvalidInputError: a bad ``jwks_url`` or repeated ``algorithms``.
            JwksUrlNotAllowedError: the ``jwks_url`` host may not be fetched.
            TenantNotFoundError: no such tenant.
            ConflictError: the tenant is being deleted or deleted (``invalid_state``).
            IssuerTakenError: the (issuer, audience) pair is already trusted.
            TooManyIssuersError: the tenant trusts the maximum number of issuers.
        """
        ctx = self._ctx
        jwks_url = check_jwks_url(data.jwks_url, ctx.settings.lifecycle.upstream_allowlist)
        if len(set(data.algorithms)) != len(data.algorithms):
            raise InvalidInputError(
                "invalid algorithms", errors=[FieldError(field="algorithms", message="must not repeat an algorithm")]
            )
        try:
            async with unit_of_work(ctx) as work:
                session = work.session
                tenant = await work.lock(ref, allowed=CHANGEABLE)  # the lock serialises the count below
                if await self._pair_taken(session, data.issuer, data.audience):
                    raise _taken()
                count = await session.scalar(
                    select(func.count()).select_from(TenantJwtIssuer).where(TenantJwtIssuer.tenant_id == tenant.id)
                )
                if (count or 0) >= MAX_ISSUERS_PER_TENANT:
                    raise TooManyIssuersError(f"a tenant may trust at most {MAX_ISSUERS_PER_TENANT} issuers")
                row = TenantJwtIssuer(
                    id=uuid.uuid4(),
                    tenant_id=tenant.id,
                    issuer=data.issuer,
                    audience=data.audience,
                    jwks_url=jwks_url,
                    algorithms=list(data.algorithms),
                    created_at=utcnow(),
                    role_claim=data.role_claim,
                    role_map=dict(data.role_map),
                )
                session.add(row)
                await session.flush()
                await work.changed(
                    tenant, actor=actor, action="jwt_issuer.add", target=str(row.id), after=_audited(row)
                )
        except IntegrityError as exc:
            # Another request added the same pair between the check and the insert.
            if "uq_tenant_jwt_issuers_issuer_audience" in str(exc.orig):
                raise _taken() from None
            raise ConflictError("the change conflicts with existing data") from None
        return issuer_view(row)

    @staticmethod
    async def _pair_taken(session: AsyncSession, issuer: str, audience: str) -> bool:
        query = select(TenantJwtIssuer.id).where(TenantJwtIssuer.issuer == issuer, TenantJwtIssuer.audience == audience)
        return (await session.scalar(query)) is not None

    async def list(self, ref: str) -> list[JwtIssuerView]:
        """Every issuer the tenant trusts, oldest first."""
        async with self._ctx.sessions() as session:
            tenant = await find_tenant(session, ref)
            rows = await session.execute(
                select(TenantJwtIssuer)
                .where(TenantJwtIssuer.tenant_id == tenant.id)
                .order_by(TenantJwtIssuer.created_at, TenantJwtIssuer.id)
            )
            return [issuer_view(r) for r in rows.scalars()]

    async def remove(self, ref: str, issuer_id: str, *, actor: str) -> None:
        """Stop trusting an issuer (allowed in every tenant status: withdrawing trust is always safe).

        Raises:
            TenantNotFoundError: no such tenant.
            IssuerNotFoundError: the tenant has no issuer ``issuer_id`` (or it is not a UUID).
        """
        async with unit_of_work(self._ctx) as work:
            tenant = await work.lock(ref)
            row = await find_owned(
                work.session, TenantJwtIssuer, tenant, issuer_id, IssuerNotFoundError(f"no JWT issuer {issuer_id!r}")
            )
            before = _audited(row)
            await work.session.delete(row)
            await work.changed(tenant, actor=actor, action="jwt_issuer.remove", target=str(row.id), before=before)
