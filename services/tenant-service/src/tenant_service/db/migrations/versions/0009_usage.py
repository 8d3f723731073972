"""Usage history and quota alerts (contract §13): hourly and daily usage, flushed batches, alerts sent, thresholds.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No foreign key to tenants: counts of a tenant purged meanwhile are ignored at ingest, and retention deletes
    # what is left of it.
    op.execute(
        """
        CREATE TABLE usage_hourly (
            tenant_id uuid NOT NULL,
            hour timestamptz NOT NULL,
            requests bigint NOT NULL DEFAULT 0,
            rejected bigint NOT NULL DEFAULT 0,
            CONSTRAINT pk_usage_hourly PRIMARY KEY (tenant_id, hour)
        )
        """
    )
    op.execute("CREATE INDEX ix_usage_hourly_hour ON usage_hourly (hour)")
    op.execute(
        """
        CREATE TABLE usage_daily (
            tenant_id uuid NOT NULL,
            day date NOT NULL,
            requests bigint NOT NULL DEFAULT 0,
            rejected bigint NOT NULL DEFAULT 0,
            database_bytes bigint,
            CONSTRAINT pk_usage_daily PRIMARY KEY (tenant_id, day)
        )
        """
    )
    op.execute("CREATE INDEX ix_usage_daily_day ON usage_daily (day)")
    # The ids of the batches counted: a batch sent again counts nothing.
    op.execute(
        """
        CREATE TABLE usage_batches (
            batch_id uuid CONSTRAINT pk_usage_batches PRIMARY KEY,
            received_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX ix_usage_batches_received ON usage_batches (received_at)")
    # One row per quota.threshold event emitted: at most one per tenant, day and threshold.
    op.execute(
        """
        CREATE TABLE quota_alerts (
            tenant_id uuid NOT NULL,
            day date NOT NULL,
            threshold double precision NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_quota_alerts PRIMARY KEY (tenant_id, day, threshold)
        )
        """
    )
    op.execute("ALTER TABLE plans ADD COLUMN alert_thresholds jsonb NOT NULL DEFAULT '[0.8, 1.0]'::jsonb")


def downgrade() -> None:
    op.execute("ALTER TABLE plans DROP COLUMN IF EXISTS alert_thresholds")
    op.execute("DROP TABLE IF EXISTS quota_alerts")
    op.execute("DROP TABLE IF EXISTS usage_batches")
    op.execute("DROP TABLE IF EXISTS usage_daily")
    op.execute("DROP TABLE IF EXISTS usage_hourly")
