"""The tenant lifecycle: statuses, the sets that matter, the transitions an admin may ask for, and how each status
refuses traffic. The one home of these facts: the registry's CHECK constraint, the tenant-service's services,
its internal API and the gateways all read them from here.

A new status is added here (and to the registry by a migration that re-creates the CHECK constraint from
:func:`check_constraint`); a new admin transition is a row in :data:`TRANSITIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class TenantStatus(StrEnum):
    """Where a tenant is in its life."""

    PROVISIONING = "provisioning"
    """Registered; its database and role are being made (by the request, or by the reconciler)."""
    ACTIVE = "active"
    """Served."""
    SUSPENDED = "suspended"
    """Refused at the gateways and by credential vending; its database stays as it is."""
    FAILED = "failed"
    """Provisioning gave up; whatever was made was dropped."""
    DELETING = "deleting"
    """Being purged: its database and role are being dropped (the reconciler finishes a crashed purge)."""
    DELETED = "deleted"
    """Soft-deleted: refused, its role cannot log in, its database is kept until the retention ends."""


#: Statuses whose tenant has a database and a role (so plan changes reach its role, migrations its database).
HAS_DATABASE: Final = frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.DELETED})
#: Statuses in which the tenant's role may log in; the reconciler keeps each role's LOGIN flag in line.
LOGIN_ALLOWED: Final = frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED})
#: Statuses whose tenant may still be changed by an admin (name, plan, keys, domains, issuers).
CHANGEABLE: Final = frozenset(set(TenantStatus) - {TenantStatus.DELETING, TenantStatus.DELETED})
#: Statuses whose tenant's own fields (name, plan, settings, limits, upstream) may change: a soft-deleted tenant may
#: be edited before it is restored.
EDITABLE: Final = frozenset(set(TenantStatus) - {TenantStatus.DELETING})
#: Statuses a soft delete can be undone to.
RESTORABLE_TO: Final = frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED})


class TenantAction(StrEnum):
    """Status changes an admin asks for by name."""

    SUSPEND = "suspend"
    RESUME = "resume"
    DELETE = "delete"
    RESTORE = "restore"


@dataclass(frozen=True)
class Transition:
    """From which statuses an action may start, where it goes, and whether asking again is a no-op."""

    sources: frozenset[TenantStatus]
    target: TenantStatus
    idempotent: bool


TRANSITIONS: Final[dict[TenantAction, Transition]] = {
    TenantAction.SUSPEND: Transition(frozenset({TenantStatus.ACTIVE}), TenantStatus.SUSPENDED, idempotent=True),
    TenantAction.RESUME: Transition(frozenset({TenantStatus.SUSPENDED}), TenantStatus.ACTIVE, idempotent=False),
    TenantAction.DELETE: Transition(
        frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.FAILED}),
        TenantStatus.DELETED,
        idempotent=True,
    ),
    # The target is where the delete found the tenant (RESTORABLE_TO), or failed for one that never got a database.
    TenantAction.RESTORE: Transition(frozenset({TenantStatus.DELETED}), TenantStatus.ACTIVE, idempotent=False),
}


@dataclass(frozen=True)
class Refusal:
    """How traffic for a tenant in a status is refused (at the gateways and by credential vending)."""

    status: int
    code: str
    detail: str
    retry_after: int | None = None


REFUSALS: Final[dict[TenantStatus, Refusal]] = {
    TenantStatus.SUSPENDED: Refusal(403, "tenant_suspended", "The tenant is suspended."),
    TenantStatus.PROVISIONING: Refusal(503, "tenant_unavailable", "The tenant is not ready yet.", retry_after=5),
    TenantStatus.FAILED: Refusal(503, "tenant_unavailable", "The tenant is unavailable.", retry_after=5),
    TenantStatus.DELETING: Refusal(404, "tenant_not_found", "No such tenant."),
    TenantStatus.DELETED: Refusal(404, "tenant_not_found", "No such tenant."),
}
#: A status this code does not know (a newer tenant-service's, during a rolling upgrade): unavailable for now.
UNKNOWN_STATUS: Final = Refusal(503, "tenant_unavailable", "The tenant is unavailable.", retry_after=5)


def refusal(status: str) -> Refusal | None:
    """How traffic for a tenant in ``status`` is refused, or ``None`` when it is served."""
    if status == TenantStatus.ACTIVE:
        return None
    try:
        return REFUSALS[TenantStatus(status)]
    except ValueError:
        return UNKNOWN_STATUS


def check_constraint() -> str:
    """The SQL of the registry's CHECK constraint on ``tenants.status``."""
    return "status in (" + ",".join(f"'{s.value}'" for s in TenantStatus) + ")"


__all__ = [
    "CHANGEABLE",
    "EDITABLE",
    "HAS_DATABASE",
    "LOGIN_ALLOWED",
    "REFUSALS",
    "RESTORABLE_TO",
    "TRANSITIONS",
    "UNKNOWN_STATUS",
    "Refusal",
    "TenantAction",
    "TenantStatus",
    "Transition",
    "check_constraint",
    "refusal",
]
