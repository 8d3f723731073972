"""Plan operations: list, create or replace."""

from __future__ import annotations

import re
from datetime import datetime
from functools import partial
from typing import Annotated

import msgspec
from sqlalchemy import select, update

from tenant_service.audit.service import record
from tenant_service.changes import unit_of_work
from tenant_service.context import AppContext
from tenant_service.db.models import Plan, Tenant, revision_seq
from tenant_service.provisioning.provisioner import connection_limit
from tenant_service.servers.schemas import Labels
from tenant_service.tenants.schemas import BackupIntervalHours, BackupRetentionDays, ConnectionLimit, Count
from tenantry_common.lifecycle import HAS_DATABASE
from tenantry_common.problems import FieldError, InvalidInputError
from tenantry_common.timeutil import utcnow

#: What a plan name looks like.
PLAN_NAME = re.compile(r"^[a-z][a-z0-9_-]{1,31}$")


class PlanLimits(msgspec.Struct, forbid_unknown_fields=True):
    """A plan's limits; both request limits are required."""

    requests_per_minute: Count
    requests_per_day: Count
    max_connections: ConnectionLimit = 5
    backup_interval_hours: BackupIntervalHours | None = None
    """Scheduled backups this often (none when unset)."""
    backup_retention_days: BackupRetentionDays | None = None
    """Backups (and exports) are deleted this long after they complete (kept until deleted when unset)."""


#: Most alert thresholds a plan may have, and the largest one (10 = ten times the daily quota).
MAX_ALERT_THRESHOLDS = 10
MAX_ALERT_THRESHOLD = 10.0
DEFAULT_ALERT_THRESHOLDS = (0.8, 1.0)
AlertThreshold = Annotated[float, msgspec.Meta(gt=0, le=MAX_ALERT_THRESHOLD)]


class PlanPut(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``PUT /admin/plans/{name}``."""

    limits: PlanLimits
    alert_thresholds: Annotated[list[AlertThreshold], msgspec.Meta(max_length=MAX_ALERT_THRESHOLDS)] | None = None
    """Fractions of ``requests_per_day`` at which a ``quota.threshold`` event is emitted, once per tenant and day
    (default ``[0.8, 1.0]``; contract §13)."""
    placement_labels: Labels = msgspec.field(default_factory=dict)
    """New tenants on the plan go to servers carrying these labels (unless their create body says otherwise)."""


class PlanView(msgspec.Struct):
    """A plan."""

    name: str
    limits: dict[str, int]
    alert_thresholds: list[float]
    placement_labels: dict[str, str]
    created_at: datetime
    updated_at: datetime


class PlanPage(msgspec.Struct):
    """All plans."""

    items: list[PlanView]
    next_cursor: Annotated[str | None, msgspec.Meta(description="always null: every plan fits one page")] = None


def _view(plan: Plan) -> PlanView:
    return PlanView(
        name=plan.name,
        limits=dict(plan.limits),
        alert_thresholds=[float(t) for t in (plan.alert_thresholds or [])],
        placement_labels=dict(plan.placement_labels or {}),
        created_at=plan.created_at,
        updated_at=plan.updated_at,
    )


def _thresholds(given: list[float] | None) -> list[float]:
    """The plan's thresholds, sorted; the default when none are given.

    Raises:
        InvalidInputError: 422 ``validation_error`` when one is given twice.
    """
    if given is None:
        return list(DEFAULT_ALERT_THRESHOLDS)
    if len(set(given)) != len(given):
        raise InvalidInputError(
            "invalid alert thresholds",
            errors=[FieldError(field="alert_thresholds", message="each threshold at most once")],
        )
    return sorted(float(t) for t in given)


class PlanService:
    """Plans shared by the HTTP API and the CLI."""

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx

    async def list(self) -> PlanPage:
        """Every plan, by name."""
        async with self._ctx.sessions() as session:
            rows = await session.execute(select(Plan).order_by(Plan.name))
            return PlanPage(items=[_view(p) for p in rows.scalars()])

    async def put(self, name: str, data: PlanPut, *, actor: str) -> PlanView:
        """Create or replace a plan; tenants on it see the new limits (and connection limit) at once."""
        if not PLAN_NAME.fullmatch(name):
            raise InvalidInputError(
                "invalid plan name",
                errors=[FieldError(field="name", message="2-32 characters: lowercase letters, digits, '-', '_'")],
            )
        limits = {k: v for k, v in msgspec.to_builtins(data.limits).items() if v is not None}
        thresholds = _thresholds(data.alert_thresholds)
        ctx = self._ctx
        async with unit_of_work(ctx) as work:
            session = work.session
            plan = await session.get(Plan, name, with_for_update=True)
            before = msgspec.to_builtins(_view(plan)) if plan else None
            if plan is None:
                plan = Plan(
                    name=name,
                    limits=limits,
                    alert_thresholds=thresholds,
                    placement_labels=dict(data.placement_labels),
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
                session.add(plan)
            else:
                plan.limits = limits
                plan.alert_thresholds = thresholds
                plan.placement_labels = dict(data.placement_labels)
                plan.updated_at = utcnow()
            await session.flush()
            await session.execute(update(Tenant).where(Tenant.plan == name).values(revision=revision_seq.next_value()))
            tenants = (
                await session.execute(
                    select(Tenant.server, Tenant.db_role, Tenant.limits).where(
                        Tenant.plan == name, Tenant.status.in_(HAS_DATABASE)
                    )
                )
            ).all()
            view = _view(plan)
            record(session, actor=actor, action="plan.put", target=name, before=before,
                   after=msgspec.to_builtins(view))  # fmt: skip
            if before is None or before["limits"].get("max_connections") != limits.get("max_connections"):
                for server, role, overrides in tenants:
                    work.after_commit(
                        partial(ctx.servers.set_connection_limit, server, role, connection_limit(limits, overrides))
                    )
            work.publish("plan.changed", plan=name)
        return view
