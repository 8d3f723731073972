"""Registry tables (the master database)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Sequence,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tenantry_common.lifecycle import check_constraint

#: Every change to a tenant, its keys, domains or plan takes a new value; gateways sync on it.
revision_seq = Sequence("tenant_revision_seq")

_naming = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with stable constraint names (so migrations can name them)."""

    metadata = MetaData(naming_convention=_naming)


class Installation(Base):
    """One row: this registry's identity, used to mark the Postgres objects it owns."""

    __tablename__ = "installation"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    installation_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    template_version: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Plan(Base):
    """A named set of limits."""

    __tablename__ = "plans"
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    limits: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    #: Tenants on the plan are placed on servers carrying these labels.
    placement_labels: Mapped[dict[str, str]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    #: Fractions of ``requests_per_day`` at which a ``quota.threshold`` event is emitted (sorted, unique).
    alert_thresholds: Mapped[list[float]] = mapped_column(
        JSONB, nullable=False, server_default=text("'[0.8, 1.0]'::jsonb")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Tenant(Base):
    """A tenant and the state of its database."""

    __tablename__ = "tenants"
    __table_args__ = (
        CheckConstraint(check_constraint(), name="status"),
        Index("ix_tenants_created", "created_at", "id"),
        Index("ix_tenants_status", "status"),
        Index("ix_tenants_revision", "revision"),
    )
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    slug: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False)
    plan: Mapped[str] = mapped_column(Text, ForeignKey("plans.name"), nullable=False)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    limits: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    upstream_url: Mapped[str | None] = mapped_column(Text)
    db_name: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    db_role: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    db_host: Mapped[str] = mapped_column(Text, nullable=False)
    db_port: Mapped[int] = mapped_column(Integer, nullable=False)
    db_password_enc: Mapped[str] = mapped_column(Text, nullable=False)
    template_version: Mapped[int | None] = mapped_column(Integer)
    schema_version: Mapped[int | None] = mapped_column(Integer)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    provisioning_attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    revision: Mapped[int] = mapped_column(BigInteger, revision_seq, server_default=revision_seq.next_value())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    purge_after: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The status a soft delete left (``active`` or ``suspended``): a restore returns to it.
    status_before_delete: Mapped[str | None] = mapped_column(Text)
    #: Set while the tenant's database is being switched (restore, move): gateways hold its new requests.
    hold_id: Mapped[str | None] = mapped_column(Text)
    #: When the hold ends at the latest (a crashed holder's hold is cleared by the reconciler after it).
    hold_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The registered PostgreSQL server that holds the tenant's database (:class:`Server`).
    server: Mapped[str] = mapped_column(Text, nullable=False, server_default="default")


class Server(Base):
    """A PostgreSQL server that holds tenant databases (and a copy of the template)."""

    __tablename__ = "servers"
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    #: Admin URL without its password (None for ``default``: TENANT_DATABASE_URL is its connection).
    url: Mapped[str | None] = mapped_column(Text)
    #: The admin password, sealed by the ``ENCRYPTION_KEYS`` ring (never shown).
    password_enc: Mapped[str | None] = mapped_column(Text)
    #: What tenant apps are given to reach their database there.
    host: Mapped[str] = mapped_column(Text, nullable=False)
    port: Mapped[int] = mapped_column(Integer, nullable=False)
    state: Mapped[str] = mapped_column(Text, nullable=False, server_default="active")
    #: How many tenant databases it takes (placement skips it when full).
    capacity: Mapped[int] = mapped_column(Integer, nullable=False)
    labels: Mapped[dict[str, str]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    #: ``server_version_num`` // 10000 (the major version), as last checked.
    version: Mapped[int | None] = mapped_column(Integer)
    can_move_online: Mapped[bool] = mapped_column(nullable=False, server_default=text("false"))
    template_version: Mapped[int | None] = mapped_column(Integer)
    #: The cluster's identity (``pg_control_system()``): one cluster is registered once.
    system_identifier: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class RetiredDatabase(Base):
    """A tenant database left on its old server by a move: closed to connections, dropped after ``drop_after``."""

    __tablename__ = "retired_databases"
    server: Mapped[str] = mapped_column(Text, primary_key=True)
    db_name: Mapped[str] = mapped_column(Text, primary_key=True)
    db_role: Mapped[str] = mapped_column(Text, nullable=False)
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    operation_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    drop_after: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class TenantDomain(Base):
    """A custom domain that routes to a tenant."""

    __tablename__ = "tenant_domains"
    domain: Mapped[str] = mapped_column(Text, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class TenantJwtIssuer(Base):
    """An external identity provider a tenant trusts: its tokens for ``audience`` authenticate as the tenant."""

    __tablename__ = "tenant_jwt_issuers"
    __table_args__ = (
        # Isolation: a gateway maps a token to a tenant by its (iss, aud) pair alone, so the pair may be trusted by
        # one tenant only. Were it trusted by two, a token minted for tenant A's users would be accepted as
        # tenant B's.
        UniqueConstraint("issuer", "audience", name="uq_tenant_jwt_issuers_issuer_audience"),
    )
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True
    )
    issuer: Mapped[str] = mapped_column(Text, nullable=False)
    audience: Mapped[str] = mapped_column(Text, nullable=False)
    jwks_url: Mapped[str] = mapped_column(Text, nullable=False)
    algorithms: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    #: The claim that holds the token's role (a dotted path); None: the issuer's tokens carry no role.
    role_claim: Mapped[str | None] = mapped_column(Text)
    #: The claim's values → ``admin``/``user``/``viewer`` (empty: the values are the roles).
    role_map: Mapped[dict[str, str]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))


class TenantUser(Base):
    """A user of one tenant (contract §12); the email is unique within the tenant only."""

    __tablename__ = "tenant_users"
    __table_args__ = (
        UniqueConstraint("tenant_id", "email_key", name="uq_tenant_users_tenant_email"),
        Index("ix_tenant_users_tenant_created", "tenant_id", "created_at", "id"),
    )
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    email: Mapped[str] = mapped_column(Text, nullable=False)
    #: The email in lower case: what uniqueness and sign-in compare.
    email_key: Mapped[str] = mapped_column(Text, nullable=False)
    name: Mapped[str | None] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text, nullable=False)
    #: argon2id; None until the invitation is accepted.
    password_hash: Mapped[str | None] = mapped_column(Text)
    disabled: Mapped[bool] = mapped_column(nullable=False, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    password_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class UserInvitation(Base):
    """A single-use, expiring invitation to set a password; only the token's SHA-256 is stored."""

    __tablename__ = "user_invitations"
    token_hash: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenant_users.id", ondelete="CASCADE"), nullable=False
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class UserSession(Base):
    """One sign-in: a family of refresh tokens, revoked as a whole."""

    __tablename__ = "user_sessions"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenant_users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_used_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_reason: Mapped[str | None] = mapped_column(Text)


class RefreshToken(Base):
    """One refresh token of a session (SHA-256 only); ``used_at`` set when it was exchanged for the next one."""

    __tablename__ = "refresh_tokens"
    token_hash: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("user_sessions.id", ondelete="CASCADE"), nullable=False
    )
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiKey(Base):
    """A tenant API key; only its keyed hash is stored."""

    __tablename__ = "api_keys"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(Text, nullable=False)
    prefix: Mapped[str] = mapped_column(Text, nullable=False)
    key_hash: Mapped[bytes] = mapped_column(LargeBinary, nullable=False, unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSONB, nullable=False, server_default=text("'[]'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rotated_to: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))


class TenantTombstone(Base):
    """A purged tenant, remembered by id so that gateways syncing by revision drop it."""

    __tablename__ = "tenant_tombstones"
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, revision_seq, server_default=revision_seq.next_value())
    removed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AuditEntry(Base):
    """One admin change or credential vend. Kept after a tenant is purged."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_tenant", "tenant_id", "id"),)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    actor: Mapped[str] = mapped_column(Text, nullable=False)
    action: Mapped[str] = mapped_column(Text, nullable=False)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    target: Mapped[str] = mapped_column(Text, nullable=False)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    request_id: Mapped[str | None] = mapped_column(Text)


class Operation(Base):
    """Long work (backup, restore, clone, export, move, drain), persisted so that a crash resumes or undoes it."""

    __tablename__ = "operations"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    state: Mapped[str] = mapped_column(Text, nullable=False)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    step: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    #: What a resumed run needs to know of the steps done (ids it created, names it chose); never a secret.
    checkpoint: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    cancel_requested: Mapped[bool] = mapped_column(nullable=False, server_default=text("false"))
    created_by: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class TenantDataKey(Base):
    """A tenant's data key for its stored backups and exports, wrapped by the ``ENCRYPTION_KEYS`` ring.

    Purge deletes the row (with the tenant): every stored object of the tenant is then unreadable.
    """

    __tablename__ = "tenant_data_keys"
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    wrapped: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class _StoredArchive:
    """What a stored backup and a stored export have in common: whose it is, where its object is, what it holds."""

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    state: Mapped[str] = mapped_column(Text, nullable=False)
    operation_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    object_key: Mapped[str] = mapped_column(Text, nullable=False)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(Text)
    schema_version: Mapped[int | None] = mapped_column(Integer)
    server: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Backup(_StoredArchive, Base):
    """One stored backup of a tenant's database (``pg_dump`` custom format, encrypted)."""

    __tablename__ = "backups"
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    note: Mapped[str | None] = mapped_column(Text)


class Export(_StoredArchive, Base):
    """One stored export of a tenant's data (``.tar.gz`` of CSV files, encrypted)."""

    __tablename__ = "exports"


class OutboxEvent(Base):
    """One event waiting in (or done with) the outbox."""

    __tablename__ = "event_outbox"
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    seq: Mapped[int] = mapped_column(
        BigInteger, nullable=False, unique=True, server_default=text("nextval('event_outbox_seq_seq')")
    )
    type: Mapped[str] = mapped_column(Text, nullable=False)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    body: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    fanned_out_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class UsageHourly(Base):
    """Requests of one tenant in one hour, as the gateways counted them (docs/usage.md)."""

    __tablename__ = "usage_hourly"
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    rejected: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")


class UsageDaily(Base):
    """Requests of one tenant in one UTC day, and its database's size when last sampled that day."""

    __tablename__ = "usage_daily"
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    rejected: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    database_bytes: Mapped[int | None] = mapped_column(BigInteger)


class UsageBatchSeen(Base):
    """The id of a usage batch already counted (a retried batch counts nothing)."""

    __tablename__ = "usage_batches"
    batch_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class QuotaAlert(Base):
    """A ``quota.threshold`` event emitted: one per tenant, day and threshold."""

    __tablename__ = "quota_alerts"
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    threshold: Mapped[float] = mapped_column(Double, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class Webhook(Base):
    """A webhook subscription: where to deliver which events, and how its deliveries have been going."""

    __tablename__ = "webhooks"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    url: Mapped[str] = mapped_column(Text, nullable=False)
    events: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False)
    #: The signing secret (``whsec_...``), sealed with the platform's secret box.
    secret_enc: Mapped[str] = mapped_column(Text, nullable=False)
    #: The secret the last rotation replaced (sealed), which still signs next to the new one until
    #: ``previous_secret_until``.
    previous_secret_enc: Mapped[str | None] = mapped_column(Text)
    previous_secret_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    consecutive_failures: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    last_success_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_failure_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    #: When the current run of failed attempts began (None: the last attempt succeeded, or none failed yet).
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Set when nothing is to be sent to the webhook (failing for WEBHOOK_DISABLE_AFTER_HOURS, or an admin's choice).
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    disabled_reason: Mapped[str | None] = mapped_column(Text)


class WebhookDelivery(Base):
    """One event for one subscription: pending (maybe leased by a dispatcher), delivered or failed."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (UniqueConstraint("webhook_id", "event_id", name="uq_webhook_deliveries_webhook_event"),)
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    webhook_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False
    )
    event_id: Mapped[str] = mapped_column(Text, ForeignKey("event_outbox.id", ondelete="CASCADE"), nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    retry_until: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ConsoleSession(Base):
    """A signed-in admin console session: the SHA-256 of its cookie's id, never the id or the admin token."""

    __tablename__ = "console_sessions"
    id_hash: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    actor: Mapped[str] = mapped_column(Text, nullable=False)
    csrf_secret: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    #: HMAC-SHA256 of the admin token, keyed by ``csrf_secret``: the session ends when its token is no longer
    #: configured.
    token_mac: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now(), index=True
    )
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
