"""Vending one tenant's database credentials to a tenant app, audited."""

from __future__ import annotations

import structlog

from tenant_service.audit.service import record
from tenant_service.context import AppContext
from tenant_service.provisioning.provisioner import password_context
from tenant_service.secretbox import DecryptionError
from tenant_service.tenants.lookup import find_tenant
from tenantry_common.internal_api import DatabaseCredentials
from tenantry_common.lifecycle import refusal
from tenantry_common.problems import ProblemError

_log = structlog.get_logger("tenantry.internal")


class SecretUnreadableError(ProblemError):
    """The stored password does not decrypt (missing key, tampered row, or a ciphertext of another tenant)."""

    status = 500
    code = "secret_unreadable"


async def vend_credentials(ctx: AppContext, ref: str, *, actor: str) -> DatabaseCredentials:
    """The credentials of an active tenant's database.

    Raises:
        NotFoundError: unknown tenant.
        ProblemError: a tenant that is not served (its status's refusal in ``tenantry_common.lifecycle``).
        SecretUnreadableError: the stored password does not decrypt for this tenant (nothing is vended or audited).
    """
    async with ctx.sessions() as session, session.begin():
        tenant = await find_tenant(session, ref)
        if (refused := refusal(tenant.status)) is not None:  # the same refusal a gateway gives
            retry = {"Retry-After": str(refused.retry_after)} if refused.retry_after else None
            raise ProblemError(refused.detail, code=refused.code, status=refused.status, headers=retry)
        try:
            password = ctx.box.decrypt(tenant.db_password_enc, password_context(tenant.id))
        except DecryptionError:
            _log.error("secret_unreadable", tenant_id=str(tenant.id))
            raise SecretUnreadableError("the tenant's database credentials cannot be read") from None
        record(session, actor=actor, action="credentials.vend", target=tenant.slug, tenant_id=tenant.id)
    return DatabaseCredentials(
        host=tenant.db_host,
        port=tenant.db_port,
        database=tenant.db_name,
        user=tenant.db_role,
        password=password,
    )
